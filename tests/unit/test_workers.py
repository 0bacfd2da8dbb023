"""`serve --workers`: what each worker is started with, and how the parent reads and says what
they report (the processes themselves: tests/e2e/test_cli.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from polypstream.workers import (
    Worker,
    WorkerError,
    answered,
    host_port,
    metrics_address_of,
    reserve_port,
    serving_line,
    worker_command,
)


def test_each_worker_gets_the_shared_addresses_its_metrics_port_and_its_share_of_the_cores() -> None:
    argv = ["--log-level", "INFO", "serve", "--model", "fast", "--workers", "4"]
    command = worker_command(argv, 2, 4, "0.0.0.0:50051", "0.0.0.0:50052", "127.0.0.1:8000", 0, 0, 16)
    assert command == [
        sys.executable, "-m", "polypstream", *argv, "--workers", "1", "--address", "0.0.0.0:50051",
        "--health-address", "0.0.0.0:50052", "--metrics-address", "127.0.0.1:8002",
        "--decode-workers", "4", "--threads", "4",
    ]  # fmt: skip
    # settings given are kept (the last flag wins); at least one thread each; no health, no metrics
    command = worker_command(["serve"], 0, 3, "127.0.0.1:7000", "", "", 6, 2, 2)
    assert command[3:] == ["serve", "--workers", "1", "--address", "127.0.0.1:7000", "--metrics-address", ""]
    assert worker_command(["serve"], 0, 3, "a:1", "", "", 0, 0, 2)[-4:] == ["--decode-workers", "1", "--threads", "1"]


def test_metrics_ports_follow_the_worker_index_or_are_each_free() -> None:
    assert [metrics_address_of("127.0.0.1:8000", i) for i in range(3)] == [
        "127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002",
    ]  # fmt: skip
    assert metrics_address_of("127.0.0.1:0", 5) == "127.0.0.1:0"
    assert metrics_address_of("", 1) == ""


def worker_said(index: int, first_line: str, *lines: str) -> Worker:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    worker = Worker(index, proc, first_line=first_line)
    worker.lines.extend(lines)
    return worker


def test_the_parent_says_where_all_workers_serve_and_what_they_answered() -> None:
    serving = (
        "polypstream serving on 127.0.0.1:5000, metrics on http://127.0.0.1:{}/metrics "
        "(model tiny test on CPU; alerts 2 of 2 frames, held 4)"
    )
    workers = [
        worker_said(0, serving.format(8000), "polypstream stopped: 30 frames answered"),
        worker_said(1, serving.format(8001), "polypstream stopped: 12 frames answered"),
    ]
    assert serving_line(workers, "127.0.0.1:5000") == (
        "polypstream serving on 127.0.0.1:5000, metrics on http://127.0.0.1:8000/metrics, "
        "http://127.0.0.1:8001/metrics (2 workers; model tiny test on CPU; alerts 2 of 2 frames, held 4)"
    )
    with_health = serving_line(workers, "127.0.0.1:5000", "127.0.0.1:5001")
    assert ", http://127.0.0.1:8001/metrics, health on 127.0.0.1:5001 (2 workers; " in with_health
    assert [answered(w) for w in workers] == [30, 12]
    assert answered(worker_said(2, "polypstream serving on x")) == 0  # killed before it said


def test_a_port_is_reserved_for_the_workers_and_one_in_use_is_refused() -> None:
    reserved, address = reserve_port("127.0.0.1:0")
    with reserved:
        port = int(address.rsplit(":", 1)[1])
        assert port > 0
        # a worker binding with SO_REUSEPORT shares it ...
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
        # ... and a port another server holds without it is refused in one line
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            taken = f"127.0.0.1:{other.getsockname()[1]}"
            with pytest.raises(WorkerError, match=f"^cannot listen on {taken}: Address already in use$"):
                reserve_port(taken)


def test_a_host_and_port_are_read_from_an_address_and_nothing_from_anything_else() -> None:
    assert host_port("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert host_port("[::1]:8080") == ("[::1]", 8080)
    assert host_port(":0") == ("", 0)
    for no_port in ("", "garbage", "127.0.0.1:http", "unix:/tmp/s.sock", "unix:/tmp/s:1"):
        assert host_port(no_port) is None, no_port
