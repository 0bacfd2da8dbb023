"""Soak: K client streams for M minutes against a running server, mixing valid frames,
bad frames and clients that hang up mid-stream; every frame must be accounted for and the
server's memory must stay flat.

    python -m benchmarks.soak --minutes 10 --streams 4 [--server ADDR --metrics URL] [--json OUT]

Without --server it starts `polypstream serve` itself (with --model). Each worker runs
streams of 20–120 frames at --fps (live: late frames may be dropped): 85 % valid JPEGs,
5 % random bytes, 5 % truncated JPEGs, 5 % raw pixels of the wrong length; one stream in
ten is abandoned halfway (the client closes its channel). Frames on abandoned streams that
get no answer are 'abandoned'; any other unanswered frame is 'lost' (must be 0).
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from service._proto.polypstream.v1 import segmenter_pb2 as pb
from service.client import SegmenterClient
from service.replay import percentiles

RSS = "process_resident_memory_bytes"


@dataclass
class Totals:
    sent: int = 0
    answered: dict[str, int] = field(default_factory=dict)
    abandoned: int = 0
    lost: int = 0
    streams: int = 0
    abandoned_streams: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, ms)


def make_frame(rng: random.Random, encoded: list[bytes], stream_id: str, index: int) -> pb.Frame:
    roll = rng.random()
    frame = pb.Frame(stream_id=stream_id, index=index, client_time_ns=time.time_ns())
    if roll < 0.85:
        frame.encoded = rng.choice(encoded)
    elif roll < 0.90:
        frame.encoded = rng.randbytes(rng.randint(1, 300))
    elif roll < 0.95:
        good = rng.choice(encoded)
        frame.encoded = good[: rng.randint(1, len(good) - 1)]
    else:
        frame.raw.CopyFrom(pb.RawImage(width=64, height=48, format=pb.PIXEL_FORMAT_BGR8, data=b"\0" * 1000))
    return frame


def one_stream(address: str, rng: random.Random, encoded: list[bytes], fps: float, name: str, totals: Totals,
               lock: threading.Lock, started: float) -> None:  # fmt: skip
    count = rng.randint(20, 120)
    abandon_at = count // 2 if rng.random() < 0.1 else None
    sent = 0

    def frames() -> Iterator[pb.Frame]:
        nonlocal sent
        t0 = time.perf_counter()
        for i in range(count):
            delay = t0 + i / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent += 1
            yield make_frame(rng, encoded, name, i)

    answered: dict[str, int] = {}
    latencies: list[tuple[float, float]] = []
    error = ""
    client = SegmenterClient(address)
    try:
        for n, answer in enumerate(client.segment(frames()), start=1):
            answered[answer.status] = answered.get(answer.status, 0) + 1
            if answer.status == "OK":
                latencies.append((time.perf_counter() - started, answer.latency_s * 1e3))
            if abandon_at is not None and n >= abandon_at:
                break  # hang up with frames in flight
    except grpc.RpcError as exc:
        error = f"{name}: {exc.code().name}: {exc.details()}"
    finally:
        client.close()
    unanswered = sent - sum(answered.values())
    with lock:
        totals.streams += 1
        totals.sent += sent
        for status, n in answered.items():
            totals.answered[status] = totals.answered.get(status, 0) + n
        totals.latencies.extend(latencies)
        if abandon_at is not None:
            totals.abandoned_streams += 1
            totals.abandoned += unanswered
        else:
            totals.lost += unanswered
            if error:
                totals.errors.append(error)


def soak(address: str, metrics_url: str, *, streams: int, seconds: float, fps: float, seed: int) -> dict[str, object]:
    encoded = [jpeg(f) for f in endoscopy_frames(24)]
    totals, lock = Totals(), threading.Lock()
    rss: list[tuple[float, float]] = []
    started = time.perf_counter()
    stop_at = started + seconds

    def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        n = 0
        while time.perf_counter() < stop_at:
            one_stream(address, rng, encoded, fps, f"soak{k}-{n}", totals, lock, started)
            n += 1

    threads = [threading.Thread(target=worker, args=(k,), name=f"soak-{k}") for k in range(streams)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss.append((time.perf_counter() - started, scrape(metrics_url).get(RSS, 0.0)))
        for t in threads:
            t.join(timeout=max(1.0, seconds / 30))
    rss.append((time.perf_counter() - started, scrape(metrics_url).get(RSS, 0.0)))
    wall = time.perf_counter() - started
    window = max(5.0, seconds / 20)
    over_time = []
    for i in range(int(wall // window) + 1):
        chunk = [ms for t, ms in totals.latencies if i * window <= t < (i + 1) * window]
        if chunk:
            over_time.append({"t_s": round(i * window, 1), "frames": len(chunk), **percentiles(chunk)})
    # Memory growth: median RSS of the last fifth against the first fifth (single samples are noisy).
    fifth = max(1, len(rss) // 5)
    first = sorted(v for _, v in rss[:fifth])[fifth // 2]
    last = sorted(v for _, v in rss[-fifth:])[fifth // 2]
    return {
        "seconds": round(wall, 1),
        "streams": streams,
        "fps_per_stream": fps,
        "stream_runs": totals.streams,
        "abandoned_streams": totals.abandoned_streams,
        "frames_sent": totals.sent,
        "answered": totals.answered,
        "abandoned": totals.abandoned,
        "lost": totals.lost,
        "errors": totals.errors[:20],
        "latency_ms": percentiles([ms for _, ms in totals.latencies]),
        "latency_over_time": over_time,
        "rss_mb": {
            "start": round(first / 2**20, 1),
            "end": round(last / 2**20, 1),
            "max": round(max(v for _, v in rss) / 2**20, 1),
        },
        "rss_growth_mb": round((last - first) / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="address of a running server (default: start one)")
    parser.add_argument("--metrics", help="its /metrics URL (needed with --server)")
    parser.add_argument("--model", default="fast", help="model for the server this starts")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, help="overrides --minutes (short runs)")
    parser.add_argument("--fps", type=float, default=25.0, help="frames/s per stream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<device>-soak.json)")
    args = parser.parse_args()
    seconds = args.seconds or args.minutes * 60
    proc = None
    if args.server:
        if not args.metrics:
            parser.error("--server needs --metrics (the server's /metrics URL, for its memory)")
        address, metrics_url = args.server, args.metrics
    else:
        proc, address, metrics_url = start_server_process("--model", args.model)
    try:
        report = soak(address, metrics_url, streams=args.streams, seconds=seconds, fps=args.fps, seed=args.seed)
    finally:
        if proc is not None:
            proc.terminate()
            proc.communicate(timeout=60)
    server = args.server or f"started here: polypstream serve --model {args.model}"
    payload = {"benchmark": "soak", "device": device_name(), "server": server, **report}
    payload["command"] = command_line("benchmarks.soak", args)
    out = write_result("soak", payload, args.out)
    lat = report["latency_ms"]
    assert isinstance(lat, dict)
    print(
        f"{report['seconds']} s, {report['stream_runs']} streams ({report['abandoned_streams']} abandoned): "
        f"sent {report['frames_sent']}, answered {report['answered']}, abandoned {report['abandoned']}, "
        f"lost {report['lost']}; p99 {lat['p99']} ms; RSS {report['rss_mb']} (growth {report['rss_growth_mb']} MB)"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
