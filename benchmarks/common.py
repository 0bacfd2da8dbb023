"""Shared pieces of the benchmarks: the machine's name, realistic frames, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from polypstream.dataset import load_split, read_image, read_mask
from polypstream.synth import render_clip

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIXTURES = ROOT / "tests" / "data" / "kvasir"


def device_name() -> str:
    """'NVIDIA H100 80GB HBM3' where a GPU answers nvidia-smi, else the CPU model and core count."""
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        if gpu.returncode == 0 and gpu.stdout.strip():
            return gpu.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


class StealMeter:
    """The share of CPU time a virtual machine's host gave to others while this one wanted it
    (/proc/stat 'steal'), from the meter's making to `share()`: on a shared VM, latency spikes
    that no code here caused. None where the kernel does not say (not Linux)."""

    def __init__(self) -> None:
        self._start = self.counters()

    @staticmethod
    def counters() -> tuple[int, int] | None:
        """/proc/stat's (steal, all) CPU time counters now; None where it cannot be read."""
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        if len(fields) < 8:
            return None
        return fields[7], sum(fields[:8])  # steal, and all time (guest time is inside user time)

    def share(self) -> float | None:
        end = self.counters()
        if self._start is None or end is None or end[1] == self._start[1]:
            return None
        return round((end[0] - self._start[0]) / (end[1] - self._start[1]), 4)


class StealSampler:
    """StealMeter's counters once a second on a thread of its own, and once more at `stop()`,
    which returns them as (seconds since `started`, steal, all): the host's steal window by window."""

    def __init__(self, started: float, every_s: float = 1.0) -> None:
        self.started, self.every_s = started, every_s
        self._samples: list[tuple[float, float, float]] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steal-sampler", daemon=True)

    def start(self) -> StealSampler:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, float, float]]:
        self._stopping.set()
        self._thread.join()
        return self._samples

    def _run(self) -> None:
        stopping = False
        while True:
            if (counters := StealMeter.counters()) is not None:
                self._samples.append((time.perf_counter() - self.started, *counters))
            if stopping:
                return
            stopping = self._stopping.wait(self.every_s)


def thread_group(name: str, is_main: bool = False) -> str:
    """What a thread's CPU time is counted under: "main" for the main thread, else its OS name
    less a pool's number ("decode_3" → "decode")."""
    return "main" if is_main else re.sub(r"[-_]\d+$", "", name) or name


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) that a process's live threads, and those of its child
    processes (the workers of `serve --workers`), have used so far, summed by `thread_group`
    (every process's main thread under "main"); {} where /proc cannot be read (not Linux, or
    the process is gone)."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for process in process_tree(pid):
        try:
            tasks = list(Path(f"/proc/{process}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()  # after the name: state, ppid, …
            except OSError:  # the thread ended meanwhile
                continue
            group = thread_group(name, task.name == str(process))
            totals[group] = totals.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return totals


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, as /proc lists each thread's children."""
    found, todo = [], [pid]
    while todo:
        process = todo.pop()
        found.append(process)
        for children in Path(f"/proc/{process}/task").glob("*/children"):
            try:
                todo += [int(child) for child in children.read_text().split()]
            except OSError:
                continue
    return found


def cores_by_thread(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, object]:
    """CPU cores used per thread group between two `thread_cpu_seconds`, busiest first, and in all."""
    return _by_group(before, after, lambda seconds: seconds / wall_s, 2)


def cpu_ms_per_frame(before: dict[str, float], after: dict[str, float], frames: int) -> dict[str, object]:
    """CPU milliseconds per frame answered, per thread group between two `thread_cpu_seconds`
    (busiest first) and in all: what a frame costs the server, whatever the load and the cores."""
    return _by_group(before, after, lambda seconds: seconds * 1e3 / max(1, frames), 3)


def _by_group(
    before: dict[str, float], after: dict[str, float], scaled: Callable[[float], float], digits: int
) -> dict[str, object]:
    """Each thread group's CPU seconds between two `thread_cpu_seconds`, `scaled`, rounded to
    `digits`: the groups above 0 busiest first, and the total."""
    used = {name: scaled(seconds - before.get(name, 0.0)) for name, seconds in after.items()}
    shown = ((name, round(value, digits)) for name, value in used.items())
    busiest = sorted(((name, value) for name, value in shown if value > 0), key=lambda item: -item[1])
    return {"total": round(sum(used.values()), digits), "threads": dict(busiest)}


def timed_calls(step: Callable[[int], object], seconds: float, at_least: int = 5) -> list[float]:
    """Seconds of each call `step(0)`, `step(1)`, … made until `seconds` have passed and at least
    `at_least` calls were made (a warm-up, where one is needed, is the caller's)."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < at_least:
        start = time.perf_counter()
        step(len(times))
        times.append(time.perf_counter() - start)
    return times


def parse_size(text: str) -> tuple[int, int]:
    """(width, height) of a WIDTHxHEIGHT flag."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def endoscopy_frames(count: int, size: tuple[int, int] = (720, 576), seed: int = 0) -> list[np.ndarray]:
    """`count` BGR frames of simulated endoscope motion over the fixture polyp images."""
    samples = load_split(FIXTURES)
    images = [read_image(s.image_path) for s in samples]
    masks = [read_mask(s.mask_path) for s in samples if s.mask_path is not None]
    per_image = max(1, -(-count // len(images)))
    frames = [frame for frame, _ in render_clip(images, masks, size, per_image, seed)]
    return frames[:count]


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def write_result(name: str, payload: dict[str, object], out: Path | None = None) -> Path:
    """benchmarks/results/<device>-<name>.json unless `out` says otherwise."""
    path = out or RESULTS / f"{slug(str(payload['device']))}-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def start_server_process(*serve_args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, str]:
    """`polypstream serve` on free ports: (process, gRPC address, metrics URL, or every worker's
    space-separated, which `scrape` sums); the caller owns the process and must end it
    (terminate, then communicate to close its pipes). `env`: the server's environment
    (default: this process's)."""
    proc, at = start_serve(*serve_args, env=env)
    return proc, at["grpc"], at["all_metrics"]


SERVING = {"grpc": r"serving on (\S+?),", "metrics": r"metrics on (\S+?)[,\s]", "ui": r"live view on (\S+?)[,\s]"}


def start_serve(*serve_args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`polypstream serve` on free ports (gRPC and metrics) and, once it serves, where, read from
    its first line ("serving on ADDR, metrics on URL[, URL…][, live view on URL] (model …)"): keys
    "grpc", "metrics" (the first worker's), "all_metrics" (every worker's, space-separated),
    "line" (the line itself) and, with --ui, "ui"."""
    command = [sys.executable, "-m", "polypstream", "serve", "--address", "127.0.0.1:0"]
    command += ["--metrics-address", "127.0.0.1:0", *serve_args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    at = {name: found[1] for name, pattern in SERVING.items() if (found := re.search(pattern, line))}
    at["all_metrics"] = " ".join(re.findall(r"(https?://\S+?/metrics)", line))  # every worker's (serve --workers)
    at["line"] = line.strip()
    if "grpc" not in at or "metrics" not in at:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise RuntimeError(f"polypstream serve did not start: {line!r} {err.strip()[-2000:]}")
    return proc, at


def scrape(url: str) -> dict[str, float]:
    """The polypstream_* and process_* samples of a /metrics page, by full sample name; for
    several space-separated URLs (the workers of `serve --workers`), each sample summed."""
    values: dict[str, float] = {}
    for one in url.split():
        text = urllib.request.urlopen(one, timeout=10).read().decode()
        for line in text.splitlines():
            if line.startswith(("polypstream_", "process_")) and " " in line:
                name, value = line.rsplit(" ", 1)
                values[name] = values.get(name, 0.0) + float(value)
    return values


GIL_WAIT = "polypstream_gil_wait_seconds"


def gil_wait(before: dict[str, float], after: dict[str, float]) -> dict[str, float | int | None]:
    """The server's GIL wait between two scrapes: samples, mean ms, and the share of samples over
    1 ms and over 5 ms (Python's own switch interval: over it, a thread waited for others to be
    made to let go more than once)."""
    count = after.get(f"{GIL_WAIT}_count", 0.0) - before.get(f"{GIL_WAIT}_count", 0.0)
    if count <= 0:
        return {"samples": 0, "mean_ms": None, "over_1ms": None, "over_5ms": None}

    def over(le: str) -> float:  # the share of this interval's samples above the bucket `le`
        key = f'{GIL_WAIT}_bucket{{le="{le}"}}'
        return round(1 - (after.get(key, 0.0) - before.get(key, 0.0)) / count, 4)

    total = after.get(f"{GIL_WAIT}_sum", 0.0) - before.get(f"{GIL_WAIT}_sum", 0.0)
    return {"samples": int(count), "mean_ms": round(total / count * 1e3, 3), "over_1ms": over("0.001"),
            "over_5ms": over("0.005")}  # fmt: skip


GPU_BUSY = "polypstream_gpu_busy_seconds_total"
GPU_MEMORY = "polypstream_gpu_memory_used_bytes"


def gpu_use(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float] | None:
    """The server's GPU between two scrapes `seconds` apart: the share of that time a kernel ran
    (any process's) and the memory in use at the end, in MiB; None where the server reports no GPU."""
    if GPU_BUSY not in after or seconds <= 0:
        return None
    busy = (after[GPU_BUSY] - before.get(GPU_BUSY, 0.0)) / seconds
    return {"busy": round(busy, 3), "memory_used_mib": round(after.get(GPU_MEMORY, 0.0) / 2**20, 1)}


def command_line(module: str, args: argparse.Namespace) -> str:
    """The command that reproduces a run, from its parsed arguments (recorded in the JSON)."""
    flags = " ".join(
        f"--{k.replace('_', '-')}={value}" if isinstance(v, list) else f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if v
        for value in (v if isinstance(v, list) else [v])  # a flag given more than once (append)
    )
    return f"python -m {module} {flags}"
