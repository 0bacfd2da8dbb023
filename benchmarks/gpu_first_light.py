"""Issue 12's GPU run, as one command: everything it measures goes to one folder.

    python -m benchmarks.gpu_first_light --out "$OUT"                       # on the GPU machine
    python -m benchmarks.gpu_first_light --out /tmp/fl --device cpu \\
        --streams 1,2 --size 320x240 --budget-s 60                          # the CPU rehearsal

1. the environment (in summary.json, and printed first): onnxruntime (version, providers),
   grpcio, the GPU (nvidia-smi), Python;
2. pytest-gpu.log: `pytest -m gpu` over the files that hold such tests (the tests that need a
   usable CUDAExecutionProvider);
3. for each model (accurate when it is shipped, then fast): `benchmarks.sweep` at --size, --fps
   and every K of --streams against a `serve --device DEVICE` process (with `--device cuda` the
   server refuses to start without CUDA), the model limit and the naive loop in the same run;
   each K's time chosen so that the whole command keeps to --budget-s;
4. summary.json and a table on stdout: per model the largest K that holds, served frames/s at
   saturation against the limit and the naive loop, one stream's server p99.
Exits non-zero if a step failed or the model ran on another provider than the device asked for.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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
        "cpus": __import__("os").cpu_count(),
    }


def gpu_test_files() -> list[str]:
    """The test files that hold `gpu`-marked tests: pytest collects only these, so that a
    package the other tests need (the GPU machine has no `cryptography`) cannot stop it."""
    return sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in path.read_text()
    )


def models_to_measure() -> list[str]:
    shipped = [name for name in ("accurate", "fast") if (ROOT / "models" / f"{name}.onnx").is_file()]
    return shipped or ["fast"]


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
    args = parser.parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    print(f"environment: {env}", flush=True)
    failures = []
    code = run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *gpu_test_files()],
        args.out / "pytest-gpu.log",
        120,
    )
    if code not in (0, 5):  # 5: nothing collected
        failures.append(f"pytest -m gpu exited {code}")
    models = args.models.split(",") if args.models else models_to_measure()
    ks = [int(k) for k in args.streams.split(",")]
    summary: dict[str, object] = {"device": args.device, "environment": env, "models": {}}
    for n, model in enumerate(models):
        left = args.budget_s - (time.monotonic() - started)
        share = left / (len(models) - n)
        seconds = max(2.0, (share - 40.0) / len(ks) - 4.0)  # 40 s: limit, naive loop, start-ups
        name = Path(model).stem  # a path names its file
        out = args.out / f"sweep-{name}.json"
        command = [
            sys.executable, "-m", "benchmarks.sweep", "--model", model, "--device", args.device,
            "--size", args.size, "--fps", str(args.fps), "--streams", args.streams, "--seconds", f"{seconds:.1f}",
            "--budget-ms", str(args.budget_ms), "--max-batch", str(args.max_batch),
            "--batches", args.batches, "--limit-seconds", str(args.limit_seconds),
            "--out", str(out), "--plot", str(args.out / f"sweep-{name}.png"),
        ]  # fmt: skip
        print(f"{model}: {seconds:.1f} s per K", flush=True)
        # One log for every model's sweep: the device tool brings back eight files at most.
        code = run(command, args.out / "sweeps.log", max(60.0, share + 60.0))
        if code != 0 or not out.is_file():
            failures.append(f"sweep of {model} exited {code} (see sweeps.log)")
            continue
        report = json.loads(out.read_text())
        if report.get("provider") != PROVIDER[args.device]:
            failures.append(f"{model} ran on {report.get('provider')}, not {PROVIDER[args.device]}")
        one = next((row for row in report["service"] if row["streams"] == 1), None)
        summary["models"][name] = {  # type: ignore[index]
            "model": report.get("model"),
            "provider": report.get("provider"),
            "seconds_per_k": round(seconds, 1),
            "largest_k_that_holds": report.get("largest_k_that_holds"),
            "limit_fps": report.get("limit_fps"),
            "naive_fps": report.get("naive", {}).get("fps"),
            "ratios": report.get("ratios"),
            "one_stream_server_p99_ms": one and one["server_stages_ms"]["server_ms"]["p99"],
        }
    summary["failures"] = failures
    summary["seconds"] = round(time.monotonic() - started, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary["models"], indent=1))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
