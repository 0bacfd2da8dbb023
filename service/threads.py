"""What the operating system knows of the server's threads: their names, so that `top -H` and
`ps -L` say which part of the server uses the CPU (decode_0, render_1, batcher, onnxruntime…),
and their priority. Linux only (names and niceness are per thread there); elsewhere these do
nothing. How long the server's threads wait to run Python again (GilProbe), and OpenCV kept to
the thread that calls it. Imports nothing of the package."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
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


def opencv_on_the_calling_thread() -> None:
    """Have OpenCV run each call on the thread that makes it, not also on its own pool of a
    thread per core (a setting of the whole process).

    The server's pools already work on one frame per thread; OpenCV's pool on top was woken for
    every small call (connected regions, resizes) and spun between them: at 400 frames/s of a
    costless model on 2 cores that was 0.4 ms of CPU a frame, 13 % of the server's, for the same
    latency (benchmarks/README.md, "OpenCV's own threads")."""
    import cv2  # here: the rest of this module needs only the standard library

    cv2.setNumThreads(1)


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


class Probe:
    """A background thread, named `name` for the OS, that wakes every `interval_s` to sample
    something (`_loop`, in a subclass) until `stop`. `wait` and `clock` stand in for the real
    ones in tests; `wait` returns True when stopping."""

    name = "probe"

    def __init__(self, interval_s: float, wait: Callable[[float], bool] | None, clock: Callable[[], float]) -> None:
        self.interval_s, self._clock = interval_s, clock
        self._stopping = threading.Event()
        self._wait = wait or self._stopping.wait
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"{PREFIX}{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        name_os_thread()
        self._loop()

    def _loop(self) -> None:
        raise NotImplementedError


class GilProbe(Probe):
    """A thread that sleeps `interval_s` again and again and reports, each time, how much later
    than asked it ran Python again: the wait for the GIL (which every thread of the server takes
    to run Python, between its native calls) and, on a machine with no core free, for the CPU.

    A few tenths of a millisecond when the server has room; the GIL's switch interval
    (`--gil-switch-ms`) and more when Python work saturates one process, which then serves no
    faster however many cores or GPUs it has. Each of the server's Python steps pays that wait again (the batcher's
    post-processing makes several native calls per frame), so it shows why stages slow down."""

    name = "gil-probe"

    def __init__(
        self,
        observe: Callable[[float], None],
        interval_s: float = 0.01,
        *,
        wait: Callable[[float], bool] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__(interval_s, wait, clock)
        self.observe = observe

    def _loop(self) -> None:
        while not self._stopping.is_set():
            asked = self._clock() + self.interval_s
            if self._wait(self.interval_s):
                return
            self.observe(max(0.0, self._clock() - asked))
