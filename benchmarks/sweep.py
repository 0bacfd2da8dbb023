"""The limit, the naive loop and the service under a sweep of K live streams, in one run.

The model alone (batched, in this process), a naive per-frame loop, then K client streams of
--size JPEG frames at --fps each against a `polypstream serve` process (its own process, so
the clients' CPU and GIL are not the server's), for each K in --streams. A K "holds" when no
frame is dropped or lost and the client-side p99 stays within the budget. Issue 7's target
on the H100: 48 streams of 1920x1080 at 25 fps holding a 40 ms budget.

    python -m benchmarks.sweep [--model M] [--device auto] [--size 1920x1080] [--fps 25]
        [--streams 1,2,4,8,16,32,48,64] [--seconds 10] [--budget-ms 40] [--max-batch 32] [--plot OUT.png]

Writes JSON (benchmarks/results/<device>-sweep.json unless --out) with every K's statuses,
served frames/s, client latency and server stages, the server's CPU cores by thread group
(`server_cpu_cores`: decode pool, event loop in main, batcher, onnxruntime), how long its
threads waited to run Python again (`gil_wait`: mean, share over 1 and 5 ms), on a GPU the
share of the time a kernel ran and the memory in use (`gpu`, from the server's NVML metrics;
null on a CPU), frames and
inference time by batch size (`by_batch_size`), why frames were dropped late (`late_drops`:
past their deadline, or on the estimate of a batch of one, with that estimate), the largest K
that holds, and the ratios of the best served frames/s to the limit and to the naive loop;
--plot draws throughput and p99 against K and the server's stages per K.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    command_line,
    cores_by_thread,
    cpu_ms_per_frame,
    device_name,
    endoscopy_frames,
    gil_wait,
    gpu_use,
    jpeg,
    parse_size,
    scrape,
    start_server_process,
    thread_cpu_seconds,
    write_result,
)
from benchmarks.model_throughput import naive_loop, time_batches
from benchmarks.service_latency import STAGES, run_streams
from polypstream.client import SegmenterClient
from polypstream.plots import pyplot
from polypstream.runner import Runner, resolve_model


def holds(row: dict[str, object], budget_ms: float) -> bool:
    """No frame dropped, lost or failed, and the client-side p99 within the budget."""
    statuses = row["statuses"]
    latency = row["latency_ms"]
    assert isinstance(statuses, dict) and isinstance(latency, dict)
    clean = set(statuses) <= {"OK"} and row["lost"] == 0 and not row["errors"]
    return clean and latency["p99"] is not None and float(latency["p99"]) <= budget_ms


@dataclass(frozen=True)
class Server:
    """The `serve` process a sweep measures: its pid (for its threads' CPU), address and metrics."""

    pid: int
    address: str
    metrics_url: str


def measured(
    server: Server, encoded: list[bytes], k: int, fps: float | None, frames: int, send_s: float | None = None,
    processes: int = 1,
) -> dict[str, object]:  # fmt: skip
    """run_streams' row for K streams, with what the server's side of it cost: its threads'
    CPU (`server_cpu_cores`: "main" is `serve`'s event loop, under the GIL; "decode" the
    decoding pool; "batcher" the model's thread; "event_engine" gRPC's own), CPU ms per frame
    answered, the GIL wait, on a GPU how busy it was, and the clients' own CPU."""
    cpu_before, started, scraped = thread_cpu_seconds(server.pid), time.monotonic(), scrape(server.metrics_url)
    row = run_streams(server.address, encoded, k, fps, frames, send_s=send_s, processes=processes)
    after, cpu_after = scrape(server.metrics_url), thread_cpu_seconds(server.pid)
    elapsed = time.monotonic() - started
    row["gil_wait"] = gil_wait(scraped, after)
    row["gpu"] = gpu_use(scraped, after, elapsed)  # None on a CPU
    row["server_cpu_cores"] = cores_by_thread(cpu_before, cpu_after, elapsed)
    row["server_cpu_ms_per_frame"] = cpu_ms_per_frame(cpu_before, cpu_after, int(str(row["answered"])))
    return row


def row_line(row: dict[str, Any]) -> str:
    """A measured row in one line: served, p99, statuses, whether it holds, the server's CPU by
    its four busiest thread groups, GIL wait, GPU busy, and why frames were dropped late."""
    cpu, drops, used = row["server_cpu_cores"], row["late_drops"], row["gpu"]
    top = ", ".join(f"{name} {cores}" for name, cores in list(cpu["threads"].items())[:4])
    why = ""
    if drops["missed_deadline"] or drops["would_miss"]:
        why = f"  late: {drops['missed_deadline']} past their deadline, {drops['would_miss']} on the estimate"
    if drops["would_miss"]:
        why += f" (a batch of one up to {drops['batch_of_one_estimate_ms']['max']} ms)"
    gpu = f", GPU busy {used['busy']:.0%}" if used else ""
    held = "" if "holds" not in row else "  holds" if row["holds"] else "  does not hold"
    return (
        f"{row['throughput_fps']:>8} served/s  p99 {row['latency_ms']['p99']} ms  {row['statuses']}{held}  "
        f"server {cpu['total']} cores ({top}; {row['server_cpu_ms_per_frame']['total']} ms a frame), "
        f"GIL wait {row['gil_wait']['mean_ms']} ms{gpu}{why}"
    )


def measure_model(
    args: argparse.Namespace, encoded: list[bytes]
) -> tuple[list[dict[str, object]], dict[str, float], dict[str, str]]:
    """The limit (batched model runs), the naive loop, and which model on which provider,
    with the model loaded in this process."""
    batches = [int(b) for b in args.batches.split(",")]
    runner = Runner(resolve_model(args.model), device=args.device, max_batch=max(batches), spin=True)
    limit = [time_batches(runner, b, args.limit_seconds) for b in batches]
    naive = naive_loop(runner, encoded, args.limit_seconds * 2)
    return limit, naive, {"provider": runner.provider, "model": f"{runner.contract.name} {runner.contract.version}"}


def plot_sweep(payload: dict[str, object], out: Path) -> None:
    """Left: served frames/s and client p99 against K; right: the server's stage p50s per K."""
    plt = pyplot()
    rows = payload["service"]
    assert isinstance(rows, list)
    ks = [r["streams"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    left.plot(ks, [r["throughput_fps"] for r in rows], "o-", label="served frames/s")
    left.plot(ks, [r["offered_fps"] for r in rows], "--", color="grey", label="offered frames/s")
    left.axhline(float(str(payload["limit_fps"])), color="tab:green", linestyle=":", label="model limit")
    left.set_xlabel("concurrent streams")
    left.set_ylabel("frames/s")
    latency = left.twinx()
    latency.plot(ks, [r["latency_ms"]["p99"] for r in rows], "s-", color="tab:red", label="client p99 (ms)")
    latency.axhline(float(str(payload["budget_ms"])), color="tab:red", linestyle=":", linewidth=0.8)
    latency.set_ylabel("client p99 latency (ms)")
    latency.set_ylim(bottom=0)
    left.set_xticks(ks)
    left.legend(loc="upper left", fontsize=8)
    latency.legend(loc="lower right", fontsize=8)
    left.set_title(f"{payload['device']}: {payload['frames']}")
    bottom = [0.0] * len(rows)
    for stage in STAGES[:-1]:  # server_ms is their sum (and the waits between them)
        values = [float(r["server_stages_ms"][stage]["p50"] or 0) for r in rows]
        right.bar([str(k) for k in ks], values, bottom=bottom, label=stage.removesuffix("_ms"))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set_xlabel("concurrent streams")
    right.set_ylabel("ms (p50 per stage)")
    right.set_title("server time per stage")
    right.legend(fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast", help="fast, accurate or a path")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--size", default="1920x1080", help="frame size, WIDTHxHEIGHT")
    parser.add_argument("--fps", type=float, default=25.0, help="frames/s per stream")
    parser.add_argument("--streams", default="1,2,4,8,16,32,48,64", help="stream counts to sweep")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each K's run")
    parser.add_argument("--budget-ms", type=float, default=40.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batches", default="1,2,4,8,16,32,64", help="batch sizes for the limit")
    parser.add_argument("--limit-seconds", type=float, default=3.0, help="measuring time per batch size")
    parser.add_argument("--gil-switch-ms", type=float, help="serve's --gil-switch-ms (default: serve's own)")
    parser.add_argument("--workers", type=int, default=1, help="serve's --workers: server processes on the port")
    parser.add_argument(
        "--saturate", type=int, default=0, help="then K no-drop streams flat out for --seconds (0: none)"
    )
    parser.add_argument(
        "--offline-decode-workers", type=int, default=0, help="serve's: threads decoding no-drop frames (0: its own)"
    )
    parser.add_argument(
        "--client-processes", type=int, default=1, help="the saturation run's streams spread over this many processes"
    )
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    width, height = parse_size(args.size)
    encoded = [jpeg(f) for f in endoscopy_frames(48, (width, height))]
    limit, naive, served_model = measure_model(args, encoded)
    serve_flags = ["--model", args.model, "--device", args.device, "--max-batch", str(args.max_batch)]
    if args.gil_switch_ms is not None:
        serve_flags += ["--gil-switch-ms", str(args.gil_switch_ms)]
    if args.workers != 1:
        serve_flags += ["--workers", str(args.workers)]
    if args.offline_decode_workers:
        serve_flags += ["--offline-decode-workers", str(args.offline_decode_workers)]
    proc, address, metrics_url = start_server_process(*serve_flags, "--budget-ms", str(args.budget_ms))
    service: list[dict[str, object]] = []
    saturated: dict[str, object] | None = None
    try:
        with SegmenterClient(address) as ready:
            ready.wait_ready()
        for k in (int(s) for s in args.streams.split(",")):
            row = measured(Server(proc.pid, address, metrics_url), encoded, k, args.fps, int(args.seconds * args.fps))
            row["offered_fps"] = k * args.fps
            row["holds"] = holds(row, args.budget_ms)
            service.append(row)
            print(f"  {k:>3} streams: {row_line(row)}", flush=True)
        if args.saturate:
            # K streams of no-drop frames sent flat out for --seconds: what the service serves when
            # it is offered more than it can take (frames are queued, not dropped)
            saturated = measured(Server(proc.pid, address, metrics_url), encoded, args.saturate, None, 10**9,
                                 send_s=args.seconds, processes=args.client_processes)  # fmt: skip
            clients = f"; the clients {saturated['client_cpu_cores']} cores"
            print(f"  saturated by {args.saturate} no-drop streams: {row_line(saturated)}{clients}", flush=True)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    limit_fps = max(float(str(r["fps"])) for r in limit)
    best = max(float(str(r["throughput_fps"])) for r in service)  # the capacity only if the sweep saturates it
    held = [int(str(r["streams"])) for r in service if r["holds"]]
    ratios = {  # three significant digits: a small ratio is small, never rounded to 0
        "best_served_over_limit": float(f"{best / limit_fps:.3g}"),
        "best_served_over_naive": float(f"{best / naive['fps']:.3g}"),
    }
    if saturated is not None:  # the service's capacity, against the model's and the naive loop's
        served = float(str(saturated["throughput_fps"]))
        ratios["saturated_over_limit"] = float(f"{served / limit_fps:.3g}")
        ratios["saturated_over_naive"] = float(f"{served / naive['fps']:.3g}")
    payload: dict[str, object] = {
        "benchmark": "sweep",
        "device": device_name(),
        **served_model,
        "frames": f"{width}x{height} JPEG q90 at {args.fps:g} frames/s per stream",
        "budget_ms": args.budget_ms,
        "workers": args.workers,
        "limit": limit,
        "limit_fps": limit_fps,
        "naive": naive,
        "service": service,
        "saturation": saturated,
        "largest_k_that_holds": max(held) if held else 0,
        "ratios": ratios,
        "command": command_line("benchmarks.sweep", args),
    }
    out = write_result("sweep", payload, args.out)
    print(f"{payload['device']} · {payload['provider']} · {payload['model']} · {payload['frames']}")
    print(
        f"  limit {limit_fps:.1f} frames/s · naive {naive['fps']} frames/s · best served {best:.1f} frames/s "
        f"(/limit {ratios['best_served_over_limit']}, /naive {ratios['best_served_over_naive']})"
    )
    print(f"  largest K that holds (no drops, client p99 <= {args.budget_ms:g} ms): {payload['largest_k_that_holds']}")
    if args.plot:
        plot_sweep(payload, args.plot)
        print(f"wrote {args.plot}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
