"""`serve --workers N`: N server processes sharing one gRPC port, for a host with more cores
than one Python process can keep busy.

Each worker is a whole `polypstream serve` (model session, batcher, decode pool, metrics) with
its own GIL: one process spends about half a millisecond of Python per frame, so past some
frames a second it is the GIL, not the GPU or the cores, that holds the service back
(benchmarks/README.md, "The GIL wait"). The kernel spreads incoming connections over the
workers (SO_REUSEPORT); a stream stays on the worker its connection reached. So:
- limits (--max-streams, --memory-limit-mb) and metrics are per worker: worker i serves its
  metrics on the metrics port + i (each on a free port when that is 0); the GPU's, which are the
  whole device's, come from worker 0 alone (`reports_gpu`), so that summing the workers' adds
  nothing twice;
- server-side sources and the live view belong to one process, and are refused with workers;
- the parent reserves the port (and the health port) before starting them, stops them all on
  SIGINT/SIGTERM (each drains as `serve` does) and when one of them fails, and says so in one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

SHARED_PORT_ENV = "POLYPSTREAM_SHARED_PORT"  # "1" in a worker: bind the port its siblings share
PARENT_ENV = "POLYPSTREAM_WORKER_PARENT"  # in a worker: its parent's pid
INDEX_ENV = "POLYPSTREAM_WORKER_INDEX"  # in a worker: its index, 0 to N - 1
GPU_METRICS_ENV = "POLYPSTREAM_GPU_METRICS"  # "0": no process reads the GPU
START_TIMEOUT_S = 600.0  # loading the model and warming every batch size up on CUDA
ERROR_PREFIX = re.compile(r"^polypstream serve: error: ")


class WorkerError(RuntimeError):
    """A worker could not start, or stopped on its own; the message is one line."""


def shares_port() -> bool:
    """Whether this process is a worker that binds a port its siblings share."""
    return os.environ.get(SHARED_PORT_ENV) == "1"


def worker_index() -> int | None:
    """This worker's index among its siblings; None in a process that is no worker."""
    index = os.environ.get(INDEX_ENV)
    return int(index) if shares_port() and index is not None and index.isdigit() else None


def reports_gpu() -> bool:
    """Whether this `serve` reads the GPU for its metrics (service/gpu.py): a lone server, or
    worker 0 of several (the readings are the whole device's); never with POLYPSTREAM_GPU_METRICS=0."""
    return worker_index() in (None, 0) and os.environ.get(GPU_METRICS_ENV) != "0"


def host_port(address: str) -> tuple[str, int] | None:
    """HOST and PORT of a HOST:PORT address; None for unix:PATH, none at all or a malformed one."""
    if address.startswith("unix:"):
        return None
    host, sep, port = address.rpartition(":")
    return (host, int(port)) if sep and port.isdigit() else None


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


Bindable = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]  # one of getaddrinfo's


def listen_addresses(address: str) -> Sequence[Bindable]:
    """What a server listening on HOST:PORT binds: getaddrinfo's passive TCP addresses of it."""
    host, port = split_host_port(address)
    return socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)


def reserve_port(address: str) -> tuple[socket.socket, str]:
    """A socket bound (not listening) to `address` with SO_REUSEPORT, which keeps the port for
    the workers until it is closed, and the address with the port it got (for port 0)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise WorkerError("--workers needs SO_REUSEPORT (Linux, macOS, BSD): not on this system")
    host, _ = split_host_port(address)
    family, kind, proto, _, sockaddr = listen_addresses(address)[0]
    reserved = socket.socket(family, kind, proto)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reserved.bind(sockaddr)
    except OSError as exc:
        reserved.close()
        raise WorkerError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return reserved, f"{host}:{reserved.getsockname()[1]}"


def metrics_address_of(metrics_address: str, index: int) -> str:
    """Worker `index`'s metrics address: the port + index, a free port for port 0, none for ''."""
    if not metrics_address:
        return ""
    host, port = split_host_port(metrics_address)
    return f"{host}:{port + index if port else 0}"


def worker_command(
    argv: Sequence[str], index: int, workers: int, address: str, health_address: str,
    metrics_address: str, decode_workers: int, threads: int, cores: int,
) -> list[str]:  # fmt: skip
    """The command line of worker `index`: the parent's own, then one worker, the shared
    addresses, its metrics address, and its share of the cores for decoding and onnxruntime
    where those were left to the default (0)."""
    command = [sys.executable, "-m", "polypstream", *argv, "--workers", "1", "--address", address]
    if health_address:
        command += ["--health-address", health_address]
    command += ["--metrics-address", metrics_address_of(metrics_address, index)]
    share = str(max(1, cores // workers))
    if not decode_workers:
        command += ["--decode-workers", share]
    if not threads:
        command += ["--threads", share]
    return command


@dataclass
class Worker:
    """One worker process, its first line once it serves, and what it printed since."""

    index: int
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)  # stdout after its first line
    errors: list[str] = field(default_factory=list)  # stderr, while it starts
    started: threading.Event = field(default_factory=threading.Event)
    first_line: str = ""
    readers: list[threading.Thread] = field(default_factory=list)

    def read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not self.started.is_set():
                self.first_line = line.strip()
                self.started.set()
            else:
                self.lines.append(line.strip())
        self.started.set()  # it ended (without serving, if no line came)

    def relay_stderr(self) -> None:
        """Its stderr: kept while it starts (a failure is said once, by the parent), then passed on."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if self.first_line:
                print(f"worker {self.index}: {line.rstrip()}", file=sys.stderr, flush=True)
            else:
                self.errors.append(line.rstrip())

    def why_it_failed(self) -> str:
        last = next((line for line in reversed(self.errors) if line.strip()), "")
        return ERROR_PREFIX.sub("", last) or f"exited with status {self.proc.returncode}"


def start_workers(commands: list[list[str]]) -> list[Worker]:
    """The workers started, each serving; WorkerError (the others stopped) if one is not."""
    env = {**os.environ, SHARED_PORT_ENV: "1", PARENT_ENV: str(os.getpid())}
    workers = []
    for index, command in enumerate(commands):
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, INDEX_ENV: str(index)}
        )
        worker = Worker(index, proc)
        for target in (worker.read_stdout, worker.relay_stderr):
            reader = threading.Thread(target=target, name=f"worker-{index}-io", daemon=True)
            reader.start()
            worker.readers.append(reader)
        workers.append(worker)
    deadline = time.monotonic() + START_TIMEOUT_S
    for worker in workers:
        worker.started.wait(max(0.0, deadline - time.monotonic()))
        if "serving on" not in worker.first_line:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(10)  # it closed its output: it is ending
            ended = worker.proc.poll() is not None
            stop_workers(workers)  # and wait for what they printed
            failed = worker.why_it_failed() if ended else f"did not start within {START_TIMEOUT_S:g} s"
            raise WorkerError(f"worker {worker.index}: {failed}")
    for worker in workers:  # what each logged while it started (a slow model's warning, say)
        for line in worker.errors:
            print(f"worker {worker.index}: {line}", file=sys.stderr, flush=True)
    return workers


def signal_workers(workers: list[Worker], sig: int) -> None:
    """Send `sig` to every worker still running."""
    for worker in workers:
        if worker.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(sig)


def stop_workers(workers: list[Worker], sig: int | None = signal.SIGTERM) -> None:
    """Signal every worker still running (unless `sig` is None: they were), wait for all of
    them (killing one that takes more than a minute), and for what they printed."""
    if sig is not None:
        signal_workers(workers, sig)
    for worker in workers:
        try:
            worker.proc.wait(60)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()
        for reader in worker.readers:
            reader.join(5)


def serving_line(workers: list[Worker], address: str, health: str = "") -> str:
    """The parent's first line, in `serve`'s form: the address, every worker's metrics URL, the
    health address, the model."""
    urls = [m[1] for w in workers if (m := re.search(r"metrics on (\S+?)[,\s]", w.first_line))]
    model = re.search(r"\((model .*)\)$", workers[0].first_line)
    metrics = f", metrics on {', '.join(urls)}" if urls else ""
    metrics += f", health on {health}" if health else ""
    return f"polypstream serving on {address}{metrics} ({len(workers)} workers; {model[1] if model else 'model'})"


def answered(worker: Worker) -> int:
    found = [int(m[1]) for line in worker.lines if (m := re.search(r"stopped: (\d+) frames answered", line))]
    return found[-1] if found else 0


def supervise(workers: list[Worker]) -> int:
    """Until a signal or a worker's own end: forward SIGINT/SIGTERM to every worker, wait for
    all, say how many frames they answered. Non-zero if one stopped on its own or failed."""
    stopping, changed = threading.Event(), threading.Event()

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        signal_workers(workers, signum)
        changed.set()

    def watch(worker: Worker) -> None:
        worker.proc.wait()
        changed.set()

    for worker in workers:
        threading.Thread(target=watch, args=(worker,), name=f"worker-{worker.index}-watch", daemon=True).start()
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping.is_set():
            ended = [w for w in workers if w.proc.poll() is not None]
            if ended:
                print(
                    f"polypstream serve: error: worker {ended[0].index} stopped (status {ended[0].proc.returncode}); "
                    "stopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                stop_workers(workers)
                return 1
            changed.wait()  # a signal or a worker's end
            changed.clear()
        stop_workers(workers, None)  # signalled by `forward`: each drains as `serve` does
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    total = sum(answered(w) for w in workers)
    print(f"polypstream stopped: {total} frames answered ({len(workers)} workers)", flush=True)
    return 0 if all(w.proc.returncode == 0 for w in workers) else 1


def die_with_parent() -> None:
    """In a worker (Linux): be sent SIGTERM when the parent dies, however it dies, so that no
    worker is left serving (and holding the GPU) without it; end now if it is gone already."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # here: only a worker on Linux needs it

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    parent = int(os.environ.get(PARENT_ENV, "0"))
    if parent and os.getppid() != parent:  # it died before the line above: nobody supervises this worker
        raise WorkerError("the parent of this worker is gone")
