"""The Segment call's bookkeeping on the event loop: slots and trackers given back however the
call ends, no task left behind with an unretrieved exception."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from polypstream import pipeline as pipeline_module
from polypstream import server as server_module
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import encode_frame
from polypstream.config import ServerConfig
from polypstream.frames import Frame, FrameOptions, Result
from polypstream.pipeline import Pipeline
from polypstream.server import InOrder, SegmentCall, SegmenterServicer
from tests.conftest import FakeClock, square_image


class NeverWritten:
    """A ServicerContext whose writes never complete (a client that does not read)."""

    async def write(self, message: pb.FrameResult) -> None:
        await asyncio.Event().wait()

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"unexpected abort: {code} {details}")


async def frames_then_wait(count: int, done: asyncio.Event) -> AsyncIterator[pb.Frame]:
    for i in range(count):
        yield encode_frame(square_image(), "s", i, FrameOptions(no_drop=True))
    await done.wait()


async def until(condition: Any) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def test_a_call_cancelled_twice_still_gives_back_its_slot_and_tracker(pipeline: Pipeline) -> None:
    async def scenario() -> None:
        servicer = SegmenterServicer(pipeline, ServerConfig(max_streams=1))
        done = asyncio.Event()
        call = asyncio.create_task(servicer.Segment(frames_then_wait(3, done), NeverWritten()))  # type: ignore[arg-type]
        await until(lambda: servicer.active_streams == 1 and servicer.memory.held > 0)
        # When the call is cancelled, and cancelled again while it cleans up
        call.cancel()
        await asyncio.sleep(0)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # Then its slot, tracker and memory are all given back
        assert servicer.active_streams == 0
        assert servicer.memory.held == 0
        assert not pipeline._streams
        done.set()

    asyncio.run(scenario())


def test_a_call_that_ends_while_waiting_for_a_frame_leaves_no_unretrieved_exception(pipeline: Pipeline) -> None:
    reported: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
        servicer = SegmenterServicer(pipeline, ServerConfig())
        ended = asyncio.Event()

        async def requests() -> AsyncIterator[pb.Frame]:
            await ended.wait()  # the client hangs up: the stream ends
            return
            yield  # an async generator

        reader = servicer.until_draining(requests())
        waiting = asyncio.ensure_future(anext(reader))
        await asyncio.sleep(0.01)
        waiting.cancel()  # the call is cancelled while a frame is awaited
        await asyncio.gather(waiting, return_exceptions=True)
        await reader.aclose()
        ended.set()  # ... and the stream then ends (StopAsyncIteration in the left-behind read)
        for _ in range(5):
            await asyncio.sleep(0.01)
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    gc.collect()
    assert [c.get("message") for c in reported] == []


class HungUpDuringWrite:
    """A ServicerContext whose write fails because the client has just hung up (or not)."""

    def __init__(self, gone: bool) -> None:
        self.gone = gone

    async def write(self, message: pb.FrameResult) -> None:
        raise RuntimeError('Failed "execute_batch"')  # what grpc's core raises for a call that is over

    def cancelled(self) -> bool:
        return self.gone

    def done(self) -> bool:
        return self.gone


def test_a_write_that_fails_because_the_client_hung_up_ends_the_call_quietly(pipeline: Pipeline) -> None:
    async def scenario(gone: bool) -> None:
        servicer = SegmenterServicer(pipeline, ServerConfig())
        done = asyncio.Event()
        done.set()
        await servicer.Segment(frames_then_wait(2, done), HungUpDuringWrite(gone))  # type: ignore[arg-type]
        assert servicer.active_streams == 0

    asyncio.run(scenario(gone=True))  # no exception: grpc would log it as an ERROR
    with pytest.raises(RuntimeError, match="execute_batch"):  # a failure with the client still there is not hidden
        asyncio.run(scenario(gone=False))


def test_hand_overs_run_in_ticket_order_whichever_thread_finishes_first(caplog: pytest.LogCaptureFixture) -> None:
    order = InOrder()
    tickets = [order.ticket() for _ in range(4)]
    ran: list[int] = []

    def hand_over(n: int) -> Callable[[], None]:
        def step() -> None:
            if n == 1:
                raise RuntimeError("a broken hand-over")
            ran.append(n)

        return step

    # When the third and second frames are decoded before the first
    thread = threading.Thread(target=order.run, args=(tickets[2], hand_over(2)))
    thread.start()
    thread.join()
    order.run(tickets[1], hand_over(1))
    # Then nothing is handed over yet
    assert ran == []
    # When the first is decoded, it and the ones waiting for it go in order; the one that
    # raised is logged and does not stop the next
    order.run(tickets[0], hand_over(0))
    assert ran == [0, 2]
    assert "handing a frame over failed" in caplog.text
    order.run(tickets[3], hand_over(3))
    assert ran == [0, 2, 3]


class Reversed(ThreadPoolExecutor):
    """A pool that holds its work until released, then runs it last submitted first."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.held: list[tuple[Callable[..., object], tuple[object, ...]]] = []

    def submit(self, fn: Callable[..., object], /, *args: object, **kwargs: object) -> Future[object]:  # type: ignore[override]
        self.held.append((fn, args))
        done: Future[object] = Future()
        done.set_result(None)
        return done

    def release(self) -> None:
        for fn, args in reversed(self.held):
            fn(*args)


def test_a_stream_s_frames_reach_the_pipeline_in_the_order_read_when_later_ones_decode_first(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted: list[int] = []
    real_submit = pipeline.submit

    def recording_submit(frame: Frame, on_done: Callable[[Result], None], *, origin: str = "grpc") -> None:
        submitted.append(frame.index)
        real_submit(frame, on_done, origin=origin)

    monkeypatch.setattr(pipeline, "submit", recording_submit)

    async def scenario() -> list[int]:
        servicer = SegmenterServicer(pipeline, ServerConfig())
        pool, order = Reversed(), InOrder()
        pipeline.open_stream("k")
        answers = [asyncio.get_running_loop().create_future() for _ in range(3)]
        for i, answer in enumerate(answers):
            servicer.start_frame(encode_frame(square_image(), "s", i, FrameOptions()), "k", answer, order, pool)
        await asyncio.to_thread(pool.release)  # frame 2 decoded first, then 1, then 0
        done = await asyncio.gather(*answers)
        pipeline.close_stream("k")
        pool.shutdown()
        return [a.message.index for a in done]

    assert asyncio.run(scenario()) == [0, 1, 2]
    assert submitted == [0, 1, 2]


def test_draining_ends_a_read_waiting_for_a_frame_but_not_a_cancellation_of_the_call(pipeline: Pipeline) -> None:
    async def waiting_reader(servicer: SegmenterServicer, read: list[int]) -> asyncio.Task[None]:
        never = asyncio.Event()

        async def requests() -> AsyncIterator[pb.Frame]:
            yield encode_frame(square_image(), "s", 0, FrameOptions())
            await never.wait()  # the client's next frame does not come
            yield encode_frame(square_image(), "s", 1, FrameOptions())

        async def read_all() -> None:
            async for message in servicer.until_draining(requests()):
                read.append(message.index)

        task = asyncio.create_task(read_all())
        await until(lambda: read == [0])
        await asyncio.sleep(0.01)
        return task

    async def scenario() -> None:
        # Given a stream waiting for its next frame, when the server starts draining,
        # then the read ends quietly with what was read
        servicer, read = SegmenterServicer(pipeline, ServerConfig()), []
        task = await waiting_reader(servicer, read)
        servicer.start_draining()
        servicer.start_draining()  # twice (a second signal) before the read has seen the first
        await asyncio.wait_for(task, 5)
        assert read == [0] and not servicer._awaiting_frames
        # Given another, cancelled as the server starts draining: the cancellation stands
        servicer, read = SegmenterServicer(pipeline, ServerConfig()), []
        task = await waiting_reader(servicer, read)
        task.cancel()
        servicer.start_draining()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


class Written:
    """A ServicerContext whose writes go through, each taking `write_s` on the server's clock."""

    def __init__(self, clock: FakeClock | None = None, write_s: float = 0.0) -> None:
        self.messages: list[pb.FrameResult] = []
        self.clock, self.write_s = clock, write_s

    async def write(self, message: pb.FrameResult) -> None:
        if self.clock is not None:
            self.clock.advance(self.write_s)
        self.messages.append(message)

    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"unexpected abort: {code} {details}")


async def sent(count: int) -> AsyncIterator[pb.Frame]:
    for i in range(count):
        yield encode_frame(square_image(), "s", i, FrameOptions(no_drop=True))


def test_a_stream_that_ends_with_its_queue_of_answers_full_is_answered_to_the_end(
    pipeline: Pipeline, slow_inference: Callable[[float], None]
) -> None:
    # Both frames are read (the queue of 2 answers to write is full) before either is answered:
    # there is no room for the end marker, and the writer must still see that reading ended.
    slow_inference(0.3)

    async def scenario() -> list[int]:
        servicer = SegmenterServicer(pipeline, ServerConfig(inflight_per_stream=2))
        context = Written()
        await asyncio.wait_for(servicer.Segment(sent(2), context), 10)  # type: ignore[arg-type]
        return [m.index for m in context.messages]

    assert asyncio.run(scenario()) == [0, 1]


def test_the_heap_is_trimmed_when_the_last_open_stream_ends(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[int] = []
    monkeypatch.setattr(server_module, "trim_heap", lambda: trims.append(1))

    async def scenario() -> None:
        servicer = SegmenterServicer(pipeline, ServerConfig())
        done = asyncio.Event()
        first = asyncio.create_task(servicer.Segment(frames_then_wait(1, done), Written()))  # type: ignore[arg-type]
        await until(lambda: servicer.active_streams == 1)
        await servicer.Segment(sent(1), Written())  # type: ignore[arg-type]
        assert trims == []  # another stream is still open
        done.set()
        await first
        assert trims == [1]

    asyncio.run(scenario())


def test_releasing_a_call_stops_its_reader(pipeline: Pipeline) -> None:
    # A client that stops reading its results: the server gives up on it and releases the call,
    # which must stop reading its frames too.
    async def scenario() -> None:
        servicer = SegmenterServicer(pipeline, ServerConfig())
        call = SegmentCall(servicer, frames_then_wait(1, asyncio.Event()), Written())  # type: ignore[arg-type]
        servicer.active_streams += 1
        call.reader = asyncio.create_task(call._read())
        await until(lambda: servicer.memory.held > 0)  # its frame read, the next awaited
        call.release()
        await asyncio.sleep(0)
        assert call.reader.cancelled() or call.reader.done()
        await asyncio.gather(call.reader, return_exceptions=True)
        assert call.reader.cancelled()

    asyncio.run(scenario())


def test_the_time_an_answer_waits_to_be_sent_is_measured_on_the_servers_clock(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's and the pipeline's clocks move only as the client takes an answer: 7 ms.
    clock = FakeClock()
    clock.install(monkeypatch, server_module, pipeline_module)

    async def scenario() -> None:
        servicer = SegmenterServicer(pipeline, ServerConfig())
        await servicer.Segment(sent(1), Written(clock, 0.007))  # type: ignore[arg-type]

    asyncio.run(scenario())
    value = pipeline.metrics.registry.get_sample_value
    assert value("polypstream_stage_seconds_sum", {"stage": "send"}) == pytest.approx(0.007, abs=1e-9)
    # receipt to the answer being ready took no time on this clock: end to end is the sending
    assert value("polypstream_stage_seconds_sum", {"stage": "end_to_end"}) == pytest.approx(0.007, abs=1e-9)


def test_a_call_released_twice_gives_its_slot_back_once(pipeline: Pipeline) -> None:
    async def scenario() -> int:
        servicer = SegmenterServicer(pipeline, ServerConfig())
        servicer.active_streams = 2  # this call and another
        call = SegmentCall(servicer, sent(0), Written())  # type: ignore[arg-type]
        call.release()
        call.release()  # a cancellation during its clean-up, then the clean-up's own
        return servicer.active_streams

    assert asyncio.run(scenario()) == 1
