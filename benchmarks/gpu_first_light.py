"""Issue 12's GPU run, as one command: everything it measures goes to one folder.

    python -m benchmarks.gpu_first_light --out "$OUT"                       # on the GPU machine
    python -m benchmarks.gpu_first_light --out /tmp/fl --device cpu \\
        --streams 1,2 --size 320x240 --budget-s 60                          # the CPU rehearsal

1. the environment (in summary.json, and printed first): onnxruntime (version, providers),
   grpcio, the GPU (nvidia-smi), Python; then the GPU read once through NVML in a process of its
   own (`nvml`): if that fails, every `serve` below runs without GPU metrics (a failure recorded),
   rather than every sweep failing with it;
2. `pytest -m gpu` over the files that hold such tests (the tests that need a usable
   CUDAExecutionProvider), its output in first-light.log;
3. what a frame costs the CPU outside the model on the machine's cores, per model (decoding the
   JPEG at --size and preprocessing, one thread; finding the regions of one map, and of a batch
   of 32 as the pipeline does; `benchmarks.decode_stage`), in summary.json: how many cores K
   streams need and whether the batcher's thread keeps up, before any sweep;
4. for each model (accurate when it is shipped, then fast): `benchmarks.sweep` at --size, --fps
   and every K of --streams against a `serve --device DEVICE` process (with `--device cuda` the
   server refuses to start without CUDA), the model limit and the naive loop in the same run,
   its output in first-light.log too; each K's time chosen so that the whole command keeps to
   --budget-s; then --saturate K no-drop streams sent flat out for as long as a K: the service's
   capacity (frames queued, not dropped) against the model alone and the naive loop, with what
   limited it (thread groups' CPU, GPU busy, GIL wait). The paced K offer at most K × 25
   frames/s (1,600 at 64), under what `fast`'s model alone runs, so their best is no capacity;
5. Python's own 5 ms GIL switch interval against serve's 0.5 ms: one more sweep of `fast` (or
   the first model) at the K of --switch-streams with `serve --gil-switch-ms 5`, beside that
   model's row at the same K (in summary.json: served, drops, p99s, GIL wait, stage p50s);
6. more than one server process: `fast` (or the first model) once more at the K of
   --workers-streams with `serve --workers N` (--workers), beside the one-process row at the
   same K (in summary.json, `workers`): whether N GILs serve what one could not;
7. the service alone: the same sweep, at the K of --alone-streams, of a model that costs nothing
   and finds one steady polyp in every frame, as a real model finds about one (a 1x1 convolution
   times 0 plus a fixed disc, at --alone-input², the accurate model's input size, its frames
   shrunk as the accurate model's are): what decoding, the batcher and the Python layer serve
   without a model to wait for. If it does not hold where the real models fail, the model is
   not what holds the service back; its GIL wait and per-thread CPU say which part is;
8. summary.json and a table on stdout: per model the largest K that holds, served frames/s at
   saturation against the limit and the naive loop, one stream's server p99; per K of the
   service alone, what it served and where its CPU went.
At most eight files (what the device tool brings back, with the caller's own log): the log,
summary.json, each model's sweep JSON and plot, the service alone's JSON.
Exits non-zero if a step failed or a model ran on another provider than the device asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks.common import parse_size
from benchmarks.decode_stage import decode_stage
from polypstream.workers import GPU_METRICS_ENV
from tests.tiny_model import build_steady_polyp_model  # the costless model of the service-alone sweep

ROOT = Path(__file__).resolve().parent.parent
ALONE = "service-alone"
ALONE_RESIZE = "linear"  # models/accurate.onnx's polypstream.resize (tests/unit/test_choose_resize.py checks it)
SWITCH_5MS = "switch-5ms"
WORKERS = "workers"
NO_LIMIT = ["--batches", "1", "--limit-seconds", "0.2"]  # for sweeps whose model limit says nothing new


class Sweep(NamedTuple):
    """One `benchmarks.sweep` run of the command."""

    model: str
    name: str  # of its files and its place in summary.json
    streams: str  # its K, comma-separated
    plot: bool
    flags: list[str]  # more arguments for the sweep
    overhead_s: float  # its time besides its K: the limit, the naive loop, the server's start

    @property
    def runs(self) -> int:
        """Its timed runs: one per K, and the saturation run if it has one."""
        return len(self.streams.split(",")) + ("--saturate" in self.flags)


PROVIDER = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def run(command: list[str], log: Path, timeout_s: float) -> int:
    """Run a command, its output appended to `log`; its exit status (124 on timeout)."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        try:
            return subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\ntimed out after {timeout_s:.0f} s\n")
            return 124


def environment() -> dict[str, object]:
    import grpc
    import onnxruntime as ort

    with_cuda = getattr(ort, "preload_dlls", None)
    if with_cuda is not None:  # onnxruntime-gpu finds torch's CUDA and cuDNN only after this
        try:
            with_cuda()
        except Exception as exc:
            print(f"preload_dlls: {exc}", file=sys.stderr)
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        smi = ""
    return {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "grpcio": grpc.__version__,
        "gpu": smi or None,
        "cpus": os.cpu_count(),
    }


NVML_CHECK = "from polypstream.gpu import open_gpu; gpu = open_gpu(); print(gpu.name, '|', gpu.read())"


def read_gpu_once(code: str = NVML_CHECK) -> dict[str, object]:
    """Whether `serve` can read the GPU through NVML, tried in a Python process of its own:
    ok and the reading, or why not (its last line, or the signal that killed it)."""
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return {"ok": False, "why": "no answer within 60 s"}
    if done.returncode == 0:
        return {"ok": True, "reading": done.stdout.strip()}
    if done.returncode < 0:
        return {"ok": False, "why": f"killed by signal {-done.returncode}"}
    lines = done.stderr.strip().splitlines()
    return {"ok": False, "why": lines[-1] if lines else f"exit status {done.returncode}"}


def gpu_test_files() -> list[str]:
    """The test files that hold `gpu`-marked tests: pytest collects only these, so that a
    package the other tests need (the GPU machine has no `cryptography`) cannot stop it."""
    return sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in path.read_text()
    )


def models_to_measure() -> list[str]:
    shipped = [name for name in ("accurate", "fast") if (ROOT / "models" / f"{name}.onnx").is_file()]
    return shipped or ["fast"]


def service_alone(report: dict[str, Any]) -> list[dict[str, object]]:
    """Per K of the service-alone sweep: what it served and held, its server p99, its GIL wait,
    its three busiest thread groups, and the server's CPU time per frame answered."""
    return [
        {
            "streams": row["streams"],
            "served_fps": row["throughput_fps"],
            "holds": row["holds"],
            "server_p99_ms": row["server_stages_ms"]["server_ms"]["p99"],
            "gil_wait_ms": row["gil_wait"]["mean_ms"],
            "cores": dict(list(row["server_cpu_cores"]["threads"].items())[:3]),
            "cpu_ms_per_frame": row["server_cpu_ms_per_frame"]["total"],
            "gpu_busy": gpu_busy(row),
        }
        for row in report["service"]
    ]


def saturation(report: dict[str, Any]) -> dict[str, object] | None:
    """The sweep's saturation run in short: its capacity against the model's limit, and what
    limited it (the busiest thread groups, the GPU's busy share, the GIL wait)."""
    row = report.get("saturation")
    if not row:
        return None
    return {
        "streams": row["streams"],
        "served_fps": row["throughput_fps"],
        "over_limit": report["ratios"].get("saturated_over_limit"),
        "over_naive": report["ratios"].get("saturated_over_naive"),
        "statuses": row["statuses"],
        "lost": row["lost"],
        "mean_batch": row["mean_batch"],
        "gpu_busy": gpu_busy(row),
        "gil_wait_ms": row["gil_wait"]["mean_ms"],
        "cores": dict(list(row["server_cpu_cores"]["threads"].items())[:4]),
        "cpu_ms_per_frame": row["server_cpu_ms_per_frame"]["total"],
        "client_cpu_cores": row["client_cpu_cores"],  # near 1 or more: the clients may be the limit
    }


def gpu_busy(row: dict[str, Any]) -> float | None:
    """The share of a sweep row's time that a kernel ran on the GPU (None on a CPU)."""
    used = row.get("gpu")
    return used["busy"] if used else None


def k_row(report: dict[str, Any] | None, streams: int) -> dict[str, object] | None:
    """A sweep's row at K = `streams`, in short: what the switch-interval and workers comparisons
    set side by side (None without that sweep or that K)."""
    if report is None:
        return None
    row = next((r for r in report["service"] if r["streams"] == streams), None)
    if row is None:
        return None
    stages = row["server_stages_ms"]
    return {
        "served_fps": row["throughput_fps"],
        "statuses": row["statuses"],
        "client_p99_ms": row["latency_ms"]["p99"],
        "server_p99_ms": stages["server_ms"]["p99"],
        "gil_wait": row["gil_wait"],
        "cpu_ms_per_frame": row["server_cpu_ms_per_frame"]["total"],
        "gpu_busy": gpu_busy(row),
        "p50_ms": {k.removesuffix("_ms"): v["p50"] for k, v in stages.items()},
    }


def add_to_summary(
    summary: dict[str, Any],
    name: str,
    reports: dict[str, dict[str, Any]],
    seconds: float,
    args: argparse.Namespace,
    switched: str,
) -> None:
    """What summary.json keeps of the sweep `name` (its report in `reports`): the service alone
    per K, the switch-interval comparison, or a model's headline numbers."""
    report = reports[name]
    if name == ALONE:
        size = f"{args.alone_input}x{args.alone_input}"
        summary["service_alone"] = {"input": size, "per_k": service_alone(report)}
    elif name == SWITCH_5MS:
        k = int(args.switch_streams.split(",")[0])
        summary["switch_interval"] = {
            "model": switched,
            "streams": k,
            "python_5ms": k_row(report, k),
            "serve_0.5ms": k_row(reports.get(switched), k),
        }
    elif name == WORKERS:
        summary["workers"] = {
            "model": switched,
            "workers": args.workers,
            "per_k": [
                {"streams": k, "one_process": k_row(reports.get(switched), k), "workers": k_row(report, k)}
                for k in (int(v) for v in args.workers_streams.split(","))
            ],
        }
    else:
        one = next((row for row in report["service"] if row["streams"] == 1), None)
        summary["models"][name] = {
            "model": report.get("model"),
            "provider": report.get("provider"),
            "seconds_per_k": round(seconds, 1),
            "largest_k_that_holds": report.get("largest_k_that_holds"),
            "limit_fps": report.get("limit_fps"),
            "naive_fps": report.get("naive", {}).get("fps"),
            "ratios": report.get("ratios"),
            "one_stream_server_p99_ms": one and one["server_stages_ms"]["server_ms"]["p99"],
            "saturation": saturation(report),
            # is the GPU the limit where K stops holding? (a share near 1: it is)
            "gpu_busy_by_k": {str(row["streams"]): gpu_busy(row) for row in report["service"]},
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--models", help="comma-separated (default: accurate if shipped, and fast)")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--streams", default="1,2,4,8,16,32,48,64")
    parser.add_argument("--budget-ms", type=float, default=40.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall time for the whole command")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64", help="batch sizes for the model's limit")
    parser.add_argument("--limit-seconds", type=float, default=3.0, help="measuring time per batch size")
    parser.add_argument("--alone-streams", default="16,32,48,64", help="K for the service alone ('' for none)")
    parser.add_argument("--alone-input", type=int, default=352, help="the costless model's input size")
    parser.add_argument("--switch-streams", default="48", help="K for the 5 ms switch-interval sweep ('' for none)")
    parser.add_argument("--workers", type=int, default=4, help="server processes of the workers sweep")
    parser.add_argument("--workers-streams", default="48,64", help="K for the workers sweep ('' for none)")
    parser.add_argument(
        "--saturate", type=int, default=32, help="each model: K no-drop streams flat out, its capacity (0: none)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(f"environment: {env}", flush=True)
    failures = []
    log = args.out / "first-light.log"  # one log for every step: the device tool brings back eight files
    pytest = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *gpu_test_files()]
    code = run(pytest, log, 120)
    if code not in (0, 5):  # 5: nothing collected
        failures.append(f"pytest -m gpu exited {code}")
    models = args.models.split(",") if args.models else models_to_measure()
    # Each model at every K (a path names its files), then one at Python's own switch interval,
    # then with several server processes, then the service alone. Besides its K a sweep takes
    # about 40 s for the limit, the naive loop and the server's start; 15 s with the limit cut
    # short (NO_LIMIT).
    # Saturated by no-drop frames, the service decodes them on its offline pool: given every core
    # here, as a replay-only server would be, so that the capacity is the service's, not the
    # default's half (live frames keep the decode pool of their own either way).
    # The flat-out clients spread over four processes: in one, their GIL could be the limit.
    cores = str(os.cpu_count() or 1)
    saturate = (
        ["--saturate", str(args.saturate), "--offline-decode-workers", cores, "--client-processes", "4"]
        if args.saturate
        else []
    )
    sweeps = [Sweep(model, Path(model).stem, args.streams, True, saturate, 40.0) for model in models]
    switched = "fast" if "fast" in models else models[0]
    if args.switch_streams:
        five = ["--gil-switch-ms", "5", *NO_LIMIT]
        sweeps.append(Sweep(switched, SWITCH_5MS, args.switch_streams, False, five, 15.0))
    if args.workers_streams:
        several = ["--workers", str(args.workers), *NO_LIMIT]
        sweeps.append(Sweep(switched, WORKERS, args.workers_streams, False, several, 15.0))
    if args.alone_streams:
        # shrinking frames as the accurate model does (its polypstream.resize), at its input size
        alone = Path(tempfile.mkdtemp()) / "alone.onnx"
        build_steady_polyp_model(alone, size=args.alone_input, resize=ALONE_RESIZE)
        sweeps.append(Sweep(str(alone), ALONE, args.alone_streams, False, NO_LIMIT, 15.0))
    runs_left = sum(sweep.runs for sweep in sweeps)
    reports: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {"device": args.device, "environment": env, "models": {}}
    # The servers read the GPU through NVML (service/gpu.py): tried once in a process of its own
    # first, so that a failure there costs the GPU metrics, not every sweep of a rare GPU run.
    summary["nvml"] = nvml = read_gpu_once()
    print(f"NVML: {nvml}", flush=True)
    if args.device == "cuda" and not nvml["ok"]:
        os.environ[GPU_METRICS_ENV] = "0"  # inherited by every `serve` started below
        failures.append(f"NVML could not be read ({nvml['why']}): the servers ran without GPU metrics")
    width, height = parse_size(args.size)
    try:
        summary["decode_stage"] = {Path(m).stem: decode_stage(m, (width, height), 1.0) for m in models}
        print(f"decode stage, one core: {summary['decode_stage']}", flush=True)
    except Exception as exc:  # a measurement that failed must not cost the sweeps
        failures.append(f"decode stage: {type(exc).__name__}: {exc}")

    def save_summary() -> None:  # after every step: a command stopped at its time limit keeps what it measured
        summary["failures"] = failures
        summary["seconds"] = round(time.monotonic() - started, 1)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    for n, (model, name, streams, plot, flags, overhead_s) in enumerate(sweeps):
        save_summary()
        ks = sweeps[n].runs
        left = args.budget_s - (time.monotonic() - started) - sum(sweep.overhead_s for sweep in sweeps[n:])
        seconds = max(2.0, left / runs_left - 4.0)
        share = overhead_s + ks * (seconds + 4.0)
        runs_left -= ks
        # The switch-interval and workers sweeps' JSON stay out of --out (their rows are in
        # summary.json): the device tool brings back eight files.
        out = (Path(tempfile.mkdtemp()) if name in (SWITCH_5MS, WORKERS) else args.out) / f"sweep-{name}.json"
        command = [
            sys.executable, "-m", "benchmarks.sweep", "--model", model, "--device", args.device,
            "--size", args.size, "--fps", str(args.fps), "--streams", streams, "--seconds", f"{seconds:.1f}",
            "--budget-ms", str(args.budget_ms), "--max-batch", str(args.max_batch),
            "--batches", args.batches, "--limit-seconds", str(args.limit_seconds), "--out", str(out),
            *(["--plot", str(args.out / f"sweep-{name}.png")] if plot else []), *flags,
        ]  # fmt: skip
        print(f"{name}: {seconds:.1f} s per K", flush=True)
        code = run(command, log, max(60.0, share + 60.0))
        if code != 0 or not out.is_file():
            failures.append(f"sweep of {name} exited {code} (see first-light.log)")
            continue
        report = json.loads(out.read_text())
        if report.get("provider") != PROVIDER[args.device]:
            failures.append(f"{name} ran on {report.get('provider')}, not {PROVIDER[args.device]}")
        reports[name] = report
        add_to_summary(summary, name, reports, seconds, args, Path(switched).stem)
    save_summary()
    shown = ("models", "switch_interval", "workers", "service_alone")
    print(json.dumps({k: summary[k] for k in shown if k in summary}, indent=1))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
