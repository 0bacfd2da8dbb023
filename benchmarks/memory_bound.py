"""Memory under big frames: K clients send 4096x4096 JPEGs asking for the overlay and the
full-resolution mask, and read one result every --read-every seconds (inside the send
timeout); then they leave. Reports the server's RSS before, at its peak and after, and the
frame memory it reserved (polypstream_frame_memory_bytes) against its limit.

    python -m benchmarks.memory_bound --clients 4 --seconds 60 [--serve-arg=--memory-limit-mb=512]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc

from benchmarks.common import command_line, device_name, endoscopy_frames, jpeg, scrape, start_server_process
from benchmarks.common import write_result as write_json
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import SegmenterClient

RSS = "process_resident_memory_bytes"
HELD = "polypstream_frame_memory_bytes"
LIMIT = "polypstream_frame_memory_limit_bytes"


def big_client(address: str, data: bytes, name: str, stop_at: float, read_every: float, counts: dict[str, int]) -> None:
    options = pb.FrameOptions(return_overlay=True, return_mask=True, no_drop=True)

    def frames() -> Iterator[pb.Frame]:
        i = 0
        while time.monotonic() < stop_at:
            yield pb.Frame(stream_id=name, index=i, encoded=data, options=options)
            i += 1

    with SegmenterClient(address) as client:
        try:
            for answer in client.segment(frames()):
                counts[answer.status] = counts.get(answer.status, 0) + 1
                if time.monotonic() >= stop_at:
                    break
                time.sleep(read_every)
        except Exception as exc:
            key = f"error: {exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__}"
            counts[key] = counts.get(key, 0) + 1


def one_round(address: str, metrics_url: str, data: bytes, *, clients: int, seconds: float, read_every: float
              ) -> dict[str, object]:  # fmt: skip
    before = scrape(metrics_url)
    counts: dict[str, int] = {}
    stop_at = time.monotonic() + seconds
    threads = [
        threading.Thread(target=big_client, args=(address, data, f"big{k}", stop_at, read_every, counts))
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    peak_rss, peak_held = 0.0, 0.0
    while any(t.is_alive() for t in threads):
        sample = scrape(metrics_url)
        peak_rss, peak_held = max(peak_rss, sample[RSS]), max(peak_held, sample.get(HELD, 0.0))
        time.sleep(0.5)
    time.sleep(10.0)  # streams closed: what the server gives back
    after = scrape(metrics_url)
    mib = 2**20
    return {
        "answers": counts,
        "rss_mb": {
            "before": round(before[RSS] / mib, 1),
            "peak": round(peak_rss / mib, 1),
            "after": round(after[RSS] / mib, 1),
        },
        "frame_memory_mb": {"peak": round(peak_held / mib, 1), "after": round(after.get(HELD, 0.0) / mib, 1)},
        "frame_memory_limit_mb": round(after.get(LIMIT, 0.0) / mib, 1),
        "active_streams_after": after["polypstream_active_streams"],
    }


def run(address: str, metrics_url: str, *, clients: int, seconds: float, read_every: float, rounds: int
        ) -> dict[str, object]:  # fmt: skip
    frame = cv2.resize(endoscopy_frames(1)[0], (4096, 4096), interpolation=cv2.INTER_CUBIC)
    data = jpeg(frame, 90)
    return {
        "clients": clients,
        "seconds": seconds,
        "read_every_s": read_every,
        "jpeg_bytes": len(data),
        "rounds": [
            one_round(address, metrics_url, data, clients=clients, seconds=seconds, read_every=read_every)
            for _ in range(rounds)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--read-every", type=float, default=4.0, help="seconds between reads (under --send-timeout)")
    parser.add_argument("--rounds", type=int, default=2, help="the clients come and go this many times")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `serve` flag, e.g. --serve-arg=...")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    proc, address, metrics_url = start_server_process("--model", args.model, *args.serve_arg)
    try:
        report = run(
            address,
            metrics_url,
            clients=args.clients,
            seconds=args.seconds,
            read_every=args.read_every,
            rounds=args.rounds,
        )
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    payload = {"benchmark": "memory_bound", "device": device_name(), **report}
    payload["command"] = command_line("benchmarks.memory_bound", args)
    out = write_json("memory-bound", payload, args.out)
    print(payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
