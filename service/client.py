"""Typed Python client of polypstream.v1.Segmenter, used by the CLI, tests and benchmarks."""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._proto.polypstream.v1 import segmenter_pb2 as pb
from ._proto.polypstream.v1 import segmenter_pb2_grpc as pb_grpc
from .capture import DEFAULT_FPS, CapturedFrame
from .frames import FrameOptions
from .wire import options_to_proto

FINISH_FRAME_S = 5.0  # how long a call that is over waits for the frame being made (see segment)
RETRY_PAUSE_S = 0.2  # between calls refused at once (a draining server still takes connections)
FRESH_POLL_S = 0.05  # how long a keep_up stream waits for its source's next frame before looking again
# A keep_up stream's frames in flight (sent, not answered): its video over the shortest send →
# answer time seen on the stream (its round trip, with one frame's transfer) and 0.2 s more, at
# least 4 frames: a link slower than the video has frames skipped instead of piling up.
LIVE_IN_FLIGHT, LIVE_IN_FLIGHT_S = 4, 0.2
LIVE_KEPT = 4  # a keep_up stream's frames read and not yet sent, at most (each no older than LIVE_IN_FLIGHT_S)
# gRPC tries a server that went away again after 1 s, then ever longer, up to 120 s apart: a
# restarted server would be found seconds (or minutes) late. From 0.1 s, at most 1 s apart.
INITIAL_RECONNECT_BACKOFF_MS, MAX_RECONNECT_BACKOFF_MS = 100, 1000
# How a call ends when its server goes away: UNAVAILABLE (draining, restarting, the connection
# lost), or CANCELLED for a call the server had not yet handed to its handler when it stopped
# (gRPC's own doing: grpc/grpc#41785). Neither is the client's doing unless it cancelled.
SERVER_GONE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
STATUS_NAMES = {value: name.removeprefix("FRAME_STATUS_") for name, value in pb.FrameStatus.items()}


@dataclass(frozen=True)
class Watched:
    """One FrameResult of a server-side source (`Watch`): no frame was sent, so no round trip."""

    result: pb.FrameResult

    @property
    def status(self) -> str:
        return STATUS_NAMES.get(self.result.status, str(self.result.status))

    @property
    def alerts_started(self) -> int:
        return sum(e.kind == pb.AlertEvent.KIND_START for e in self.result.alert_events)

    def to_json(self) -> dict[str, object]:
        """The JSONL line the CLI writes: FrameResult in snake_case, boxes as [x, y, w, h]."""
        return _result_json(self.result, self.status, None)


@dataclass(frozen=True)
class Answer(Watched):
    """One FrameResult of a `Segment` stream with the client-side round trip (send → receive) in seconds."""

    latency_s: float

    def to_json(self) -> dict[str, object]:
        return _result_json(self.result, self.status, self.latency_s)


def _result_json(r: pb.FrameResult, status: str, latency_s: float | None) -> dict[str, object]:
    line: dict[str, object] = {
        "stream_id": r.stream_id,
        "index": r.index,
        "status": status,
        "polyps": [_polyp_json(p) for p in r.polyps],
    }
    if latency_s is not None:
        line["latency_ms"] = round(latency_s * 1e3, 3)
    line |= {
        "timing_ms": {
            "decode": round(r.timing.decode_ms, 3),
            "queue": round(r.timing.queue_ms, 3),
            "inference": round(r.timing.inference_ms, 3),
            "postprocess": round(r.timing.postprocess_ms, 3),
            "server": round(r.timing.server_ms, 3),
        },
        "batch_size": r.timing.batch_size,
        "width": r.width,
        "height": r.height,
    }
    if r.held:
        line["held"] = [_polyp_json(p) for p in r.held]
    if r.alert_events:
        line["alert_events"] = [
            {"track_id": e.track_id, "kind": pb.AlertEvent.Kind.Name(e.kind).removeprefix("KIND_").lower()}
            for e in r.alert_events
        ]
    if r.error:
        line["error"] = r.error
    return line


class Watch:
    """A `Watch` call: iterating it yields the source's results in order until the source ends
    (or raises grpc.RpcError: the source failed, the server shut down, the call was cancelled).
    `cancel()` ends it from any thread, or from a signal handler."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[Watched]:
        for result in self._call:
            yield Watched(result)

    def cancel(self) -> None:
        self._call.cancel()


def _polyp_json(p: pb.Polyp) -> dict[str, object]:
    return {
        "box": [p.box.x, p.box.y, p.box.width, p.box.height],
        "score": round(p.score, 4),
        "area": p.area,
        "track_id": p.track_id,
        "alerting": p.alerting,
    }


def encode_frame(
    image: np.ndarray, stream_id: str, index: int, options: FrameOptions, *, jpeg_quality: int = 90
) -> pb.Frame:
    """A protobuf Frame carrying a BGR image as JPEG."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ValueError("cannot JPEG-encode frame")
    return pb.Frame(
        stream_id=stream_id,
        index=index,
        encoded=data.tobytes(),
        client_time_ns=time.time_ns(),
        options=options_to_proto(options),
    )


class SegmenterClient:
    """A blocking client over one channel; `segment` streams frames and yields answers in order."""

    def __init__(
        self,
        address: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        max_message_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.address = address
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A dns:/// target naming several replicas (a headless Service) spreads calls over them.
            ("grpc.lb_policy_name", "round_robin"),
            # A connection of its own, as a separate client has: gRPC would otherwise share one TCP
            # connection among the channels of a process to the same address, and the kernel
            # spreads connections, not streams, over the workers of `serve --workers`.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ]
        if credentials is not None:
            self.channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.SegmenterStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until the channel is connected; grpc.FutureTimeoutError after `timeout` s."""
        ready = grpc.channel_ready_future(self.channel)
        try:
            ready.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            self.stop_watching(ready)
            raise

    def stop_watching(self, connecting: Connecting) -> None:
        """Cancel a wait for the channel and let gRPC's thread that polls its state end (within
        about 0.4 s): a channel closed under that thread makes it print a traceback ("Cannot
        invoke RPC: Channel closed!", grpc/grpc#18995) after the CLI's one line saying no server
        answered. Its state is private to gRPC: where it is not found, nothing is waited for."""
        connecting.cancel()
        state = getattr(self.channel, "_connectivity_state", None)
        deadline = time.monotonic() + 1.0
        while getattr(state, "polling", False) and time.monotonic() < deadline:
            time.sleep(0.02)

    def connected(self) -> Connecting:
        """A future done once the channel is connected (connecting now if it is not)."""
        return grpc.channel_ready_future(self.channel)

    def health(self, service: str = "polypstream.v1.Segmenter", timeout: float = 5.0) -> str:
        """The grpc.health.v1 status name of `service` (SERVING, NOT_SERVING, ...)."""
        response = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def model_info(self) -> pb.ModelInfo:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=self.metadata)

    def sources(self, timeout: float | None = None) -> list[pb.SourceInfo]:
        """The server's own sources (`serve --source`), which `watch` subscribes to."""
        return list(self.stub.ListSources(pb.ListSourcesRequest(), metadata=self.metadata, timeout=timeout).sources)

    def watch(self, source: str, options: FrameOptions | None = None) -> Watch:
        """Subscribe to a server-side source's results: masks and overlays as `options` ask."""
        request = pb.WatchRequest(source=source, options=options_to_proto(options or FrameOptions()))
        return Watch(self.stub.Watch(request, metadata=self.metadata))

    def segment(self, frames: Iterable[pb.Frame]) -> Iterator[Answer]:
        """Send every frame on one Segment stream; yield one Answer per frame, in order.

        gRPC takes the frames from `frames` on a thread of its own. Once the call is over (every
        answer in, failed, or given up on), that thread starts no other frame, and the one it
        is making (reading a video, encoding: OpenCV's and FFmpeg's native code) is waited for,
        up to FINISH_FRAME_S: a thread left inside native code when the interpreter exits aborts
        the process ("FATAL: exception not rethrown", exit 134)."""
        sent: queue.SimpleQueue[float] = queue.SimpleQueue()
        error: list[BaseException] = []
        over = threading.Event()
        making = threading.Lock()  # held while the next frame is made

        def requests() -> Iterator[pb.Frame]:
            iterator = iter(frames)
            try:
                while True:
                    with making:  # `over` read under the lock: once the call has waited, no frame starts
                        if over.is_set():
                            return
                        frame = next(iterator, None)
                    if frame is None:
                        return
                    sent.put(time.perf_counter())
                    yield frame
            except BaseException as exc:  # surfaced to the caller below, not lost in gRPC's thread
                error.append(exc)
                raise

        try:
            for result in self.stub.Segment(requests(), metadata=self.metadata):
                yield Answer(result, time.perf_counter() - sent.get())
        finally:
            over.set()
            if making.acquire(timeout=FINISH_FRAME_S):
                making.release()
        if error:
            raise error[0]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SegmenterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Connecting(Protocol):
    """What `SegmenterClient.connected` returns (a grpc.Future)."""

    def done(self) -> bool: ...

    def cancel(self) -> bool: ...


class Stream:
    """The frames of one video sent on `Segment` calls, carried over a server that goes away.

    A call that ends with its server gone (SERVER_GONE: it drained on SIGTERM or a rolling
    update, restarted, or the connection broke) is followed by a new call with the same stream_id
    on the same channel (the restarted server, or another replica behind a dns:/// name), tried for up to
    `reconnect_s` seconds until one answers; past that, or with `reconnect_s` 0, the call's
    error is raised. What becomes of the frames of the gap depends on the stream:
    - no_drop (a file): the frames sent but not answered are sent again, first: nothing is lost;
    - live: late frames are worthless, so those sent but not answered are `lost`, and those the
      source delivers while no call is open are read at its pace and not sent (`unsent`).
    Iterating yields (frame sent, answer) pairs, one per frame answered, in the source's order. Each
    call starts the server's alert state anew: a polyp in view earns its alert again.
    `stop` (Ctrl-C) ends a wait for the server at once; `report` is told, in words, when a call
    ends and a new one is sought, and when one answers again.

    `keep_up` (a live stream whose source makes frames at its own pace: a camera, a file played
    at its rate) reads the source on a thread of its own and keeps the frames the call has not
    yet taken while they are fresh (_Fresh), with at most a round trip and LIVE_IN_FLIGHT_S of
    video in flight (`in_flight_bound`): a
    call that takes frames more slowly than the source makes them (a slow link, a server that
    stops reading) has the frames that aged out `skipped`, instead of their piling up in the
    source's and the network's buffers and every result coming later than the one before (a
    1080p25 stream over a 20 Mbit/s link: 7 s late after 20 s, and growing). Without it the
    source is read as the call takes frames (a file sent flat out)."""

    def __init__(
        self,
        client: SegmenterClient,
        frames: Iterable[CapturedFrame],
        stream_id: str,
        options: FrameOptions,
        *,
        reconnect_s: float = 0.0,
        stop: threading.Event | None = None,
        report: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        keep_up: bool = False,
    ) -> None:
        self._client, self._source = client, iter(frames)
        self._stream_id, self._options = stream_id, options
        self._reconnect_s, self._stop = reconnect_s, stop or threading.Event()
        self._outage = _Outage(client, reconnect_s, report, clock, "stream", self._stop, self._meanwhile)
        self._lock = threading.Lock()  # the source is read by one call's gRPC thread, or while waiting
        self._fresh = _Fresh(self._source, clock) if keep_up and not options.no_drop else None
        self._room = threading.Condition()  # a keep_up call's frame answered: room for another in flight
        self._fps = options.frame_rate or DEFAULT_FPS
        self._shortest_s: float | None = None  # the shortest send → answer time seen on this stream
        self._resend: deque[pb.Frame] = deque()
        self._source_ended = False
        self.sent = 0  # frames of the source handed to a call (a frame sent again counts once)
        self.lost = 0  # live: frames sent on a call that ended before answering them
        self.unsent = 0  # live: frames the source delivered while no call was open
        self.skipped = 0  # keep_up: frames that aged out unsent while a call was open (it took frames too slowly)
        self.resent = 0  # no_drop: frames sent again on a new call

    @property
    def reconnects(self) -> int:
        """Calls that answered after one had ended with its server gone."""
        return self._outage.reconnects

    def __iter__(self) -> Iterator[tuple[pb.Frame, Answer]]:
        if self._fresh is not None:
            self._fresh.start()
        try:
            yield from self._calls()
        finally:
            if self._fresh is not None:
                self._fresh.close()  # its thread reads the source no more

    def _calls(self) -> Iterator[tuple[pb.Frame, Answer]]:
        while True:
            pending: deque[pb.Frame] = deque()  # handed to this call, not answered yet
            closed = threading.Event()
            try:
                for answer in self._client.segment(self._feed(pending, closed)):
                    with self._room:
                        frame = pending.popleft()  # answers come in the order the frames went
                        if self._shortest_s is None or answer.latency_s < self._shortest_s:
                            self._shortest_s = answer.latency_s
                        self._room.notify_all()
                    self._outage.answered()
                    yield frame, answer
                return
            except grpc.RpcError as exc:
                with self._lock:  # the call's thread makes no frame after this
                    closed.set()
                    unanswered = list(pending)
                if exc.code() not in SERVER_GONE or self._reconnect_s <= 0 or self._stop.is_set():
                    raise
                if self._options.no_drop:
                    self._resend.extendleft(reversed(unanswered))
                    if self._source_ended and not self._resend:
                        return  # every frame was answered: the call ended after the last one
                else:
                    self.lost += len(unanswered)
                if not self._outage.seek_server(self._outage_words(exc, len(unanswered))):
                    if self._stop.is_set() or (self._source_ended and not self._resend):
                        return  # Ctrl-C, or a live source that ended while no server answered
                    raise  # frames of a no-drop stream are left unanswered
                if self._fresh is not None:  # frames dropped while no call was open were not sent for that
                    self.unsent += self._fresh.forget_dropped()

    def _feed(self, pending: deque[pb.Frame], closed: threading.Event) -> Iterator[pb.Frame]:
        """One call's frames: those to send again, then the source's (JPEG-encoded here); each
        noted as pending. Kept encoded: a decoded 1080p frame is 6 MB, and a no-drop stream has
        tens of frames in flight (59 measured at 1080p)."""
        while True:
            if self._fresh is not None and not self._room_in(pending, closed):
                if closed.is_set():
                    return
                continue
            kept, dropped = self._fresh.take(FRESH_POLL_S) if self._fresh is not None else (None, 0)
            with self._lock:
                if closed.is_set():
                    self.unsent += (kept is not None) + dropped
                    return
                if self._resend:
                    frame = self._resend.popleft()
                    frame.client_time_ns = time.time_ns()
                    self.resent += 1
                else:
                    self.skipped += dropped
                    fresh = kept if self._fresh is not None else next(self._source, None)
                    if fresh is None:
                        if self._fresh is not None and not self._fresh.ended:
                            continue  # no new frame yet
                        self._source_ended = True
                        return
                    frame = encode_frame(fresh.image, self._stream_id, fresh.index, self._options)
                    self.sent += 1
                pending.append(frame)
            yield frame

    def _room_in(self, pending: deque[pb.Frame], closed: threading.Event) -> bool:
        """Whether a keep_up call may have one more frame in flight, after waiting a little for an
        answer. Bounded, so that a slow link makes frames skipped, not late: gRPC and the network
        buffer megabytes (a 1080p25 stream over a 20 Mbit/s link, a frame sent whenever gRPC took
        one: its results 2 s late)."""
        with self._room:
            bound = self.in_flight_bound()
            return self._room.wait_for(lambda: len(pending) < bound or closed.is_set(), FRESH_POLL_S) and (
                not closed.is_set()
            )

    def in_flight_bound(self) -> int:
        """A keep_up call's frames in flight, at most: the video of the shortest send → answer time
        seen (a round trip with one frame's transfer: 0.48 s over a 300 ms round trip, where a fixed
        0.2 s skipped 136 of 375 frames the link could carry) and LIVE_IN_FLIGHT_S more; at least
        LIVE_IN_FLIGHT."""
        seen = self._shortest_s or 0.0
        return max(LIVE_IN_FLIGHT, math.ceil(self._fps * (LIVE_IN_FLIGHT_S + seen) - 1e-9))

    def _meanwhile(self) -> bool:
        """Between looks for the server: a live source's frame is read (not sent); False once it ends."""
        if self._options.no_drop:
            self._stop.wait(0.05)
            return True
        if self._fresh is not None:
            kept, dropped = self._fresh.take(FRESH_POLL_S)
            ended = kept is None and self._fresh.ended
        else:
            with self._lock:
                kept, dropped = next(self._source, None), 0
            ended = kept is None
        with self._lock:
            self.unsent += (kept is not None) + dropped
        if ended:
            self._source_ended = True
            return False
        return True

    def _outage_words(self, exc: grpc.RpcError, unanswered: int) -> str:
        frames = f"{unanswered} frame{'s' * (unanswered != 1)} sent and not answered"
        what = (
            f"the {frames} will be sent again"
            if self._options.no_drop
            else f"{frames}; frames read meanwhile are not sent"
        )
        return (
            f"the stream's call ended ({exc.code().name}: {exc.details()}); trying the server again for up to "
            f"{self._reconnect_s:g} s; {what}"
        )


class _Fresh:
    """A live source read on a thread of its own, as fast as it delivers, of which the frames
    not yet taken are kept while fresh (Stream's keep_up): at most LIVE_KEPT of them, none that
    a newer one followed more than LIVE_IN_FLIGHT_S ago. A burst (network jitter, a decoder's
    flush) is sent whole; a call that falls behind skips the frames that aged out."""

    def __init__(self, frames: Iterator[CapturedFrame], clock: Callable[[], float]) -> None:
        self._frames, self._clock = frames, clock
        self._changed = threading.Condition()
        self._kept: deque[tuple[float, CapturedFrame]] = deque()  # (when it came, the frame), oldest first
        self._dropped = 0  # frames dropped unsent, since the last take
        self._ended = False
        self._closing = False
        self._thread = threading.Thread(target=self._read, name="polypstream-source", daemon=True)

    def start(self) -> None:
        if not self._thread.is_alive() and not self._ended:
            self._thread.start()

    def _read(self) -> None:
        try:
            for frame in self._frames:
                with self._changed:
                    if self._closing:
                        break
                    self._kept.append((self._clock(), frame))
                    self._prune()
                    self._changed.notify_all()
        finally:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()  # a generator's own cleanup (a VideoSource releases its capture)
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def _prune(self) -> None:
        newest = self._kept[-1][0] if self._kept else 0.0
        while len(self._kept) > LIVE_KEPT or (len(self._kept) > 1 and newest - self._kept[0][0] > LIVE_IN_FLIGHT_S):
            self._kept.popleft()
            self._dropped += 1

    def take(self, timeout_s: float) -> tuple[CapturedFrame | None, int]:
        """The oldest fresh frame not yet taken, and how many were dropped unsent since the last
        take; (None, 0) where none came within `timeout_s` or the source has ended (`ended`)."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self._kept) or self._ended, timeout_s)
            frame = self._kept.popleft()[1] if self._kept else None
            dropped, self._dropped = self._dropped, 0
            return frame, dropped

    def forget_dropped(self) -> int:
        """How many frames were dropped since the last take (counted now, not by the next take)."""
        with self._changed:
            dropped, self._dropped = self._dropped, 0
            return dropped

    @property
    def ended(self) -> bool:
        """The source has ended and its last frame was taken."""
        with self._changed:
            return self._ended and not self._kept

    def close(self) -> None:
        """Read no more (the thread ends after the frame it is reading)."""
        with self._changed:
            self._closing = True


class SourceWatch:
    """A server-side source's results over `Watch` calls, carried over a server that goes away.

    For a live source (a camera does not wait for a restart): a call that ends with its server
    gone (SERVER_GONE) is followed by a new `Watch` of the same source on the same channel,
    tried for up to `reconnect_s` seconds until one yields a result; past that, or with
    `reconnect_s` 0, the call's error is raised. The frames the source delivered meanwhile have
    no result, and a restarted server numbers its source's frames anew. Iterating yields
    the results in order; `cancel()` ends it from any thread (a wait for the server, at once,
    without an error); `report` is told, in words, when a call ends and when results come again."""

    def __init__(
        self,
        client: SegmenterClient,
        source: str,
        options: FrameOptions | None = None,
        *,
        reconnect_s: float = 0.0,
        report: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client, self._source, self._options = client, source, options
        self._reconnect_s = reconnect_s
        self._cancelled = threading.Event()
        self._outage = _Outage(client, reconnect_s, report, clock, "watch", self._cancelled, self._meanwhile)
        self._call: Watch | None = None

    @property
    def reconnects(self) -> int:
        """Calls that yielded results after one had ended with its server gone."""
        return self._outage.reconnects

    def cancel(self) -> None:
        self._cancelled.set()
        call = self._call
        if call is not None:
            call.cancel()

    def __iter__(self) -> Iterator[Watched]:
        while True:
            self._call = self._client.watch(self._source, self._options)
            if self._cancelled.is_set():  # cancelled while the call was being made
                self._call.cancel()
            try:
                for watched in self._call:
                    self._outage.answered()
                    yield watched
                return
            except grpc.RpcError as exc:
                if self._cancelled.is_set() or exc.code() not in SERVER_GONE or self._reconnect_s <= 0:
                    raise
                said = f"the watch ended ({exc.code().name}: {exc.details()}); trying the server again for up to "
                if not self._outage.seek_server(f"{said}{self._reconnect_s:g} s"):
                    if self._cancelled.is_set():
                        return
                    raise

    def _meanwhile(self) -> bool:
        self._cancelled.wait(0.05)
        return True


class _Outage:
    """What a Stream or a SourceWatch does while its server is gone: say so once, seek the
    server until a new call may start, and count and say the reconnect when one answers."""

    def __init__(
        self,
        client: SegmenterClient,
        reconnect_s: float,
        report: Callable[[str], None] | None,
        clock: Callable[[], float],
        what: str,
        stop: threading.Event,
        meanwhile: Callable[[], bool],
    ) -> None:
        self._client, self._reconnect_s, self._clock, self._what = client, reconnect_s, clock, what
        self._report = report or (lambda words: None)
        self._stop, self._meanwhile = stop, meanwhile
        self._since: float | None = None  # while the server is sought: since when
        self.reconnects = 0

    def answered(self) -> None:
        """A call answered: an outage, if any, is over."""
        if self._since is not None:
            self.reconnects += 1
            self._report(f"reconnected after {self._clock() - self._since:.1f} s; the {self._what} goes on")
            self._since = None

    def seek_server(self, words: str) -> bool:
        """A call ended with its server gone: True once a new call may start, False when the
        window has passed (or stop, or `meanwhile`, says so). A call of this outage that answered
        nothing (a draining server refusing at once) is followed by the next after a pause."""
        refused_at_once = self._since is not None
        if self._since is None:
            self._since = self._clock()
            self._report(words)  # once an outage: its first call's ending
        pause = RETRY_PAUSE_S if refused_at_once else 0.0
        deadline = self._since + self._reconnect_s
        return wait_for_server(self._client, deadline, pause, self._stop, self._meanwhile, self._clock)


def wait_for_server(
    client: SegmenterClient,
    deadline: float,
    pause: float,
    stop: threading.Event,
    meanwhile: Callable[[], bool],
    clock: Callable[[], float],
) -> bool:
    """Until the client's channel is connected and `pause` has passed (True: a new call may
    start), or `deadline`, `stop`, or `meanwhile` (run between looks: it waits a little, or
    reads a live source's frame) says False."""
    connecting = client.connected()
    not_before = clock() + pause
    gave_up = False
    try:
        while clock() < deadline:
            connected = connecting.done() and clock() >= not_before
            if stop.is_set():
                return False
            if connected:
                return True
            if not meanwhile():
                return False
        gave_up = True
        client.stop_watching(connecting)  # no server: the caller ends, and closes the channel
        return False
    finally:
        if not gave_up:  # a second cancel of gRPC's future raises
            connecting.cancel()
