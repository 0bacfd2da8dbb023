"""Ours: the service under K concurrent client streams, end to end over gRPC on loopback.

For each K: K streams send 720×576 JPEG frames at --fps each (a live feed: late frames
may be dropped) for --seconds; the client measures send → result latency. Then one
offline run (no-drop, unpaced) measures the most frames/s the service sustains.

    python -m benchmarks.service_latency [--model fast] [--streams 1,2,4] [--fps 25] [--out FILE]
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from benchmarks.common import command_line, device_name, endoscopy_frames, jpeg, write_result
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import Answer, SegmenterClient
from polypstream.config import EngineConfig, ServerConfig
from polypstream.metrics import Metrics
from polypstream.pipeline import Pipeline
from polypstream.replay import STAGES
from polypstream.runner import Runner, resolve_model
from polypstream.server import serve_in_thread
from polypstream.stats import percentiles

ESTIMATE = re.compile(r"a batch of one may take ([0-9.]+) ms")


def late_drops(answers: list[Answer]) -> dict[str, object]:
    """Why frames were answered DROPPED_LATE, from their error text: past their deadline before
    a batch could take them, or dropped before it because the estimate of a batch of one said
    they would miss it (with that estimate's percentiles: a stall inflates it)."""
    missed = 0
    estimates = []
    for answer in answers:
        if answer.status != "DROPPED_LATE":
            continue
        found = ESTIMATE.search(answer.result.error)
        if found is None:
            missed += 1
        else:
            estimates.append(float(found.group(1)))
    return {"missed_deadline": missed, "would_miss": len(estimates), "batch_of_one_estimate_ms": percentiles(estimates)}


def by_batch_size(ok: list[Answer]) -> dict[str, dict[str, object]]:
    """Per batch size: frames served in batches of that size and their inference time's percentiles."""
    sizes: dict[int, list[float]] = {}
    for answer in ok:
        sizes.setdefault(answer.result.timing.batch_size, []).append(answer.result.timing.inference_ms)
    return {str(n): {"frames": len(times), "inference_ms": percentiles(times)} for n, times in sorted(sizes.items())}


def one_stream(
    address: str, encoded: list[bytes], k: int, streams: int, fps: float | None, frames: int, send_s: float | None
) -> tuple[list[Answer], int, str]:
    """Stream k of K: its answers, the frames it sent, and its error ("" when none)."""
    sent = 0

    def requests() -> Iterator[pb.Frame]:
        nonlocal sent
        start = time.perf_counter() + 0.05 * k / max(1, streams)  # spread the streams' phases
        for i in range(frames):
            if send_s is not None and time.perf_counter() - start >= send_s:
                return
            if fps:
                delay = start + i / fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            sent += 1
            yield pb.Frame(
                stream_id=f"s{k}", index=i, encoded=encoded[(i + k) % len(encoded)],
                options=pb.FrameOptions(no_drop=fps is None),
            )  # fmt: skip

    try:
        with SegmenterClient(address) as client:
            return list(client.segment(requests())), sent, ""
    except Exception as exc:  # recorded in the JSON, not hidden
        return [], sent, f"stream {k}: {exc}"


@dataclass
class Group:
    """What the streams of one client process brought back: each stream's (answers, frames sent,
    error), when they began and ended (time.monotonic, the same clock in every process on
    Linux), and the CPU seconds the process spent meanwhile."""

    outcomes: list[tuple[list[Answer], int, str]]
    began: float
    ended: float
    cpu_s: float


def stream_group(
    address: str, encoded: list[bytes], ks: list[int], streams: int, fps: float | None, frames: int,
    send_s: float | None,
) -> Group:  # fmt: skip
    """Streams `ks` of K, each on a thread of this process."""
    outcomes: dict[int, tuple[list[Answer], int, str]] = {}

    def one(k: int) -> None:
        outcomes[k] = one_stream(address, encoded, k, streams, fps, frames, send_s)

    threads = [threading.Thread(target=one, args=(k,)) for k in ks]
    began, cpu = time.monotonic(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Group([outcomes[k] for k in ks], began, time.monotonic(), time.process_time() - cpu)


def portable_group(*args: object) -> tuple[list[tuple[list[tuple[bytes, float]], int, str]], float, float, float]:
    """stream_group in a client process, its answers as bytes: the generated message classes
    do not pickle (their module's name is not the one they are imported by)."""
    group = stream_group(*args)  # type: ignore[arg-type]
    outcomes = [([(a.result.SerializeToString(), a.latency_s) for a in answers], sent, error)
                for answers, sent, error in group.outcomes]  # fmt: skip
    return outcomes, group.began, group.ended, group.cpu_s


def from_portable(portable: tuple[list[tuple[list[tuple[bytes, float]], int, str]], float, float, float]) -> Group:
    outcomes, began, ended, cpu_s = portable
    answers = [([Answer(pb.FrameResult.FromString(b), latency) for b, latency in raw], sent, error)
               for raw, sent, error in outcomes]  # fmt: skip
    return Group(answers, began, ended, cpu_s)


def run_streams(
    address: str, encoded: list[bytes], streams: int, fps: float | None, frames: int, *,
    send_s: float | None = None, processes: int = 1,
) -> dict[str, object]:  # fmt: skip
    """K concurrent streams of `frames` frames each; paced at `fps` (live) or flat out (no-drop).
    `send_s`: each stream stops sending after this long (flat out, the server sets the count).
    `processes`: the streams spread over this many client processes (flat-out clients in one
    Python process can be what limits a saturation run)."""
    if processes <= 1:
        groups = [stream_group(address, encoded, list(range(streams)), streams, fps, frames, send_s)]
    else:
        parts = [list(range(streams))[p::processes] for p in range(min(processes, streams))]
        spawn = multiprocessing.get_context("spawn")  # no fork: gRPC's threads do not survive one
        with ProcessPoolExecutor(max_workers=len(parts), mp_context=spawn) as pool:
            futures = [pool.submit(portable_group, address, encoded, p, streams, fps, frames, send_s) for p in parts]
            groups = [from_portable(f.result()) for f in futures]  # each timed from its own start, not the spawn
    outcomes = [outcome for group in groups for outcome in group.outcomes]
    answers = [outcome[0] for outcome in outcomes]
    sent = [outcome[1] for outcome in outcomes]
    errors = [outcome[2] for outcome in outcomes if outcome[2]]
    wall = max(g.ended for g in groups) - min(g.began for g in groups)
    flat = [a for per_stream in answers for a in per_stream]
    ok = [a for a in flat if a.status == "OK"]
    statuses: dict[str, int] = {}
    for a in flat:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    batch_sizes = [a.result.timing.batch_size for a in ok]
    return {
        "streams": streams,
        "fps_per_stream": fps,
        "frames_sent": sum(sent),
        "answered": len(flat),
        "statuses": statuses,
        "lost": sum(sent) - len(flat),
        "throughput_fps": round(len(ok) / wall, 1),
        "latency_ms": percentiles([a.latency_s * 1e3 for a in ok]),
        "server_stages_ms": {s: percentiles([getattr(a.result.timing, s) for a in ok]) for s in STAGES},
        "mean_batch": round(sum(batch_sizes) / len(batch_sizes), 2) if batch_sizes else None,
        "by_batch_size": by_batch_size(ok),
        "late_drops": late_drops(flat),
        "errors": errors,
        "client_processes": len(groups),
        # the clients' own CPU: near a core a process, they may be what limits a flat-out run
        "client_cpu_cores": round(sum(g.cpu_s for g in groups) / wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="fast, accurate or a path (default as serve)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--streams", default="1,2,4", help="stream counts to sweep")
    parser.add_argument("--fps", type=float, default=25.0, help="frames/s per live stream")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each live run")
    parser.add_argument("--offline-frames", type=int, default=400, help="frames per stream in the no-drop run")
    parser.add_argument("--offline-streams", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--budget-ms", type=float, default=40.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    engine = EngineConfig(model=args.model, device=args.device, max_batch=args.max_batch, budget_ms=args.budget_ms)
    runner = Runner(resolve_model(args.model), device=args.device, max_batch=args.max_batch)
    pipeline = Pipeline(runner, engine, Metrics(CollectorRegistry()))
    pipeline.start()
    encoded = [jpeg(f) for f in endoscopy_frames(48)]
    frames = int(args.seconds * args.fps)
    try:
        with serve_in_thread(pipeline, ServerConfig(address="127.0.0.1:0", metrics_address="")) as server:
            live = [
                run_streams(server.address, encoded, k, args.fps, frames) for k in map(int, args.streams.split(","))
            ]
            offline = run_streams(server.address, encoded, args.offline_streams, None, args.offline_frames)
    finally:
        pipeline.stop()
    c = runner.contract
    payload = {
        "benchmark": "service_latency",
        "device": device_name(),
        "provider": runner.provider,
        "model": {"name": c.name, "version": c.version, "input": f"{c.input_width}x{c.input_height}"},
        "engine": {"max_batch": args.max_batch, "budget_ms": args.budget_ms, "max_wait_ms": engine.max_wait_ms},
        "frames": "720x576 JPEG q90, client and server in one process over loopback TCP",
        "live": live,
        "offline": offline,
        "command": command_line("benchmarks.service_latency", args),
    }
    out = write_result("service_latency", payload, args.out)
    print(f"{payload['device']} · {runner.provider} · {c.name} {c.input_width}x{c.input_height}")
    for row in [*live, offline]:
        lat = row["latency_ms"]
        assert isinstance(lat, dict)
        mode = f"{row['fps_per_stream']:.0f} fps" if row["fps_per_stream"] else "no-drop"
        print(
            f"  {row['streams']} streams @ {mode:>7}: {row['throughput_fps']:>7} frames/s  p50 {lat['p50']} ms  "
            f"p99 {lat['p99']} ms  statuses {row['statuses']}  lost {row['lost']}  mean batch {row['mean_batch']}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
