"""Where a process's CPU time goes, thread group by thread group (the sweep's server_cpu_cores)."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from benchmarks.common import cores_by_thread, thread_cpu_seconds, thread_group
from polypstream.threads import set_os_thread_name


def test_a_pool_s_threads_count_as_one_group_and_the_main_thread_as_main() -> None:
    assert thread_group("decode_3") == "decode"
    assert thread_group("render-12") == "render"
    assert thread_group("batcher") == "batcher"
    assert thread_group("grpc_global_tim") == "grpc_global_tim"  # gRPC's own threads keep their names
    assert thread_group("python3", is_main=True) == "main"


def test_cores_are_cpu_seconds_over_the_wall_time_busiest_first() -> None:
    before = {"decode": 1.0, "grpc": 2.0}
    after = {"decode": 4.0, "grpc": 2.5, "batcher": 1.0}  # a thread group that started meanwhile
    expected = {"total": 2.25, "threads": {"decode": 1.5, "batcher": 0.5, "grpc": 0.25}}
    assert cores_by_thread(before, after, 2.0) == expected
    # an idle group is left out
    assert cores_by_thread({"a": 1.0}, {"a": 1.0, "b": 3.0}, 1.0) == {"total": 3.0, "threads": {"b": 3.0}}


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_named_thread_s_cpu_time_is_found_under_its_group() -> None:
    stop = threading.Event()

    def burn() -> None:
        set_os_thread_name("burner_7")
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=burn)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while thread_cpu_seconds(os.getpid()).get("burner", 0.0) <= 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = thread_cpu_seconds(os.getpid())
    finally:
        stop.set()
        thread.join()
    assert seen["burner"] > 0 and "main" in seen
    assert thread_cpu_seconds(-1) == {}  # no such process
