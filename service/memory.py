"""What frames may hold in the server: a byte budget per stream and for all streams together.

A client stream reserves a frame's peak cost (its message, decoded pixels, model input and
the mask and overlay it asked for) before the frame is accepted, and gives it back when the
frame's answer has been handed to gRPC or the stream ends. A stream over its share, or a
server over its total, stops reading frames until answers have gone out: the client gets
gRPC flow control, the server a bound. Runs on the event loop only (no locks).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
from collections import deque
from dataclasses import dataclass

from .config import MIB

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Waiter:
    key: str
    nbytes: int
    ready: asyncio.Future[None]


class MemoryBudget:
    """Bytes held by frames, at most `limit` in all and `per_stream` per stream.

    A stream holding nothing may always take one frame that fits the total (a frame costing
    more than `per_stream` is counted as `per_stream`, so every frame can be admitted). The
    total is granted in arrival order: a large frame is not overtaken forever by small ones.
    """

    def __init__(self, limit: int, per_stream: int) -> None:
        if per_stream < 1 or limit < per_stream:
            raise ValueError(f"memory limits must satisfy 1 <= per stream ({per_stream}) <= total ({limit})")
        self.limit = limit
        self.per_stream = per_stream
        self.held = 0
        self._by_stream: dict[str, int] = {}
        self._waiters: deque[_Waiter] = deque()

    def held_by(self, key: str) -> int:
        return self._by_stream.get(key, 0)

    def _stream_fits(self, key: str, nbytes: int) -> bool:
        # A stream holding nothing always fits: `reserve` charges at most per_stream.
        return self._by_stream.get(key, 0) + nbytes <= self.per_stream

    def _total_fits(self, nbytes: int) -> bool:
        return self.held + nbytes <= self.limit

    def _take(self, key: str, nbytes: int) -> None:
        self.held += nbytes
        self._by_stream[key] = self._by_stream.get(key, 0) + nbytes

    async def reserve(self, key: str, nbytes: int) -> int:
        """Wait until `nbytes` fit for stream `key`, take them; returns the bytes taken."""
        nbytes = max(0, min(nbytes, self.per_stream))
        waiter = _Waiter(key, nbytes, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._grant()
        try:
            await waiter.ready
        except BaseException:
            if waiter.ready.done() and not waiter.ready.cancelled():
                self.release(key, nbytes)  # granted as it was cancelled: give it back
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
                self._grant()
            raise
        return nbytes

    def release(self, key: str, nbytes: int) -> None:
        """Give back `nbytes` of stream `key` and admit the waiters that now fit."""
        mine = self._by_stream.get(key, 0)
        nbytes = min(nbytes, mine)
        self.held -= nbytes
        if mine - nbytes > 0:
            self._by_stream[key] = mine - nbytes
        else:
            self._by_stream.pop(key, None)
        self._grant()

    def close_stream(self, key: str) -> None:
        """Stream `key` ended: give back everything it holds and cancel what it waits for."""
        for waiter in [w for w in self._waiters if w.key == key]:
            self._waiters.remove(waiter)
            waiter.ready.cancel()
        self.release(key, self._by_stream.get(key, 0))

    def _grant(self) -> None:
        # In order: a waiter blocked by the total blocks those behind it; one blocked only by
        # its own stream's share does not hold up the other streams.
        for waiter in list(self._waiters):
            if waiter.ready.done():
                continue
            if not self._total_fits(waiter.nbytes):
                break
            if self._stream_fits(waiter.key, waiter.nbytes):
                self._waiters.remove(waiter)
                self._take(waiter.key, waiter.nbytes)
                waiter.ready.set_result(None)


def release_freed_memory_promptly() -> None:
    """Make glibc give large freed buffers back to the system at once.

    glibc serves allocations above a threshold with their own mappings (returned on free),
    but raises that threshold up to 32 MiB after the first such free: frame-sized buffers
    then come from the heap, where a few live ones pin the rest, and a server that once held
    gigabytes for big frames keeps them after the streams end. A fixed 1 MiB threshold keeps
    every frame-sized buffer in its own mapping. No-op where the C library is not glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return
    m_mmap_threshold = -3  # from glibc's malloc.h
    if mallopt(m_mmap_threshold, MIB) != 1:
        logger.debug("mallopt(M_MMAP_THRESHOLD) refused; freed frame memory may be kept by the allocator")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, loaded once (find_library runs ldconfig: not for every stream's end)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim; no-op elsewhere)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
