"""What the operating system knows of the server's threads: their names, so that `top -H` and
`ps -L` say which part of the server uses the CPU (decode_0, render_1, batcher, onnxruntime…),
and their priority. Linux only (names and niceness are per thread there); elsewhere these do
nothing. Imports nothing of the package."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

BACKGROUND_NICE = 10  # how far below the rest pixel-heavy and offline work runs (Linux thread niceness)
PREFIX = "polypstream-"  # the package's Python thread names start with it; the OS names do not
OS_NAME_BYTES = 15  # what Linux keeps of a thread's name


def _comm() -> Path:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm")


def os_thread_name() -> str | None:
    """The calling thread's name as the OS shows it; None where it cannot be read."""
    if sys.platform != "linux":
        return None
    try:
        return _comm().read_bytes().decode(errors="replace").rstrip("\n")
    except OSError:
        return None


def set_os_thread_name(name: str) -> None:
    """Name the calling thread for the OS (cut to what Linux keeps, on a character's boundary)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):
        _comm().write_bytes(name.encode()[:OS_NAME_BYTES].decode(errors="ignore").encode())


def name_os_thread() -> None:
    """Give the calling thread its Python name, less the package prefix, in the OS too."""
    set_os_thread_name(threading.current_thread().name.removeprefix(PREFIX))


@contextlib.contextmanager
def os_thread_named(name: str) -> Iterator[None]:
    """Name the calling thread `name` meanwhile: threads started inside inherit it (onnxruntime's)."""
    before = os_thread_name()
    set_os_thread_name(name)
    try:
        yield
    finally:
        if before is not None:
            set_os_thread_name(before)


def lower_thread_priority(by: int = BACKGROUND_NICE) -> None:
    """Lower the calling thread's CPU priority, so that under contention it gets what the model
    and the light frames leave."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + by))


def background_worker() -> None:
    """Initializer of the pools whose work runs below the rest: named, then lowered."""
    name_os_thread()
    lower_thread_priority()
