"""What the live view (`serve --ui`) shows: per stream, its newest picture and recent timings.

The pipeline reports every result of a viewable stream here (`observe`) and, while a viewer is
ready for one, the picture it drew of a frame (`publish`: the overlay as JPEG, with its polyps).
Viewers take each stream's newest picture when they are ready (`next_pictures`): a slow viewer
skips pictures, never queues them; while no viewer is ready none is drawn, and no more than one
picture of a stream is drawn at a time (`claim_picture`).

Viewable: a server-side source always; a client stream only while its frames carry
`allow_view` (frames are patient data). Thread-safe: the pipeline's threads report, the web
server's threads read.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .frames import Polyp, Result, Status
from .stats import percentile

BUSY_S = 0.1  # a viewer sending for longer than this is stalled: no pictures are drawn for it
WINDOW_S = 5.0  # frame rate and latency percentiles are over this many recent seconds
MAX_NAME_CHARS = 64  # what the page shows of a client's stream id


@dataclass
class _Stream:
    key: str
    name: str
    first_seen: float
    recent: deque[tuple[float, float, bool]] = field(default_factory=deque)  # (when, server s, served)
    frames: int = 0
    dropped: int = 0  # answered DROPPED_LATE or FAILED
    last: dict[str, object] | None = None  # the newest served frame: index, size, polyps
    picture: Picture | None = None
    drawing: bool = False  # a picture of it is being drawn (claimed, not yet published)
    alerts: str | None = None  # its alert rule, at its frame rate


@dataclass(frozen=True)
class Picture:
    """A stream's frame as the view shows it: JPEG, and the polyps drawn on it (boxes in the
    picture's pixels). `seq` counts the stream's pictures."""

    key: str
    seq: int
    index: int
    jpeg: bytes
    polyps: tuple[Polyp, ...]
    held: tuple[Polyp, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.key,
            "index": self.index,
            "jpeg": base64.b64encode(self.jpeg).decode("ascii"),
            "polyps": [_polyp(p) for p in self.polyps],
            "held": [_polyp(p) for p in self.held],
        }


@dataclass(eq=False)
class Viewer:
    """One connection of the page: the picture of each stream it had last, and since when it
    is busy sending (None while it waits for pictures)."""

    seen: dict[str, int] = field(default_factory=dict)
    busy_since: float | None = None


def _polyp(p: Polyp) -> dict[str, object]:
    return {"track_id": p.track_id, "score": round(p.score, 3), "alerting": p.alerting, "box": list(p.box)}


class Source(Protocol):
    """What the view needs of a server-side source (a SourceHub)."""

    @property
    def state(self) -> str: ...  # idle, starting, running, reconnecting, ended, failed

    def start(self) -> None: ...  # play it (a file source plays once someone watches)


class ViewHub:
    """The live view's state. `sources` are the server-side sources by name: listed before they
    play, and started when a viewer joins."""

    def __init__(
        self,
        model: Mapping[str, object],
        sources: Mapping[str, Source] | None = None,
        *,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        gpu: Callable[[], Mapping[str, object] | None] | None = None,
    ) -> None:
        """`gpu`: the GPU's newest reading, where the model runs on one (Pipeline.gpu_state)."""
        self.model = dict(model)
        self.gpu = gpu
        self.sources = dict(sources or {})
        self.window_s = window_s
        self.clock = clock
        self._streams: dict[str, _Stream] = {}
        self._viewers: set[Viewer] = set()
        self._changed = threading.Condition()
        self.closed = False

    # --- from the pipeline -----------------------------------------------------------------

    def claim_picture(self, key: str) -> bool:
        """Whether to draw a picture of stream `key` now: it is on the view, a viewer is ready
        for one, and no picture of it is being drawn. True claims the drawing until `publish`
        (or `unclaim` when it fails): one picture per stream is drawn at a time, so however slow
        drawing gets (it runs below everything else), no more is asked for than a viewer takes."""
        with self._changed:
            stream = self._streams.get(key)
            if stream is None or stream.drawing or not self._ready():
                return False
            stream.drawing = True
            return True

    def unclaim(self, key: str) -> None:
        """A claimed picture of stream `key` will not be published (drawing it failed)."""
        with self._changed:
            stream = self._streams.get(key)
            if stream is not None:
                stream.drawing = False

    def ready(self) -> bool:
        """Whether a viewer is ready for new pictures: waiting, or busy sending for less than
        BUSY_S (one whose sending stalls is skipped)."""
        with self._changed:
            return self._ready()

    def _ready(self) -> bool:
        now = self.clock()
        return any(v.busy_since is None or now - v.busy_since < BUSY_S for v in self._viewers)

    def observe(self, key: str, stream_id: str, result: Result, viewable: bool, *, alerts: str | None = None) -> None:
        """Count a stream's result; `alerts`: the stream's alert rule in words, at its frame rate
        (the server's scaled to it, or its own). A result of a frame that may not be viewed takes a
        client stream off the view at once (its overlay and statistics are forgotten)."""
        if not viewable and key not in self.sources:
            self.forget(key)
            return
        now = self.clock()
        with self._changed:
            stream = self._streams.get(key)
            if stream is None:
                name = stream_id if len(stream_id) <= MAX_NAME_CHARS else stream_id[:MAX_NAME_CHARS] + "…"
                stream = self._streams[key] = _Stream(key, name, now)
            stream.frames += 1
            stream.alerts = alerts or stream.alerts
            served = result.status is Status.OK
            if result.status in (Status.DROPPED_LATE, Status.FAILED):
                stream.dropped += 1
            if served:
                stream.last = {
                    "index": result.index,
                    "width": result.width,
                    "height": result.height,
                    "polyps": [_polyp(p) for p in result.polyps],
                    "held": [_polyp(p) for p in result.held],
                }
            stream.recent.append((now, result.timing.server_s, served))
            self._trim(stream, now)

    def publish(self, key: str, index: int, jpeg: bytes, polyps: tuple[Polyp, ...], held: tuple[Polyp, ...]) -> None:
        """The newest picture of stream `key`: frame `index` drawn as JPEG, with the polyps drawn
        on it (in the picture's pixels); viewers take it."""
        with self._changed:
            stream = self._streams.get(key)
            if stream is None:
                return
            stream.drawing = False
            seq = stream.picture.seq + 1 if stream.picture is not None else 1
            stream.picture = Picture(key, seq, index, jpeg, polyps, held)
            self._changed.notify_all()

    def forget(self, key: str) -> None:
        """A client stream ended (or stopped allowing the view): off the page, its viewers end.
        A source stays listed with its last state."""
        with self._changed:
            if key not in self.sources and self._streams.pop(key, None) is not None:
                self._changed.notify_all()

    # --- for viewers -------------------------------------------------------------------------

    def join(self) -> Viewer:
        """A new viewer (a page's connection); `leave` it when the connection ends."""
        viewer = Viewer()
        with self._changed:
            self._viewers.add(viewer)
        for source in self.sources.values():
            source.start()
        return viewer

    @property
    def viewers(self) -> int:
        """Pages connected now."""
        with self._changed:
            return len(self._viewers)

    def leave(self, viewer: Viewer) -> None:
        with self._changed:
            self._viewers.discard(viewer)

    def next_pictures(self, viewer: Viewer, timeout_s: float) -> list[Picture] | None:
        """Each stream's newest picture that `viewer` has not had, waiting up to `timeout_s` for
        one ([] on timeout); None once the hub is closed. From the return until the viewer's
        next call it counts as busy sending them."""
        deadline = self.clock() + timeout_s
        with self._changed:
            viewer.busy_since = None
            try:
                while not self.closed:
                    fresh = [
                        s.picture
                        for s in self._streams.values()
                        if s.picture is not None and s.picture.seq > viewer.seen.get(s.key, 0)
                    ]
                    left = deadline - self.clock()
                    if fresh or left <= 0:
                        viewer.seen.update((p.key, p.seq) for p in fresh)
                        viewer.seen = {k: v for k, v in viewer.seen.items() if k in self._streams}
                        return fresh
                    self._changed.wait(left)
                return None
            finally:
                viewer.busy_since = self.clock()

    def close(self) -> None:
        """Wake every viewer and end it (the server is stopping)."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def snapshot(self) -> dict[str, object]:
        """The page's state: the model and, per viewable stream, its rate, latency, drops, alert
        rule and the polyps of its newest served frame."""
        now = self.clock()
        with self._changed:
            streams = [self._describe(stream, now) for stream in self._streams.values()]
            seen = set(self._streams)
        for name in self.sources:
            if name not in seen:
                streams.append(self._describe(_Stream(name, name, now), now))
        streams.sort(key=lambda s: (s["kind"] != "source", str(s["name"])))
        gpu = None if self.gpu is None else self.gpu()
        return {"model": self.model, "gpu": gpu, "window_s": self.window_s, "streams": streams}

    def _describe(self, stream: _Stream, now: float) -> dict[str, object]:
        self._trim(stream, now)
        served_ms = [server_s * 1e3 for _, server_s, served in stream.recent if served]
        # over the window, or the stream's life while shorter; unknown in its first second
        span = min(self.window_s, now - stream.first_seen)
        source = self.sources.get(stream.key)
        return {
            "id": stream.key,
            "name": stream.name,
            "kind": "source" if source is not None else "client",
            "state": source.state if source is not None else "streaming",
            "fps": round(len(served_ms) / span, 2) if span >= 1.0 else None,
            "p50_ms": percentile(served_ms, 50, 2),
            "p99_ms": percentile(served_ms, 99, 2),
            "frames": stream.frames,
            "dropped": stream.dropped,
            "dropped_recent": sum(not served for _, _, served in stream.recent),
            "last": stream.last,
            "alerts": stream.alerts,
        }

    def _trim(self, stream: _Stream, now: float) -> None:
        while stream.recent and stream.recent[0][0] < now - self.window_s:
            stream.recent.popleft()
