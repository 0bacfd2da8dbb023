"""What a saturated GIL does to the server, and what its switch interval (`--gil-switch-ms`) changes.

    python -m benchmarks.gil_convoy [--model fast] [--size 1920x1080] [--streams 2] [--seconds 15]
        [--switch-ms 5,1,0.5] [--out FILE]

K live streams against a `serve` process, first as it is (at Python's 5 ms and at 0.5 ms), then with one more
Python thread in the server's process that never stops computing (started by a sitecustomize
module this benchmark puts on the server's PYTHONPATH): a stand-in for an event loop at its
limit, which keeps the GIL busy. Every other thread gets the GIL back only when the busy one is
made to let go, after the switch interval, at each of its returns from native code (decoding,
onnxruntime, OpenCV). Per run: served frames/s, statuses, client p50/p99, the server's stages
(p50/p99) and its GIL wait.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    command_line,
    device_name,
    endoscopy_frames,
    gil_wait,
    jpeg,
    parse_size,
    scrape,
    start_server_process,
    write_result,
)
from benchmarks.service_latency import run_streams
from polypstream.client import SegmenterClient

BUSY = "POLYPSTREAM_BENCH_BUSY_THREAD"
SITECUSTOMIZE = f'''import os, sys, threading
if os.environ.get("{BUSY}") and "serve" in sys.argv:
    def busy():
        n = 0
        while True:
            n += 1
    threading.Thread(target=busy, name="busy", daemon=True).start()
'''


def one_run(
    args: argparse.Namespace, encoded: list[bytes], site: Path, busy: bool, switch_ms: float
) -> dict[str, object]:
    """K streams against a server at this switch interval, with or without the busy thread."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    env[BUSY] = "1" if busy else ""
    proc, address, metrics_url = start_server_process(
        "--model", args.model, "--device", "cpu", "--gil-switch-ms", str(switch_ms), env=env
    )
    try:
        with SegmenterClient(address) as ready:
            ready.wait_ready()
        run_streams(address, encoded, args.streams, args.fps, int(args.fps))  # a second to warm up
        before = scrape(metrics_url)
        row = run_streams(address, encoded, args.streams, args.fps, int(args.seconds * args.fps))
        waited = gil_wait(before, scrape(metrics_url))
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    stages = row["server_stages_ms"]
    assert isinstance(stages, dict)
    return {
        "busy_thread": busy,
        "gil_switch_ms": switch_ms,
        "served_fps": row["throughput_fps"],
        "statuses": row["statuses"],
        "client_ms": row["latency_ms"],
        "stages_p50_p99_ms": {k.removesuffix("_ms"): [v["p50"], v["p99"]] for k, v in stages.items()},
        "gil_wait": waited,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--size", default="1920x1080", help="frame size, WIDTHxHEIGHT")
    parser.add_argument("--fps", type=float, default=25.0, help="frames/s per stream")
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each run")
    parser.add_argument("--switch-ms", default="5,1,0.5", help="switch intervals to run with the busy thread")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    width, height = parse_size(args.size)
    encoded = [jpeg(frame) for frame in endoscopy_frames(48, (width, height))]
    site = Path(tempfile.mkdtemp())
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    plan = [(False, 5.0), (False, 0.5)] + [(True, float(ms)) for ms in args.switch_ms.split(",")]
    runs = []
    for busy, switch_ms in plan:
        started = time.monotonic()
        run = one_run(args, encoded, site, busy, switch_ms)
        runs.append(run)
        stages, client, waited = run["stages_p50_p99_ms"], run["client_ms"], run["gil_wait"]
        assert isinstance(stages, dict) and isinstance(client, dict) and isinstance(waited, dict)
        print(
            f"{'busy thread' if busy else 'as it is  '}, switch {switch_ms:g} ms: {run['served_fps']} served/s "
            f"{run['statuses']}, client p50/p99 {client['p50']}/{client['p99']} ms, "
            f"decode p50 {stages['decode'][0]} ms, postprocess p50 {stages['postprocess'][0]} ms, "
            f"GIL wait {waited['mean_ms']} ms ({time.monotonic() - started:.0f} s)",
            flush=True,
        )
    payload = {"benchmark": "gil_convoy", "device": device_name(), "model": args.model,
               "frames": f"{args.size} JPEG q90, {args.streams} streams at {args.fps:g} frames/s", "runs": runs,
               "command": command_line("benchmarks.gil_convoy", args)}  # fmt: skip
    print(f"wrote {write_result('gil-convoy', payload, args.out)}")


if __name__ == "__main__":
    main()
