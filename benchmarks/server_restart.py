"""A server restarted under two client streams: what each stream loses and how long it goes
without answers. One `polypstream serve` (its own process) is stopped with SIGTERM and started
again at the same address `--restarts` times, `--every` seconds apart, while two clients stream
720×576 frames at 25 fps through `client.Stream` (as `polypstream stream` does, --reconnect 30):
a live one (late frames may drop; frames of the gap are not sent) and a file one (no_drop: the
unanswered frames are sent again).

    python -m benchmarks.server_restart --restarts 3 --every 5

`--down S` keeps the server down S seconds each time (a slow restart: a GPU model's load).
Reports, per restart, how long the server took to stop (drain) and to serve again; per stream,
the frames answered, lost and not sent, resent, the reconnects, the longest time between two
answers, and whether every frame of the file stream was answered once, in order.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.common import command_line, device_name, endoscopy_frames, start_serve, write_result
from polypstream.capture import CapturedFrame, paced
from polypstream.client import SegmenterClient, Stream
from polypstream.frames import FrameOptions

FPS = 25.0


def run_stream(address: str, frames: list[np.ndarray], count: int, no_drop: bool, out: dict[str, object]) -> None:
    """Stream `count` frames at 25 fps (cycling through `frames`) and record what came back."""

    def video() -> Iterator[np.ndarray]:
        for i in range(count):
            yield frames[i % len(frames)]

    source: Iterator[CapturedFrame] = paced(video(), FPS, realtime=True)
    answered: list[int] = []
    times: list[float] = []
    options = FrameOptions(no_drop=no_drop, frame_rate=FPS)
    with SegmenterClient(address) as client:
        client.wait_ready(30)
        name = "live" if not no_drop else "file"
        stream = Stream(client, source, name, options, reconnect_s=30, keep_up=not no_drop)  # as `stream` does
        error = ""
        try:
            for _, answer in stream:
                answered.append(answer.result.index)
                times.append(time.perf_counter())
        except Exception as exc:  # recorded: the run says how a stream ended
            error = repr(exc)
    gaps = np.diff(times) if len(times) > 1 else np.zeros(1)
    out.update(
        {
            "frames": count,
            "answered": len(answered),
            "answered_once_in_order": answered == list(range(count)),
            "lost": stream.lost,
            "unsent": stream.unsent,
            "skipped": stream.skipped,
            "resent": stream.resent,
            "reconnects": stream.reconnects,
            "longest_without_answer_ms": round(float(gaps.max()) * 1e3, 1),
            "error": error,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between restarts")
    parser.add_argument("--down", type=float, default=0.0, help="seconds the server stays down each time")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    frames = endoscopy_frames(24)
    count = int(((args.restarts + 1) * args.every + args.restarts * args.down) * FPS)
    proc, at = start_serve("--model", args.model)
    address = at["grpc"]
    reports: dict[str, dict[str, object]] = {"live": {}, "file": {}}
    threads = [
        threading.Thread(target=run_stream, args=(address, frames, count, name == "file", reports[name]))
        for name in reports
    ]
    restarts = []
    try:
        for t in threads:
            t.start()
        for _ in range(args.restarts):
            time.sleep(args.every)
            stopping = time.perf_counter()
            proc.terminate()
            proc.communicate(timeout=60)
            stopped = time.perf_counter()
            time.sleep(args.down)
            proc, _ = start_serve("--model", args.model, "--address", address)
            serving = time.perf_counter()
            restarts.append({"stop_s": round(stopped - stopping, 2), "down_s": round(serving - stopped, 2)})
            print(restarts[-1], flush=True)
        for t in threads:
            t.join(timeout=args.every * 4 + 120)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    payload: dict[str, object] = {
        "benchmark": "server_restart",
        "device": device_name(),
        "model": args.model,
        "fps": FPS,
        "frame_size": [720, 576],
        "restarts": restarts,
        "streams": reports,
        "command": command_line("benchmarks.server_restart", args),
    }
    print(reports, flush=True)
    down = f"-down-{args.down:g}s" if args.down else ""
    out = write_result(f"server-restart-{args.model}{down}", payload, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
