"""Server-side sources (`serve --source NAME=URI`) and the fan-out of their results.

One capture thread per source reads frames, submits them to the pipeline (each frame is
decoded and segmented once, whoever watches) and publishes every Result to the Watch
subscribers. Each subscriber has a bounded queue: a slow one loses its oldest results
(counted), never stalls the source or the other subscribers.

Back-pressure: at most `inflight` frames of a source are in the pipeline at once. A file
source waits for a free slot (never skips); a live source (URL, device) skips the frame it
just read instead, so the pipeline always works on the freshest frames (counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .batcher import BatcherStoppedError, QueueFullError
from .capture import FrameSource, SourceError, is_live, open_source, redact_uri
from .frames import FrameOptions, Result
from .pipeline import Pipeline
from .threads import name_os_thread

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Subscription:
    """A Watch call's bounded queue of results; None marks the end of the source."""

    loop: asyncio.AbstractEventLoop
    options: FrameOptions
    queue: asyncio.Queue[Result | None] = field(default_factory=lambda: asyncio.Queue(64))
    dropped: int = 0

    def offer(self, item: Result | None) -> None:
        """Called on the subscriber's loop: enqueue, dropping the oldest result when full."""
        while self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(item)


class SourceHub:
    """One server-side source: its capture thread and its subscribers."""

    def __init__(
        self,
        name: str,
        uri: str,
        pipeline: Pipeline,
        *,
        realtime: bool = True,
        inflight: int = 4,
        frame_rate: float | None = None,
    ) -> None:
        """`frame_rate`: the source's rate as the operator says it (0: none), for a device that
        reports a wrong one; None: what the source says."""
        self.name = name
        self.uri = uri
        self.shown_uri = redact_uri(uri)  # what logs and ListSources show: no credentials
        self.pipeline = pipeline
        self.realtime = realtime
        self.live = is_live(uri)
        self.state = "idle"
        self.frames = 0  # submitted to the pipeline
        self.read = 0  # read from the source: submitted or skipped
        self.skipped = 0
        self.reconnects = 0
        self.error = ""
        self.stated_frame_rate = frame_rate
        self.frame_rate = frame_rate or 0.0  # the stated one, else the source's own once opened; 0: none
        self.backoff_s = 0.5
        self.max_backoff_s = 10.0
        self.inflight = inflight
        self._slots = threading.BoundedSemaphore(inflight)
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened: FrameSource | None = None  # opened by open(), played first by the capture thread
        # Results may finish out of order (masks and overlays are drawn on workers): they are
        # published in the order their frames were submitted.
        self._submitted: deque[int] = deque()
        self._finished: dict[int, Result] = {}
        self._order_lock = threading.Lock()
        self._metrics = pipeline.metrics

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def open(self) -> None:
        """Open the source now (a stream URL within its open timeout) and keep it for the
        capture thread, so a source that cannot be opened fails at start, naming its URI and
        why, and a stream that serves one client is not used up by a trial connection.

        Raises SourceError."""
        source = self._open_new()
        self._take_rate(source)
        with self._lock:
            previous, self._opened = self._opened, source
        if previous is not None:
            previous.close()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self.state = "starting"
            self._thread = threading.Thread(target=self._run, name=f"polypstream-source-{self.name}", daemon=True)
            self._thread.start()

    def stop_reading(self) -> None:
        """Read no more frames, without waiting: those in the pipeline are still answered and
        published, then the subscribers' streams end (the server is shutting down)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Told to stop (not ended by itself)."""
        return self._stop.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        unplayed = self._take_opened()
        if unplayed is not None:  # opened, never started (a file nobody watched)
            unplayed.close()

    def subscribe(self, loop: asyncio.AbstractEventLoop, options: FrameOptions) -> Subscription:
        """A new subscriber; a file source starts playing with its first subscriber."""
        subscription = Subscription(loop, options)
        with self._lock:
            ended = self.state in ("ended", "failed")
            if not ended:
                self._subscribers.add(subscription)
                self._metrics.subscribers.inc()
        if ended:
            subscription.offer(None)
        else:
            self.start()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.discard(subscription)
                self._metrics.subscribers.dec()
        if subscription.dropped:
            self._metrics.dropped.labels("slow_subscriber", self.name).inc(subscription.dropped)

    def _wanted_options(self, frame_rate: float) -> FrameOptions:
        with self._lock:
            subs = list(self._subscribers)
        masks = [s.options for s in subs if s.options.return_mask]
        return FrameOptions(
            return_mask=bool(masks),
            return_overlay=any(s.options.return_overlay for s in subs),
            no_drop=not self.live,
            # the frame's resolution if any subscriber wants that: the model's is then not made
            mask_at_model_resolution=bool(masks) and all(o.mask_at_model_resolution for o in masks),
            allow_view=True,  # the server's own sources are viewable (serve --ui)
            frame_rate=frame_rate,  # the alert rule is scaled to it
        )

    def _publish(self, item: Result | None) -> None:
        with self._lock:
            subs = list(self._subscribers)
        for sub in subs:
            with contextlib.suppress(RuntimeError):  # that subscriber's loop has closed
                sub.loop.call_soon_threadsafe(sub.offer, item)

    def _run(self) -> None:
        """Play the source; a live one that stops or cannot open is reopened with backoff."""
        name_os_thread()
        self.pipeline.open_stream(self.name)
        backoff = self.backoff_s
        while not self._stop.is_set():
            try:
                source = self._take_opened() or self._open_new()
            except SourceError as exc:
                self.error = str(exc).replace(self.uri, self.shown_uri)  # whoever wrote it, no credentials
                if not self.live:
                    logger.error("source %s: %s", self.name, self.error)
                    self.state = "failed"
                    self._finish()
                    return
                logger.warning("source %s: %s; retrying in %.1f s", self.name, self.error, backoff)
            else:
                self.state = "running"
                if self._pump(source):
                    backoff = self.backoff_s  # it delivered frames: start the backoff afresh
                if not self.live or self._stop.is_set():  # a file's end, or the server stopping it
                    break
                logger.warning("source %s stopped; reconnecting in %.1f s", self.name, backoff)
            if self._stop.wait(backoff):
                break
            self.state = "reconnecting"
            self.reconnects += 1
            self._metrics.source_reconnects.labels(self.name).inc()
            backoff = min(self.max_backoff_s, backoff * 2)
        # Wait until every submitted frame has been answered before ending the streams.
        for _ in range(self.inflight):
            self._slots.acquire(timeout=30)
        self.state = "ended"
        self._finish()

    def _take_rate(self, source: FrameSource) -> None:
        self.frame_rate = source.frame_rate if self.stated_frame_rate is None else self.stated_frame_rate

    def _open_new(self) -> FrameSource:
        return open_source(self.uri, realtime=self.realtime and not self.live)

    def _take_opened(self) -> FrameSource | None:
        with self._lock:
            source, self._opened = self._opened, None
        return source

    def _pump(self, source: FrameSource) -> bool:
        """Submit the source's frames until it ends or the hub stops; True if any frame came."""
        delivered = False
        self._take_rate(source)  # a reopened device may say another
        try:
            for captured in source:
                delivered = True
                index = self.read  # runs on across reconnects: one source, one sequence of frames
                self.read += 1
                if self._stop.is_set():
                    break
                if not self._take_slot():
                    continue
                frame = self.pipeline.make_frame(
                    self.name,
                    self.name,
                    index,
                    captured.image,
                    time.monotonic(),
                    options=self._wanted_options(self.frame_rate),
                )
                with self._order_lock:
                    self._submitted.append(index)
                try:
                    self.pipeline.submit(frame, self._on_result, origin=self.name)
                except (QueueFullError, BatcherStoppedError) as exc:
                    with self._order_lock:
                        self._submitted.pop()
                    self._slots.release()
                    logger.warning("source %s: frame %d not accepted: %s", self.name, index, exc)
                    if isinstance(exc, BatcherStoppedError):
                        self._stop.set()
                    continue
                self.frames += 1
        finally:
            source.close()
        return delivered

    def _take_slot(self) -> bool:
        """A pipeline slot: files wait for one; live sources skip the frame when none is free."""
        if self.live:
            if self._slots.acquire(blocking=False):
                return True
            self.skipped += 1
            self._metrics.dropped.labels("live_skip", self.name).inc()
            return False
        while not self._slots.acquire(timeout=0.5):
            if self._stop.is_set():
                return False
        return True

    def _on_result(self, result: Result) -> None:
        with self._order_lock:
            self._finished[result.index] = result
            while self._submitted and self._submitted[0] in self._finished:
                self._publish(self._finished.pop(self._submitted.popleft()))
        self._slots.release()

    def _finish(self) -> None:
        self._publish(None)
        self.pipeline.close_stream(self.name)
