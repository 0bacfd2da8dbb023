"""Live streams beside offline clients: K live streams at --fps and M offline (no-drop) clients
sending as fast as the server takes frames, together against one `polypstream serve` process.
Live frames have deadlines and come first; offline clients must still progress.

    python -m benchmarks.live_beside_offline --live 1 --offline 1 --seconds 20

Reports, per side: frames sent, answered by status, frames/s served, latency p50/p99; for
live streams the share of frames answered OK within the budget (the goal: >= 99 %).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import (
    StealMeter,
    command_line,
    device_name,
    endoscopy_frames,
    jpeg,
    start_server_process,
    write_result,
)
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import Answer, SegmenterClient
from polypstream.stats import percentiles


def stream(address: str, encoded: list[bytes], name: str, stop_at: float, fps: float | None) -> list[Answer]:
    """One stream until `stop_at`: paced at `fps` (live), or flat out with no_drop (offline)."""

    def requests() -> Iterator[pb.Frame]:
        start = time.perf_counter()
        i = 0
        while time.monotonic() < stop_at:
            if fps:
                delay = start + i / fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            options = pb.FrameOptions(no_drop=fps is None)
            yield pb.Frame(stream_id=name, index=i, encoded=encoded[i % len(encoded)], options=options)
            i += 1

    with SegmenterClient(address) as client:
        return list(client.segment(requests()))


def side(answers: list[list[Answer]], wall: float, budget_ms: float | None) -> dict[str, object]:
    flat = [a for per in answers for a in per]
    statuses: dict[str, int] = {}
    for a in flat:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    ok = [a for a in flat if a.status == "OK"]
    report: dict[str, object] = {
        "streams": len(answers),
        "answered": len(flat),
        "statuses": statuses,
        "served_fps": round(len(ok) / wall, 1),
        "latency_ms": percentiles([a.latency_s * 1e3 for a in ok]),
        "server_ms": percentiles([a.result.timing.server_ms for a in ok]),
        "server_stages_ms": {
            stage: percentiles([getattr(a.result.timing, f"{stage}_ms") for a in ok])
            for stage in ("decode", "queue", "inference", "postprocess")
        },
        "mean_batch": round(sum(a.result.timing.batch_size for a in ok) / len(ok), 2) if ok else None,
    }
    if budget_ms is not None and flat:
        within = sum(1 for a in ok if a.result.timing.server_ms <= budget_ms)
        report["ok_within_budget_share"] = round(within / len(flat), 4)
    return report


def run(address: str, *, live: int, offline: int, fps: float, seconds: float, budget_ms: float) -> dict[str, object]:
    encoded = [jpeg(f) for f in endoscopy_frames(24)]
    stop_at = time.monotonic() + seconds
    results: dict[str, list[Answer]] = {}

    def one(name: str, rate: float | None) -> None:
        results[name] = stream(address, encoded, name, stop_at, rate)

    threads = [threading.Thread(target=one, args=(f"live{k}", fps)) for k in range(live)]
    threads += [threading.Thread(target=one, args=(f"offline{k}", None)) for k in range(offline)]
    started, steal = time.perf_counter(), StealMeter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "seconds": round(wall, 1),
        "cpu_steal_share": steal.share(),
        "fps_per_live_stream": fps,
        "budget_ms": budget_ms,
        "live": side([v for k, v in results.items() if k.startswith("live")], wall, budget_ms),
        "offline": side([v for k, v in results.items() if k.startswith("offline")], wall, None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--live", type=int, default=1)
    parser.add_argument("--offline", type=int, default=1)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--budget-ms", type=float, default=40.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    proc, address, _ = start_server_process("--model", args.model, "--budget-ms", str(args.budget_ms))
    try:
        report = run(
            address, live=args.live, offline=args.offline, fps=args.fps, seconds=args.seconds, budget_ms=args.budget_ms
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    payload = {"benchmark": "live_beside_offline", "device": device_name(), **report}
    payload["command"] = command_line("benchmarks.live_beside_offline", args)
    out = write_result(f"live-{args.live}-beside-offline-{args.offline}", payload, args.out)
    print(payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
