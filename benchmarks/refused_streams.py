"""Refused streams do not slow the admitted ones.

K live streams at --fps run against a `polypstream serve --max-streams K` process three
times: alone, while another client keeps opening extra streams (--attempts-per-s, each
refused RESOURCE_EXHAUSTED), and alone again, so that the machine's own drift shows beside
any effect. The server runs in its own process: the refused client's CPU is not the server's.

    python -m benchmarks.refused_streams [--model fast] [--streams 2] [--seconds 20] [--attempts-per-s 50]

Writes JSON: per phase, the admitted streams' statuses, served frames/s and client latency;
for the middle phase, the attempts made and how each was answered (one message kept).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import grpc

from benchmarks.common import (
    command_line,
    device_name,
    endoscopy_frames,
    jpeg,
    scrape,
    start_server_process,
    write_result,
)
from benchmarks.service_latency import run_streams
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import SegmenterClient

REFUSED = 'polypstream_streams_refused_total{reason="limit"}'


class ExtraStreams:
    """A client that opens one more stream every 1/rate seconds for `seconds` (or until
    stopped), and tallies how the server answers each attempt."""

    def __init__(self, address: str, rate: float, frame: bytes, seconds: float) -> None:
        self.address = address
        self.interval = 1.0 / rate
        self.seconds = seconds
        self.frame = pb.Frame(stream_id="extra", index=0, encoded=frame)
        self.answers: dict[str, int] = {}
        self.message = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="extra-streams")

    def __enter__(self) -> ExtraStreams:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with SegmenterClient(self.address) as client:
            due = time.perf_counter()
            end = due + self.seconds
            while not self._stop.is_set() and time.perf_counter() < end:
                try:
                    list(client.stub.Segment(iter([self.frame])))
                    outcome = "ADMITTED"  # the limit did not hold: the benchmark reports it
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                    self.message = self.message or (exc.details() or "")
                self.answers[outcome] = self.answers.get(outcome, 0) + 1
                due += self.interval
                self._stop.wait(max(0.0, due - time.perf_counter()))


def wait_for_streams(metrics_url: str, count: int, timeout_s: float = 30.0) -> None:
    """Until the server reports `count` open Segment streams."""
    deadline = time.monotonic() + timeout_s
    while scrape(metrics_url).get("polypstream_active_streams", 0.0) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not report {count} open streams within {timeout_s:g} s")
        time.sleep(0.01)


def run_with_refusals(
    address: str, metrics_url: str, encoded: list[bytes], args: argparse.Namespace, frames: int
) -> dict[str, object]:
    """The admitted streams' run while another client keeps opening extra streams."""
    result: list[dict[str, object]] = []
    admitted = threading.Thread(
        target=lambda: result.append(run_streams(address, encoded, args.streams, args.fps, frames))
    )
    admitted.start()
    # Refuse only once the admitted streams hold every slot (else an extra stream could take
    # one first, and an admitted stream would be the one refused), and stop a second before
    # they end, so that every attempt meets a full server.
    wait_for_streams(metrics_url, args.streams)
    with ExtraStreams(address, args.attempts_per_s, encoded[0], args.seconds - 1) as extra:
        admitted.join()
    return {**result[0], "extra_streams": {"answers": extra.answers, "message": extra.message}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast", help="fast, accurate or a path")
    parser.add_argument("--streams", type=int, default=2, help="admitted streams (= the server's --max-streams)")
    parser.add_argument("--fps", type=float, default=25.0, help="frames/s per admitted stream")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--attempts-per-s", type=float, default=50.0, help="extra streams opened per second")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    encoded = [jpeg(f) for f in endoscopy_frames(48)]
    frames = int(args.seconds * args.fps)
    proc, address, metrics_url = start_server_process("--model", args.model, "--max-streams", str(args.streams))
    phases: list[dict[str, object]] = []
    try:
        with SegmenterClient(address) as ready:
            ready.wait_ready()
        for name in ("alone", "with_refusals", "alone_again"):
            refused_before = scrape(metrics_url).get(REFUSED, 0.0)
            if name == "with_refusals":
                row = run_with_refusals(address, metrics_url, encoded, args, frames)
            else:
                row = run_streams(address, encoded, args.streams, args.fps, frames)
            row["refused_by_server"] = scrape(metrics_url).get(REFUSED, 0.0) - refused_before
            phases.append({"phase": name, **row})
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    payload = {
        "benchmark": "refused_streams",
        "device": device_name(),
        "model": args.model,
        "frames": "720x576 JPEG q90; clients in this process, server in its own",
        "phases": phases,
        "command": command_line("benchmarks.refused_streams", args),
    }
    out = write_result("refused_streams", payload, args.out)
    for row in phases:
        lat = row["latency_ms"]
        assert isinstance(lat, dict)
        print(
            f"  {row['phase']:<14} {row['throughput_fps']:>6} served/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
            f"statuses {row['statuses']}  refused {row['refused_by_server']:.0f}  {row.get('extra_streams', '')}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
