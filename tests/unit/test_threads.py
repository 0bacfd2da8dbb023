"""Threads named for the operating system (top -H, ps -L) and lowered in priority (Linux only)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from polypstream.runner import Runner
from polypstream.threads import name_os_thread, os_thread_name, os_thread_named, set_os_thread_name

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="threads' names in /proc are Linux's")


def on_a_thread(name: str, work: object) -> list[str | None]:
    seen: list[str | None] = []

    def run() -> None:
        assert callable(work)
        work()
        seen.append(os_thread_name())

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join(10)
    return seen


def test_a_thread_takes_its_python_name_less_the_package_prefix() -> None:
    assert on_a_thread("polypstream-decode_3", name_os_thread) == ["decode_3"]
    assert on_a_thread("replay-1", name_os_thread) == ["replay-1"]


def test_a_name_is_cut_to_the_15_bytes_linux_keeps() -> None:
    assert on_a_thread("t", lambda: set_os_thread_name("source-endoscope-room-4")) == ["source-endoscop"]
    # never inside a character: "source-Bærumx" is 14 bytes, and the "ø" after it (2 bytes) would pass 15
    assert on_a_thread("t", lambda: set_os_thread_name("source-Bærumxø")) == ["source-Bærumx"]


def test_a_temporary_name_is_given_back() -> None:
    def inside() -> None:
        set_os_thread_name("before")
        with os_thread_named("during"):
            assert os_thread_name() == "during"
        assert os_thread_name() == "before"

    assert on_a_thread("t", inside) == ["before"]


def names() -> list[str]:
    return [p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm") if p.exists()]


def test_onnxruntimes_threads_are_named_for_it_and_the_caller_keeps_its_name(tiny_model: Path) -> None:
    def load() -> None:
        set_os_thread_name("loader")
        before = names().count("onnxruntime")
        runner = Runner(tiny_model, device="cpu", threads=3)  # the caller and two pool threads
        assert names().count("onnxruntime") == before + 2
        del runner

    assert on_a_thread("t", load) == ["loader"]


def test_a_pipeline_built_for_the_cli_keeps_opencv_on_the_calling_thread_and_sets_the_gil_switch(
    tiny_model: Path,
) -> None:
    import cv2
    from prometheus_client import CollectorRegistry

    from polypstream.cli import build_pipeline
    from polypstream.config import EngineConfig

    cv2.setNumThreads(4)
    before = sys.getswitchinterval()
    try:
        build_pipeline(EngineConfig(model=str(tiny_model), device="cpu", gil_switch_ms=0.25), CollectorRegistry())
        assert cv2.getNumThreads() == 1
        assert sys.getswitchinterval() == 0.00025
    finally:
        sys.setswitchinterval(before)
