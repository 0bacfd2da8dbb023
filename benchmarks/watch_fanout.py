"""Watchers of a server-side source beside a live client stream: one `polypstream serve` reads a
1080p25 file source (`--source`) for K `Watch` callers (each its own process and channel, asking
for overlays unless --no-overlay) while one live client streams 720×576 frames at 25 fps.
Watchers must not take the CPU the live stream needs, nor each other's results.

    python -m benchmarks.watch_fanout --watchers 0,1,4,8 --seconds 8

Reports, per K: the live stream's latency p50/p99 and statuses, what each watcher received and
missed (frames of the source between its first and last result without one), the server's CPU
seconds per second of the run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import threading
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import TypedDict

import cv2
import grpc

from benchmarks.common import (
    StealMeter,
    command_line,
    device_name,
    endoscopy_frames,
    jpeg,
    scrape,
    start_serve,
    write_result,
)
from benchmarks.live_beside_offline import side, stream
from polypstream.client import SegmenterClient
from polypstream.frames import FrameOptions

FPS = 25.0


def write_source_clip(path: Path, seconds: float, size: tuple[int, int] = (1920, 1080)) -> Path:
    """A `seconds`-long clip at 25 fps cycling through 25 synthetic endoscopy frames."""
    frames = endoscopy_frames(25, size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), FPS, size)
    for i in range(int(seconds * FPS)):
        writer.write(frames[i % len(frames)])
    writer.release()
    return path


class WatcherReport(TypedDict):
    received: int
    missed: int
    overlay_bytes: int
    ended: str  # how the call ended: CANCELLED at the end of its time, as asked


def watcher(address: str, overlay: bool, seconds: float, results: Queue[WatcherReport]) -> None:
    """One Watch call of source "hd" for `seconds`: how many results, how many frames missed,
    bytes, and how the call ended (CANCELLED: at the end of its time, as asked)."""
    received, missed, payload, last, ended = 0, 0, 0, None, "source ended"
    with SegmenterClient(address) as client:
        call = client.watch("hd", FrameOptions(return_overlay=overlay))
        threading.Timer(seconds, call.cancel).start()
        try:
            for watched in call:
                index = watched.result.index
                received += 1
                missed += 0 if last is None else index - last - 1
                payload += len(watched.result.overlay_jpeg)
                last = index
        except grpc.RpcError as exc:
            ended = exc.code().name if hasattr(exc, "code") else str(exc)
    results.put(WatcherReport(received=received, missed=missed, overlay_bytes=payload, ended=ended))


def run_once(clip: Path, model: str, watchers: int, overlay: bool, seconds: float) -> dict[str, object]:
    proc, at = start_serve("--model", model, "--source", f"hd={clip}")
    context = multiprocessing.get_context("spawn")
    results: Queue[WatcherReport] = context.Queue()
    try:
        before, steal, scraped = scrape(at["metrics"]), StealMeter(), time.perf_counter()
        workers = [
            context.Process(target=watcher, args=(at["grpc"], overlay, seconds + 2.0, results)) for _ in range(watchers)
        ]
        for w in workers:
            w.start()
        time.sleep(1.0)  # the watchers are subscribed: the source plays
        encoded = [jpeg(f) for f in endoscopy_frames(24)]
        started = time.perf_counter()
        live = stream(at["grpc"], encoded, "live", time.monotonic() + seconds, FPS)
        wall = time.perf_counter() - started
        watched = [results.get(timeout=120) for _ in workers]
        for w in workers:
            w.join(30)
        after, scraped = scrape(at["metrics"]), time.perf_counter() - scraped
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    cpu = after["process_cpu_seconds_total"] - before["process_cpu_seconds_total"]
    return {
        "watchers": watchers,
        "live": side([live], wall, 40.0),
        "watched": {
            "ended": sorted({w["ended"] for w in watched}),
            "received": sorted(w["received"] for w in watched),
            "missed": sorted(w["missed"] for w in watched),
            "overlay_mb_each": [round(w["overlay_bytes"] / 2**20, 1) for w in watched],
        },
        "slow_subscriber_drops": after.get('polypstream_dropped_frames_total{reason="slow_subscriber",source="hd"}', 0),
        "server_cpu_cores": round(cpu / scraped, 2),
        "cpu_steal_share": steal.share(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--watchers", default="0,1,4,8", help="comma-separated K")
    parser.add_argument("--no-overlay", action="store_true", help="watchers ask for boxes only")
    parser.add_argument("--seconds", type=float, default=8.0, help="the live stream's length per K")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="polypstream-fanout-") as tmp:
        clip = write_source_clip(Path(tmp) / "hd.mp4", args.seconds + 6.0)  # each K: a new server, played afresh
        for k in (int(x) for x in args.watchers.split(",")):
            runs.append(run_once(clip, args.model, k, not args.no_overlay, args.seconds))
            print(runs[-1], flush=True)
    payload = {"benchmark": "watch_fanout", "device": device_name(), "overlay": not args.no_overlay, "runs": runs}
    payload["command"] = command_line("benchmarks.watch_fanout", args)
    out = write_result(f"watch-fanout-{args.model}", payload, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
