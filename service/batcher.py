"""Deadline-aware dynamic batching shared by every stream, live frames first.

A batch launches when it is full, when its oldest frame has waited `max_wait_s`, or when
waiting for one more frame would make the earliest deadline unreachable. It holds the live
frames, earliest deadline first, that can finish by the first one's deadline; the rest wait
for the next batch. Frames that can no longer meet their deadline even alone (and did not ask
for no-drop) are answered DROPPED_LATE;
a batch whose processing raises answers every frame in it with FAILED. No frame submitted
is ever left without an answer, including at shutdown (the queue is drained).

Live frames (droppable, with a deadline) come first, earliest deadline first. Offline
(no-drop) frames fill the rest of a batch, but only as many as keep its live frames within
their deadlines and add at most `offline_slice_s` to it; while live streams are active, a
batch of offline frames alone is kept to `offline_slice_s` too, so a live frame arriving
during it can still make its deadline. While live frames are being dropped, or finish with
less than a slice to spare (no capacity is left over), offline frames run one slice per pacing
interval at most, alone or in a live batch; the interval starts at `offline_interval_s`,
doubles while that pressure lasts and halves after each `live_window_s` without it, so the
offline share follows what live frames leave over. Whatever the live load, an offline frame
that has waited `offline_max_wait_s`, with no offline frame run for as long, takes a place in
the next batch: offline streams are slowed, never starved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .frames import Frame, Result, Status, unserved_result
from .threads import name_os_thread

logger = logging.getLogger(__name__)

ResultCallback = Callable[[Result], None]
STREAM_CLOSED = "stream closed before the frame was processed"


class QueueFullError(RuntimeError):
    """The batcher holds `capacity` frames already."""


class BatcherStoppedError(RuntimeError):
    """The batcher no longer accepts frames."""


@dataclass(frozen=True, eq=False)
class Queued:
    frame: Frame
    on_done: ResultCallback
    enqueued_at: float


ProcessBatch = Callable[[list[Queued], float], list[Result]]


class ServiceTimeEstimator:
    """Batch processing time per batch size: a moving average plus `spread` times the moving
    mean deviation (as TCP estimates its retransmission timeout), so that a frame admitted
    against its deadline rarely misses it. Sizes never seen are interpolated.

    No size is taken to cost more than its frames would in smaller batches of a measured size
    (a batch of n at most ceil(n/m) times a batch of m): one slow run of a size that is then no
    longer tried cannot keep that size's estimate, and every batch planned on it, high for good."""

    def __init__(self, alpha: float = 0.2, spread: float = 2.0) -> None:
        self.alpha = alpha
        self.spread = spread
        self._mean: dict[int, float] = {}
        self._deviation: dict[int, float] = {}
        self._lock = threading.Lock()

    def observe(self, batch_size: int, seconds: float) -> None:
        with self._lock:
            mean = self._mean.get(batch_size)
            if mean is None:
                self._mean[batch_size], self._deviation[batch_size] = seconds, 0.0
                return
            self._deviation[batch_size] += self.alpha * (abs(seconds - mean) - self._deviation[batch_size])
            self._mean[batch_size] = mean + self.alpha * (seconds - mean)

    def estimate(self, batch_size: int) -> float:
        with self._lock:
            return _per_size(batch_size, {n: m + self.spread * self._deviation[n] for n, m in self._mean.items()})


def _per_size(batch_size: int, known: dict[int, float]) -> float:
    """The time of a batch of `batch_size` given the times of measured sizes (0.0 when none):
    interpolated between sizes, extrapolated in proportion past them, and never more than
    ceil(batch_size / m) batches of a smaller measured size m."""
    if not known:
        return 0.0
    if batch_size in known:
        value = known[batch_size]
    else:
        lower = [s for s in known if s < batch_size]
        upper = [s for s in known if s > batch_size]
        if lower and upper:
            lo, hi = max(lower), min(upper)
            value = known[lo] + (batch_size - lo) / (hi - lo) * (known[hi] - known[lo])
        else:
            nearest = max(lower) if lower else min(upper)
            value = known[nearest] * batch_size / nearest
    pieces = [-(-batch_size // m) * known[m] for m in known if m < batch_size]
    return min([value, *pieces])


def _largest(limit: int, fits: Callable[[int], bool]) -> int:
    """The largest n in 0..limit with fits(n), for a `fits` that holds up to some n and not after."""
    n = 0
    while n < limit and fits(n + 1):
        n += 1
    return n


class Batcher:
    """A bounded queue of frames and the one worker thread that batches and processes them."""

    def __init__(
        self,
        process: ProcessBatch,
        *,
        max_batch: int,
        max_wait_s: float,
        capacity: int,
        estimator: ServiceTimeEstimator | None = None,
        launch_margin_s: float = 0.002,
        discard: Callable[[Frame], bool] | None = None,
        offline_slice_s: float = 0.010,
        offline_max_wait_s: float = 1.0,
        live_window_s: float = 1.0,
        offline_interval_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1 or capacity < 1:
            raise ValueError("max_batch and capacity must be at least 1")
        self._process = process
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self.estimator = estimator or ServiceTimeEstimator()
        # Launch this much before the last moment, so that thread wake-up jitter does not
        # turn a frame that could just make its deadline into a dropped one.
        self.launch_margin_s = launch_margin_s
        self._discard = discard  # frames nobody waits for any more (their stream closed)
        self.offline_slice_s = offline_slice_s
        self.offline_max_wait_s = offline_max_wait_s
        self.live_window_s = live_window_s  # live streams count as active this long after a live frame
        self._live_streams: dict[str, float] = {}  # stream key → when its last live frame came
        # While live frames are being dropped, or finish with less than a slice to spare, the
        # machine has no capacity left over: offline frames then run at most one slice per
        # pacing interval (slowed, not starved), which grows while the pressure lasts.
        self.offline_interval_s = offline_interval_s
        self.pacing_s = offline_interval_s
        self._paced_at = -float("inf")  # when the pacing interval last changed
        self._last_live_pressure_at = -float("inf")
        self._last_offline_at = -float("inf")
        self._clock = clock
        self._queue: deque[Queued] = deque()
        self._cond = threading.Condition()
        self._accepting = False
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    def open(self) -> None:
        """Accept frames (without a worker thread yet: tests take batches with `plan`)."""
        with self._cond:
            self._accepting = True

    def start(self) -> None:
        self.open()
        self._thread = threading.Thread(target=self._run, name="polypstream-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new frames, answer every queued one, then end the worker thread."""
        with self._cond:
            self._accepting = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, frame: Frame, on_done: ResultCallback) -> None:
        """Queue a frame; `on_done` is called exactly once, from the worker thread."""
        with self._cond:
            if not self._accepting:
                raise BatcherStoppedError("the server is shutting down")
            if len(self._queue) >= self.capacity:
                raise QueueFullError(f"inference queue full ({self.capacity} frames)")
            now = self._clock()
            self._queue.append(Queued(frame, on_done, now))
            if not frame.options.no_drop:
                self._live_streams[frame.stream_key] = now
            self._cond.notify()

    def launch_time(self) -> float:
        """When the batch at the head of the (non-empty) queue must start, given what is queued
        now: when its oldest frame has waited `max_wait_s`, or earlier if waiting for one more
        frame (a batch one larger) would miss the earliest deadline."""
        oldest = self._queue[0].enqueued_at
        earliest_deadline = min(q.frame.deadline for q in self._queue)
        grown = min(self.max_batch, len(self._queue) + 1)
        last_moment = earliest_deadline - self.estimator.estimate(grown) - self.launch_margin_s
        return min(oldest + self.max_wait_s, last_moment)

    def wait_s(self, now: float) -> float:
        """How long the worker waits before it takes a batch off the (non-empty) queue: 0 when
        one is due now (full, due by `launch_time`, or stopping)."""
        if not self._accepting:
            return 0.0
        if (
            len(self._queue) < self.max_batch
            and not self._every_stream_queued(now)
            and (wait := self.launch_time() - now) > 0
        ):
            return wait
        held = self._offline_held_until(now)
        if held > now and all(q.frame.options.no_drop for q in self._queue):
            return held - now
        return 0.0

    def _every_stream_queued(self, now: float) -> bool:
        """Whether every live stream heard from in the last `live_window_s` has a frame queued,
        and no offline frame is: then waiting for more frames could only delay this batch (a
        stream's next frame comes a frame interval later: 40 ms at 25 fps, against `max_wait_s`)."""
        queued = set()
        for q in self._queue:
            if q.frame.options.no_drop:
                return False
            queued.add(q.frame.stream_key)
        return all(key in queued for key in self._live_since(now))

    def _live_since(self, now: float) -> list[str]:
        """The live streams heard from in the last `live_window_s`."""
        return [key for key, at in self._live_streams.items() if now - at <= self.live_window_s]

    def _next_batch(self) -> tuple[list[Queued], list[Queued], list[Queued]] | None:
        """Block until a batch is due: (batch, late, discarded), or None when stopped and empty."""
        with self._cond:
            while True:
                if not self._queue:
                    if not self._accepting:
                        return None
                    self._cond.wait()
                    continue
                now = self._clock()
                wait = self.wait_s(now)
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                return self.plan(now)

    def plan(self, now: float) -> tuple[list[Queued], list[Queued], list[Queued]]:
        """Take the next batch off the queue: (batch, late, discarded); the worker calls it
        with the lock held when a batch is due."""
        hopeless = self._take_hopeless(now)
        self._live_streams = {key: self._live_streams[key] for key in self._live_since(now)}  # forget the quiet
        discarded = [q for q in self._queue if self._discard is not None and self._discard(q.frame)]
        closed = set(map(id, discarded))
        waiting = [q for q in self._queue if id(q) not in closed]
        live = sorted((q for q in waiting if not q.frame.options.no_drop), key=lambda q: q.frame.deadline)
        offline = [q for q in waiting if q.frame.options.no_drop]  # in arrival order
        batch = self._fitting(live[: self.max_batch], now)
        # Starving: an offline frame has waited offline_max_wait_s and none has run for as long.
        # It then takes a place even from a live frame, once per offline_max_wait_s at most.
        starving = (
            bool(offline)
            and now - offline[0].enqueued_at >= self.offline_max_wait_s
            and now - self._last_offline_at >= self.offline_max_wait_s
        )
        if starving and len(batch) == self.max_batch:
            batch.pop()  # the live frame with the latest deadline waits for the next batch
        taken = self._offline_share(batch, min(len(offline), self.max_batch - len(batch)), now)
        chosen = offline[: max(taken, 1) if starving else taken]
        batch += chosen
        if chosen:
            self._last_offline_at = now
        self._adapt_pacing(now, pressed=bool(hopeless or self._tight(batch, now)))
        gone = set(map(id, batch)) | closed
        self._queue = deque(q for q in self._queue if id(q) not in gone)
        return batch, hopeless, discarded

    def _tight(self, batch: list[Queued], now: float) -> bool:
        """Whether a live frame of this batch will finish with less than a slice to spare."""
        live = [q.frame.deadline for q in batch if not q.frame.options.no_drop]
        return bool(live) and min(live) - (now + self.estimator.estimate(len(batch))) < self.offline_slice_s

    def _adapt_pacing(self, now: float, pressed: bool) -> None:
        """While live frames are pressed, double the pacing interval (up to `offline_max_wait_s`)
        once per interval, the first interval of an episode kept; halve it (down to
        `offline_interval_s`) once per `live_window_s` without pressure."""
        if pressed:
            if now - self._last_live_pressure_at > self.live_window_s:  # a new episode
                self._paced_at = now
            elif now - self._paced_at >= self.pacing_s:
                self.pacing_s = min(self.offline_max_wait_s, self.pacing_s * 2)
                self._paced_at = now
            self._last_live_pressure_at = now
        elif now - max(self._paced_at, self._last_live_pressure_at) >= self.live_window_s:
            self.pacing_s = max(self.offline_interval_s, self.pacing_s / 2)
            self._paced_at = now

    def _offline_held_until(self, now: float) -> float:
        """Until when offline frames wait, live frames having been dropped (or nearly) lately."""
        if now - self._last_live_pressure_at > self.live_window_s:
            return now
        return self._last_offline_at + self.pacing_s

    def _offline_share(self, live: list[Queued], room: int, now: float) -> int:
        """How many of `room` offline frames may join a batch holding these live frames."""
        if room <= 0:
            return 0
        if self._offline_held_until(now) > now:  # no capacity left over lately: paced
            return 0
        if live:  # as many as keep the batch's live frames within their deadlines, adding at most a slice
            deadline = min(q.frame.deadline for q in live) - self.launch_margin_s
            alone = self.estimator.estimate(len(live))

            def fits(n: int) -> bool:
                grown = self.estimator.estimate(len(live) + n)
                return now + grown <= deadline and grown - alone <= self.offline_slice_s

            return _largest(room, fits)
        if self._live_since(now):  # room for a live frame arriving meanwhile
            return max(1, _largest(room, lambda n: self.estimator.estimate(n) <= self.offline_slice_s))
        return room

    def _take_hopeless(self, now: float) -> list[Queued]:
        """Remove, from anywhere in the queue, the droppable frames that would miss their
        deadline even in a batch of one. Latest frame wins: if that is every live frame
        queued, the freshest stays, so its stream still gets results and the time estimate
        stays current (a batcher that only drops never measures again, and drops from then on)."""
        one = self.estimator.estimate(1)
        live = [q for q in self._queue if not q.frame.options.no_drop]
        hopeless = [q for q in live if now + one > q.frame.deadline]
        if not hopeless:
            return []
        if len(hopeless) == len(live):
            hopeless.remove(max(hopeless, key=lambda q: q.frame.received_at))
        doomed = set(map(id, hopeless))
        self._queue = deque(q for q in self._queue if id(q) not in doomed)
        return hopeless

    def _fitting(self, live: list[Queued], now: float) -> list[Queued]:
        """The live frames (earliest deadline first) that go in this batch: the most that, on the
        cautious estimate, finish by the first one's deadline, and at least that one. The rest
        wait for the next batch; none is dropped for a batch it could have been left out of."""
        if not live:
            return []
        deadline = live[0].frame.deadline
        return live[: max(1, _largest(len(live), lambda n: now + self.estimator.estimate(n) <= deadline))]

    def _run(self) -> None:
        name_os_thread()
        while (work := self._next_batch()) is not None:
            batch, late, discarded = work
            now = self._clock()
            for queued in late:
                error = self._why_late(queued.frame, now)
                self._answer(queued, unserved_result(queued.frame, Status.DROPPED_LATE, error, now, queued.enqueued_at))
            for queued in discarded:
                self._answer(
                    queued, unserved_result(queued.frame, Status.FAILED, STREAM_CLOSED, now, queued.enqueued_at)
                )
            if not batch:
                continue
            started = self._clock()
            try:
                results = self._process(batch, started)
                if len(results) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} produced {len(results)} results")
            except Exception as exc:
                logger.exception("batch of %d frames failed", len(batch))
                end = self._clock()
                results = [
                    unserved_result(q.frame, Status.FAILED, f"inference failed: {exc}", end, q.enqueued_at)
                    for q in batch
                ]
            else:
                self.estimator.observe(len(batch), self._clock() - started)
            for queued, result in zip(batch, results, strict=True):
                self._answer(queued, result)

    def _why_late(self, frame: Frame, now: float) -> str:
        if now >= frame.deadline:
            return f"missed its deadline by {(now - frame.deadline) * 1e3:.1f} ms before inference"
        return (
            f"would miss its deadline: due in {(frame.deadline - now) * 1e3:.1f} ms, "
            f"a batch of one may take {self.estimator.estimate(1) * 1e3:.1f} ms"
        )

    def _answer(self, queued: Queued, result: Result) -> None:
        try:
            queued.on_done(result)
        except Exception:
            logger.exception("result callback failed for %s#%d", result.stream_id, result.index)
