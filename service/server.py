"""The gRPC layer: translates protobuf to Frames and Results to protobuf, streams, health.

It holds no model logic; everything between a decoded frame and its Result is the
Pipeline's. Every frame received on a Segment stream is answered exactly once, in order,
while the client reads its answers: a stream whose answers cannot be delivered for
`send_timeout_s` is ended (RESOURCE_EXHAUSTED) with its remaining answers unsent, and one
the client cancels gets no more. A Watch call gets its source's results from the frame being
read as it starts, each encoded once for every watcher that wants the same parts; one that
reads nothing for `send_timeout_s` is ended the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer  # what grpc_health.v1.health.aio re-exports
from grpc_reflection.v1alpha import reflection

from ._proto.polypstream.v1 import segmenter_pb2 as pb
from ._proto.polypstream.v1 import segmenter_pb2_grpc as pb_grpc
from .alerts import RULE_FPS
from .batcher import BatcherStoppedError, QueueFullError
from .capture import (
    InvalidFrameError,
    PixelFormat,
    decode_encoded,
    decode_raw,
    image_size,
    is_jpeg,
    jpeg_decoded_size,
)
from .config import ConfigError, ServerConfig
from .frames import Frame, Result, Status, invalid_result, unserved_result
from .memory import MemoryBudget, trim_heap
from .pipeline import VIEW_MIN_SIZE, Pipeline
from .security import TokenAuthInterceptor, server_credentials
from .sources import SourceHub
from .threads import name_os_thread
from .wire import options_from_proto

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmenter"].full_name
_STATUS_TO_PB = {
    Status.OK: pb.FRAME_STATUS_OK,
    Status.INVALID_FRAME: pb.FRAME_STATUS_INVALID_FRAME,
    Status.DROPPED_LATE: pb.FRAME_STATUS_DROPPED_LATE,
    Status.FAILED: pb.FRAME_STATUS_FAILED,
}
_PIXEL_FORMATS = {
    pb.PIXEL_FORMAT_BGR8: PixelFormat.BGR8,
    pb.PIXEL_FORMAT_RGB8: PixelFormat.RGB8,
    pb.PIXEL_FORMAT_GRAY8: PixelFormat.GRAY8,
}


_TIMEOUT = getattr(asyncio, "timeout", None)  # Python 3.11+


async def within(awaitable: Awaitable[None], seconds: float) -> None:
    """Await `awaitable`; asyncio.TimeoutError after `seconds`. With asyncio.timeout (Python
    3.11+) that costs a timer, where wait_for also makes a task: 4 against 12.5 µs a call."""
    if _TIMEOUT is None:
        await asyncio.wait_for(awaitable, seconds)
        return
    async with _TIMEOUT(seconds):
        await awaitable


def _still_cancelled(task: asyncio.Task[object]) -> bool:
    """Take back one cancellation of `task` (Python 3.11+ counts them): whether another remains.
    Python 3.10 does not count them: there a call cancelled at the very moment draining starts
    ends its read quietly, as a drained one, rather than cancelled."""
    uncancel = getattr(task, "uncancel", None)
    return uncancel is not None and uncancel() > 0


def decode_frame_image(
    message: pb.Frame, max_pixels: int, min_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixels of a protobuf Frame (JPEGs no larger than `min_size` needs) and the frame's
    (width, height); raises InvalidFrameError saying what is wrong."""
    which = message.WhichOneof("image")
    if which == "encoded":
        return decode_encoded(message.encoded, max_pixels, min_size=min_size)
    if which == "raw":
        raw = message.raw
        image = decode_raw(raw.data, raw.width, raw.height, _PIXEL_FORMATS.get(raw.format), max_pixels)
        return image, (raw.width, raw.height)
    raise InvalidFrameError("empty frame: neither encoded bytes nor raw pixels")


_ALERT_KIND_TO_PB = {"start": pb.AlertEvent.KIND_START, "end": pb.AlertEvent.KIND_END}


def result_to_proto(result: Result) -> pb.FrameResult:
    """Protobuf for a Result; encodes the mask as PNG and the overlay as JPEG when present."""
    t = result.timing
    message = pb.FrameResult(
        stream_id=result.stream_id,
        index=result.index,
        status=_STATUS_TO_PB[result.status],
        error=result.error,
        width=result.width,
        height=result.height,
        client_time_ns=result.client_time_ns,
        timing=pb.Timing(
            decode_ms=t.decode_s * 1e3,
            queue_ms=t.queue_s * 1e3,
            batch_size=t.batch_size,
            inference_ms=t.inference_s * 1e3,
            postprocess_ms=t.postprocess_s * 1e3,
            server_ms=t.server_s * 1e3,
        ),
    )
    for field, polyps in ((message.polyps, result.polyps), (message.held, result.held)):
        for polyp in polyps:
            x, y, w, h = polyp.box
            field.add(
                box=pb.Box(x=x, y=y, width=w, height=h),
                score=polyp.score,
                area=polyp.area,
                track_id=polyp.track_id,
                alerting=polyp.alerting,
            )
    for event in result.alert_events:
        message.alert_events.add(track_id=event.track_id, kind=_ALERT_KIND_TO_PB[event.kind])
    if result.mask is not None:
        message.mask_png = cv2.imencode(".png", result.mask.astype("uint8") * 255)[1].tobytes()
        message.mask_height, message.mask_width = result.mask.shape
    if result.overlay is not None:
        message.overlay_jpeg = cv2.imencode(".jpg", result.overlay, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    return message


# Identifiers a client chooses (stream ids, source names) are echoed in answers and errors:
# longer ones are refused, so that no echo can outgrow a message or gRPC's metadata limit.
MAX_ID_CHARS = 256
# How long the server tries to deliver its "stream closed" status to a client that stopped
# reading before it lets the call go (the status then waits behind the unread results).
ABORT_WAIT_S = 1.0
# A frame that decodes to more pixels than this is decoded on the render pool, with the overlays
# and masks, below the light frames and the model: under contention the cheapest work goes first.
HEAVY_PIXELS = 1280 * 720


def _cut(text: str, limit: int = MAX_ID_CHARS) -> str:
    """Client text as it may be echoed: at most `limit` characters."""
    return text if len(text) <= limit else text[:limit] + "…"


class StreamRules:
    """The order rules of one Segment stream.

    The first frame fixes the stream_id; a frame with another one is invalid. Indexes must
    strictly increase (gaps are fine: a client may skip frames); a repeated or earlier
    index is invalid. A stream_id longer than MAX_ID_CHARS is invalid. An invalid frame is
    answered INVALID_FRAME and changes nothing, so the stream goes on with the next valid frame.
    """

    def __init__(self) -> None:
        self.stream_id: str | None = None
        self.last_index: int | None = None

    def check(self, stream_id: str, index: int) -> str:
        """'' when the frame keeps the rules, else what it breaks."""
        if len(stream_id) > MAX_ID_CHARS:
            return f"stream_id is {len(stream_id)} characters long; at most {MAX_ID_CHARS} are allowed"
        if self.stream_id is not None and stream_id != self.stream_id:
            return f"stream_id changed from '{self.stream_id}' to '{stream_id}' inside one stream"
        if self.last_index is not None and index <= self.last_index:
            return f"index {index} is not after the previous index {self.last_index} (indexes must increase)"
        self.stream_id, self.last_index = stream_id, index
        return ""


def decode_size(model_size: tuple[int, int], viewed: bool) -> tuple[int, int]:
    """The size a JPEG's decoded pixels must cover: the model's input, and the live view's
    smallest picture when the frame is to be drawn for it."""
    if not viewed:
        return model_size
    return max(model_size[0], VIEW_MIN_SIZE[0]), max(model_size[1], VIEW_MIN_SIZE[1])


# A frame's (width, height) and the most its pixels take once decoded; None: header unreadable.
FrameSizes = tuple[tuple[int, int], tuple[int, int]] | None


def frame_sizes(message: pb.Frame, model_size: tuple[int, int]) -> FrameSizes:
    """From the frame's header alone: its (width, height), and the most its pixels take once
    decoded (a JPEG at the reduced scale it is decoded at, the live view's if the frame may be
    viewed); None when the header cannot be read (the frame is refused before any decoding).
    Read once per frame (on the event loop): the memory cost and the decode pool both use it."""
    if message.WhichOneof("image") == "raw":
        return (message.raw.width, message.raw.height), (message.raw.width, message.raw.height)
    size = image_size(message.encoded)
    if size is None:
        return None
    if not is_jpeg(message.encoded) or message.options.return_overlay:
        return size, size
    return size, jpeg_decoded_size(*size, decode_size(model_size, message.options.allow_view))


def frame_cost(message: pb.Frame, model_size: tuple[int, int], sizes: FrameSizes) -> int:
    """The most bytes a frame holds in the server at once: its image bytes, its decoded pixels,
    the model input and probability map, and the full-resolution mask and overlay when asked
    for (before they are encoded). `sizes`: frame_sizes' answer for it."""
    options = message.options
    data_bytes = len(message.raw.data) if message.WhichOneof("image") == "raw" else len(message.encoded)
    model_w, model_h = model_size
    cost = data_bytes + (3 * 4 + 4) * model_w * model_h  # float32 CHW input + float32 probabilities
    if sizes is None:
        return cost
    (width, height), (decoded_w, decoded_h) = sizes
    cost += 3 * decoded_w * decoded_h
    full_mask = options.return_overlay or (options.return_mask and not options.mask_at_model_resolution)
    if full_mask:
        cost += 2 * width * height  # the boolean mask, and its 0/255 copy for PNG
    if options.return_overlay:
        cost += 3 * width * height
    return cost


def heavy(sizes: FrameSizes) -> bool:
    """Whether a frame decodes to more than HEAVY_PIXELS (an overlay of a large frame, a PNG)."""
    return sizes is not None and sizes[1][0] * sizes[1][1] > HEAVY_PIXELS


@dataclass(frozen=True)
class _Answer:
    """A frame's answer in the compact form it waits in: protobuf, pixels already encoded."""

    message: pb.FrameResult
    server_s: float
    ready_at: float

    @classmethod
    def of(cls, result: Result) -> _Answer:
        return cls(result_to_proto(result), result.timing.server_s, time.monotonic())


@dataclass(eq=False)
class _Pending:
    answer: asyncio.Future[_Answer]
    reserved: int = 0  # bytes of the stream's memory share this frame holds until written


class SegmentCall:
    """One Segment call: reads frames, starts each, writes the answers in order.

    It holds a stream slot, a tracker and a memory share, given back exactly once by
    `release()`, which never awaits: a call cancelled at any point gives them back, and a
    client that stops reading gives them back when the server gives up on it.
    """

    def __init__(
        self, servicer: SegmenterServicer, requests: AsyncIterator[pb.Frame], context: grpc.aio.ServicerContext
    ) -> None:
        self.servicer = servicer
        self.pipeline = servicer.pipeline
        self.config = servicer.config
        self.requests = requests
        self.context = context
        self.key = uuid.uuid4().hex
        # Bounded: when a stream has this many frames in flight the server stops reading it,
        # which is the back-pressure a no-drop (offline) client gets.
        self.pending: asyncio.Queue[_Pending | None] = asyncio.Queue(self.config.inflight_per_stream)
        self.reading_done = False
        self.released = False
        self.reader: asyncio.Task[None] | None = None
        self.pipeline.open_stream(self.key)

    async def run(self) -> None:
        self.reader = asyncio.create_task(self._read())
        if not await self._write_answers():
            return  # a client that stopped reading: given up on
        await self.reader
        if self.servicer.draining:
            await self.context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "server shutting down: every frame it read was answered; send the rest elsewhere",
            )

    def release(self) -> None:
        """Give back the slot, the tracker and the memory share (once; never awaits)."""
        if self.released:
            return
        self.released = True
        self.servicer.active_streams -= 1
        self.pipeline.metrics.active_streams.dec()
        self.pipeline.close_stream(self.key)
        self.servicer.memory.close_stream(self.key)
        if self.servicer.active_streams == 0:
            trim_heap()
        if self.reader is not None:
            self.reader.cancel()

    async def stop_reading(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)

    async def _read(self) -> None:
        rules = StreamRules()
        order = InOrder()
        loop = asyncio.get_running_loop()
        try:
            async for message in self.servicer.until_draining(self.requests):
                pending = _Pending(loop.create_future())
                await self.pending.put(pending)
                broken = rules.check(message.stream_id, message.index)
                if broken:
                    self.servicer.answer_invalid(message, broken, pending.answer)
                    continue
                sizes = frame_sizes(message, self.pipeline.runner.input_size)
                cost = frame_cost(message, self.pipeline.runner.input_size, sizes)
                pending.reserved = await self.servicer.memory.reserve(self.key, cost)
                pool = self.servicer.decode_pool_for(message, sizes)
                self.servicer.start_frame(message, self.key, pending.answer, order, pool)
        finally:
            # No await here: this also runs when the call is cancelled. A full queue
            # needs no marker: the writer drains it, then sees reading_done.
            self.reading_done = True
            if not self.pending.full():
                self.pending.put_nowait(None)

    async def _write_answers(self) -> bool:
        """Write every answer in order until reading ends; False if the client stopped reading."""
        while not (self.pending.empty() and self.reading_done):
            pending = await self.pending.get()
            if pending is None:
                break
            answer = await pending.answer
            try:
                # A client that stops reading fills gRPC's flow-control window and this
                # write stalls; past the timeout the stream is ended rather than held.
                await within(self.context.write(answer.message), self.config.send_timeout_s)
            except asyncio.TimeoutError:
                await self._give_up_on_slow_client()
                return False
            except Exception:
                if await client_gone(self.context):  # it hung up as this was written: nobody to answer
                    return False
                raise
            self.servicer.memory.release(self.key, pending.reserved)
            self.servicer.observe_send(answer.server_s, time.monotonic() - answer.ready_at)
        return True

    async def _give_up_on_slow_client(self) -> None:
        self.pipeline.metrics.stream_aborts.labels("slow_client").inc()
        # Its status cannot overtake the results it has not read, so it may never be
        # delivered: free what the stream holds first, whatever the client does next.
        self.release()
        await abort_unread(self.context, self.config.send_timeout_s, "stream")


async def client_gone(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call is over on the client's side. A write fails as soon as the client
    has hung up; grpc tells the event loop a moment later (or cancels this task)."""
    for _ in range(20):
        if context.cancelled() or context.done():
            return True
        await asyncio.sleep(0.005)
    return False


async def abort_unread(context: grpc.aio.ServicerContext, send_timeout_s: float, what: str) -> None:
    """End a call whose client has read nothing for `send_timeout_s` with RESOURCE_EXHAUSTED. The
    status cannot overtake the results it has not read, so it may never arrive: the call then
    ends when the client goes."""
    try:
        await asyncio.wait_for(
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"results could not be delivered for {send_timeout_s:g} s (the client is not reading them); "
                f"{what} closed",
            ),
            ABORT_WAIT_S,
        )
    except asyncio.TimeoutError:
        pass  # the status waits behind the unread results
    except grpc.aio.AbortError:
        raise
    except Exception:
        if not await client_gone(context):  # it hung up meanwhile: the status has nobody to reach
            raise


class InOrder:
    """Runs one stream's hand-overs (a decoded frame to the pipeline) in the order its frames
    were read, from whichever thread decoded each: a frame decoded before the one read ahead of
    it waits here, and the thread that completes the run hands over every frame ready."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued = 0  # tickets given out (on the event loop)
        self._next = 0  # the ticket whose hand-over runs next
        self._ready: dict[int, Callable[[], None]] = {}

    def ticket(self) -> int:
        """The next frame's place in the stream's order."""
        ticket = self._issued
        self._issued += 1
        return ticket

    def run(self, ticket: int, hand_over: Callable[[], None]) -> None:
        """Run `hand_over` in `ticket`'s turn: now, with every later one that is ready, if the
        earlier ones have run; otherwise later, on the thread that runs the one before it.
        A hand-over that raises is logged, and the ones after it still run."""
        with self._lock:  # held while handing over: two threads must not reorder a run between them
            self._ready[ticket] = hand_over
            while (step := self._ready.pop(self._next, None)) is not None:
                self._next += 1
                try:
                    step()
                except Exception:
                    logger.exception("handing a frame over failed")


class _Delivery:
    """Hands a frame's Result to its waiting answer, from the event loop or from a thread.

    An answer with pixels comes from the worker that drew them and is encoded there (mask PNG,
    overlay JPEG), so that what waits to be sent holds no full-resolution pixels."""

    def __init__(self, loop: asyncio.AbstractEventLoop, answer: asyncio.Future[_Answer]) -> None:
        self.loop, self.answer = loop, answer

    def settle(self, ready: _Answer) -> None:
        if not self.answer.done():
            self.answer.set_result(ready)

    def deliver(self, result: Result) -> None:  # on the event loop
        self.settle(_Answer.of(result))

    def deliver_threadsafe(self, result: Result) -> None:  # on the batcher's thread, or a worker
        ready = _Answer.of(result) if result.mask is not None or result.overlay is not None else None
        with contextlib.suppress(RuntimeError):  # the loop is gone: the stream ended
            if ready is None:
                self.loop.call_soon_threadsafe(self.deliver, result)
            else:
                self.loop.call_soon_threadsafe(self.settle, ready)


class SegmenterServicer(pb_grpc.SegmenterServicer):
    """polypstream.v1.Segmenter on top of a running Pipeline."""

    def __init__(self, pipeline: Pipeline, config: ServerConfig, sources: dict[str, SourceHub] | None = None) -> None:
        self.pipeline = pipeline
        self.config = config
        self.sources = sources or {}
        self.active_streams = 0
        self.active_watchers = 0  # Watch calls, all sources together
        self.draining = False
        self.memory = MemoryBudget(config.memory_limit_bytes, config.stream_memory_limit_bytes)
        pipeline.metrics.track_frame_memory(lambda: self.memory.held, self.memory.limit)
        self._awaiting_frames: set[asyncio.Task[object]] = set()  # streams' readers waiting for a frame
        self._drain_interrupted: set[asyncio.Task[object]] = set()  # those start_draining cancelled
        # Sources' results being or been encoded for their watchers, by the parts they carry.
        self._encoded: weakref.WeakKeyDictionary[Result, dict[tuple[bool, bool], asyncio.Future[pb.FrameResult]]] = (
            weakref.WeakKeyDictionary()
        )

    async def Segment(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.Frame], context: grpc.aio.ServicerContext
    ) -> None:
        await self._admit(context, self.active_streams, self.config.max_streams, "limit", "streams")
        self.active_streams += 1
        self.pipeline.metrics.active_streams.inc()
        call = SegmentCall(self, request_iterator, context)
        try:
            await call.run()
        finally:
            call.release()  # before any await: a cancellation cannot skip it
            await call.stop_reading()

    async def _admit(
        self, context: grpc.aio.ServicerContext, open_now: int, limit: int, refused_as: str, what: str
    ) -> None:
        """Refuse a new call (counted) while draining (UNAVAILABLE) or with `limit` calls of its
        kind open (RESOURCE_EXHAUSTED)."""
        if self.draining:
            self.pipeline.metrics.streams_refused.labels("shutting_down").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        if open_now >= limit:
            self.pipeline.metrics.streams_refused.labels(refused_as).inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"too many concurrent {what} (limit {limit})")

    async def until_draining(self, requests: AsyncIterator[pb.Frame]) -> AsyncIterator[pb.Frame]:
        """The stream's frames, until it ends or the server starts draining (then no more are read).

        The frame being awaited when draining starts is not read: start_draining cancels the
        read, and only the read (a task is in `_awaiting_frames` only while it awaits one)."""
        iterator = aiter(requests)
        task = asyncio.current_task()
        assert task is not None
        while not self.draining:
            self._awaiting_frames.add(task)
            try:
                message = await anext(iterator)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if task not in self._drain_interrupted or _still_cancelled(task):
                    raise  # the call itself was cancelled (as well)
                return
            finally:
                self._awaiting_frames.discard(task)
                self._drain_interrupted.discard(task)
            yield message

    def start_draining(self) -> None:
        """Refuse new streams and stop reading open ones; frames already read are still answered.
        The server's sources read no more frames either: their watchers get the results of the
        frames read, then UNAVAILABLE. Once: a second call would cancel a read that has not yet
        seen the first cancellation."""
        if self.draining:
            return
        self.draining = True
        for task in self._awaiting_frames:
            self._drain_interrupted.add(task)
            task.cancel()
        for hub in self.sources.values():
            hub.stop_reading()

    def answer_invalid(self, message: pb.Frame, error: str, answer: asyncio.Future[_Answer]) -> None:
        result = invalid_result(_cut(message.stream_id), message.index, error, time.monotonic(), message.client_time_ns)
        self.pipeline.record(result, "grpc")
        answer.set_result(_Answer.of(result))

    async def _to_proto(self, result: Result) -> pb.FrameResult:
        """Protobuf for a Result; PNG/JPEG encoding runs on the render pool (below the light
        frames and the model), not on the event loop."""
        if result.mask is None and result.overlay is None:
            return result_to_proto(result)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pipeline.render_pool, result_to_proto, result)

    def observe_send(self, server_s: float, send_s: float) -> None:
        stage = self.pipeline.metrics.stage
        stage["send"].observe(send_s)
        stage["end_to_end"].observe(server_s + send_s)

    def start_frame(
        self,
        message: pb.Frame,
        stream_key: str,
        answer: asyncio.Future[_Answer],
        order: InOrder,
        pool: ThreadPoolExecutor,
    ) -> None:
        """Decode on `pool` (off the event loop) and hand the frame over from there, in the
        stream's order (`order`: whichever worker finishes first, the stream's frames reach the
        pipeline as they were read); nothing comes back through the event loop but the answer."""
        delivery = _Delivery(asyncio.get_running_loop(), answer)
        ticket = order.ticket()
        try:
            pool.submit(self._decode_and_hand_over, message, stream_key, time.monotonic(), delivery, order, ticket)
        except RuntimeError:  # the pool is shut down: the server is stopping
            now, stopping = time.monotonic(), "server is shutting down"
            result = replace(
                invalid_result(message.stream_id, message.index, stopping, now, message.client_time_ns),
                status=Status.FAILED,
            )
            order.run(ticket, lambda: None)
            self.pipeline.record(result, "grpc")
            delivery.deliver(result)

    def _decode_and_hand_over(
        self,
        message: pb.Frame,
        stream_key: str,
        received_at: float,
        delivery: _Delivery,
        order: InOrder,
        ticket: int,
    ) -> None:
        """On a decode worker: the frame decoded, then submitted in its turn (or its
        INVALID_FRAME answer delivered)."""
        outcome = self._decoded(message, stream_key, received_at)
        if isinstance(outcome, Result):  # the frame could not be read: nothing for the pipeline

            def hand_over() -> None:
                self.pipeline.record(outcome, "grpc")
                delivery.deliver_threadsafe(outcome)

        else:

            def hand_over() -> None:
                self._submit(outcome, delivery.deliver_threadsafe)

        order.run(ticket, hand_over)

    def _decoded(self, message: pb.Frame, stream_key: str, received_at: float) -> Frame | Result:
        """The frame decoded, or its INVALID_FRAME answer."""
        try:
            return self._decode(message, stream_key, received_at)
        except InvalidFrameError as exc:
            error = str(exc)
        except Exception as exc:
            logger.exception("decoding frame %s#%d failed", _cut(message.stream_id, 64), message.index)
            error = f"cannot read frame: {exc}"
        return invalid_result(message.stream_id, message.index, error, received_at, message.client_time_ns)

    def decode_pool_for(self, message: pb.Frame, sizes: FrameSizes) -> ThreadPoolExecutor:
        """Where a frame (of these `frame_sizes`) is decoded: offline (no-drop) frames on their own
        pool, heavy ones with the overlays on the render pool (both below the rest), light live
        frames on the decode pool."""
        if message.options.no_drop:
            return self.pipeline.offline_decode_pool
        if heavy(sizes):
            return self.pipeline.render_pool
        return self.pipeline.decode_pool

    def _decode(self, message: pb.Frame, stream_key: str, received_at: float) -> Frame:
        start = time.perf_counter()
        options = options_from_proto(message.options)
        try:
            self.pipeline.alert_rule(options)
        except ConfigError as exc:
            raise InvalidFrameError(f"frame options: {exc}") from exc
        # An overlay is drawn on the frame itself; otherwise the model's input size is enough,
        # or the live view's while a viewer is ready for pictures (of this stream, once it is listed).
        viewed = options.allow_view and self.pipeline.view is not None and self.pipeline.view.ready()
        min_size = None if options.return_overlay else decode_size(self.pipeline.runner.input_size, viewed)
        image, size = decode_frame_image(message, self.config.max_pixels, min_size)
        return self.pipeline.make_frame(
            stream_key,
            message.stream_id,
            message.index,
            image,
            received_at,
            options=options,
            client_time_ns=message.client_time_ns,
            decode_s=time.perf_counter() - start,
            original_size=size,
        )

    def _submit(self, frame: Frame, deliver: Callable[[Result], None]) -> None:
        try:
            self.pipeline.submit(frame, deliver)
        except (QueueFullError, BatcherStoppedError) as exc:
            result = unserved_result(frame, Status.FAILED, str(exc), time.monotonic())
            self.pipeline.record(result, "grpc")
            deliver(result)

    async def Watch(  # noqa: N802
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> None:
        if len(request.source) > MAX_ID_CHARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"source name is {len(request.source)} characters long; at most {MAX_ID_CHARS} are allowed",
            )
        hub = self.sources.get(request.source)
        if hub is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no source named '{request.source}' (see ListSources)")
            return
        await self._admit(context, self.active_watchers, self.config.max_watchers, "watch_limit", "Watch calls")
        wanted = options_from_proto(request.options)
        subscription = hub.subscribe(asyncio.get_running_loop(), wanted)
        self.active_watchers += 1
        try:
            while (result := await subscription.queue.get()) is not None:
                message = await self._shared_proto(result, wanted.return_mask, wanted.return_overlay)
                try:
                    # A watcher that reads nothing (gone without hanging up, or stopped) would hold
                    # its place among --max-watchers for as long as the source runs.
                    await within(context.write(message), self.config.send_timeout_s)
                except asyncio.TimeoutError:
                    self.pipeline.metrics.stream_aborts.labels("slow_watcher").inc()
                    await abort_unread(context, self.config.send_timeout_s, "watch")
                    return
                except Exception:
                    if await client_gone(context):  # it hung up as this was written
                        return
                    raise
        finally:
            self.active_watchers -= 1
            hub.unsubscribe(subscription)
        if hub.state == "failed":
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"source '{hub.name}' failed: {hub.error}")
        if hub.stopped and self.draining:  # the source did not end: the server stopped it
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"server shutting down: source '{hub.name}' reads no more frames; those it read were sent",
            )

    async def _shared_proto(self, result: Result, mask: bool, overlay: bool) -> pb.FrameResult:
        """A source's result as protobuf, its mask and overlay encoded once for all the watchers
        that want the same parts (not once per watcher: eight watchers of a 1080p source's overlays
        took the CPU that live streams needed); forgotten with the result."""
        parts = (mask and result.mask is not None, overlay and result.overlay is not None)
        encoded = self._encoded.setdefault(result, {})
        future = encoded.get(parts)
        if future is None:
            mask_part, overlay_part = (result.mask if parts[0] else None), (result.overlay if parts[1] else None)
            trimmed = replace(result, mask=mask_part, overlay=overlay_part)
            future = encoded[parts] = asyncio.ensure_future(self._to_proto(trimmed))
        return await asyncio.shield(future)  # a watcher that leaves does not cancel the others' encoding

    async def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        runner = self.pipeline.runner
        c = runner.contract
        rule = self.pipeline.default_alert_rule
        return pb.ModelInfo(
            name=c.name,
            version=c.version,
            input_width=c.input_width,
            input_height=c.input_height,
            provider=runner.provider,
            threshold=c.threshold,
            max_batch=self.pipeline.batcher.max_batch,
            budget_ms=self.pipeline.config.budget_ms,
            path=runner.path.name,  # which file, not where the server keeps it
            alert_rule=pb.AlertRule(min_seen=rule.min_seen, window=rule.window, hold=rule.hold, frame_rate=RULE_FPS),
        )

    async def ListSources(  # noqa: N802
        self, request: pb.ListSourcesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSourcesResponse:
        return pb.ListSourcesResponse(
            sources=[
                pb.SourceInfo(
                    name=h.name,
                    uri=h.shown_uri,
                    state=h.state,
                    frames=h.frames,
                    subscribers=h.subscriber_count,
                    frame_rate=h.frame_rate,
                )
                for h in self.sources.values()
            ]
        )


@dataclass
class RunningServer:
    """A started gRPC server: its bound address, servicer and health servicer."""

    server: grpc.aio.Server
    address: str
    servicer: SegmenterServicer
    health: HealthServicer
    health_server: grpc.aio.Server | None = None
    health_address: str = ""
    loop: asyncio.AbstractEventLoop | None = None  # set by serve_in_thread

    async def shutdown(self, grace: float) -> None:
        """Health NOT_SERVING, refuse new streams, finish accepted frames, stop."""
        self.servicer.start_draining()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)


# gRPC sets SO_REUSEPORT on Linux, so a second server on a port in use would start and
# silently share its connections; without it, binding a port in use fails. The workers of
# `serve --workers` share their port on purpose (service/workers.py).
EXCLUSIVE_PORT = ("grpc.so_reuseport", 0)
SHARED_PORT = ("grpc.so_reuseport", 1)


def _bound(address: str, port: int) -> str:
    if address.startswith("unix:"):
        return address
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return f"{address.rsplit(':', 1)[0]}:{port}"


async def _start_health_server(
    address: str, health_servicer: HealthServicer, port_option: tuple[str, int]
) -> tuple[grpc.aio.Server, str]:
    """A plaintext server with grpc.health.v1 only: probes reach it without TLS or a token."""
    server = grpc.aio.server(options=[port_option])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = _bound(address, server.add_insecure_port(address))
    await server.start()
    return server, bound


async def start_server(
    pipeline: Pipeline, config: ServerConfig, sources: dict[str, SourceHub] | None = None
) -> RunningServer:
    """Bind, start and report SERVING. `config.address` may use port 0 or `unix:PATH`."""
    port_option = SHARED_PORT if config.shared_port else EXCLUSIVE_PORT
    limits = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        port_option,
    ]
    interceptors = []
    if config.token:
        known = frozenset(f"/{SERVICE_NAME}/{m.name}" for m in pb.DESCRIPTOR.services_by_name["Segmenter"].methods)
        interceptors.append(TokenAuthInterceptor(config.token, pipeline.metrics.unauthenticated, known))
    server = grpc.aio.server(options=limits, interceptors=interceptors)
    servicer = SegmenterServicer(pipeline, config, sources)
    pb_grpc.add_SegmenterServicer_to_server(servicer, server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    if config.tls is not None:
        port = server.add_secure_port(config.address, server_credentials(config.tls))
    else:
        port = server.add_insecure_port(config.address)
    address = _bound(config.address, port)
    await server.start()
    running = RunningServer(server, address, servicer, health_servicer)
    if config.health_address:
        try:
            running.health_server, running.health_address = await _start_health_server(
                config.health_address, health_servicer, port_option
            )
        except Exception:
            await server.stop(0)
            raise
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return running


@contextlib.contextmanager
def serve_in_thread(
    pipeline: Pipeline, config: ServerConfig, sources: dict[str, SourceHub] | None = None
) -> Iterator[RunningServer]:
    """Run the server on an event loop in a background thread (tests, `demo`, benchmarks)."""
    loop = asyncio.new_event_loop()

    def run() -> None:
        name_os_thread()
        loop.run_forever()

    thread = threading.Thread(target=run, name="polypstream-grpc", daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(start_server(pipeline, config, sources), loop).result()
    running.loop = loop
    try:
        yield running
    finally:
        asyncio.run_coroutine_threadsafe(running.shutdown(config.grace_s), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
