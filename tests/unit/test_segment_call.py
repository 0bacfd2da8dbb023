"""The Segment call's bookkeeping on the event loop: slots and trackers given back however the
call ends, no task left behind with an unretrieved exception."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import encode_frame
from polypstream.config import ServerConfig
from polypstream.frames import FrameOptions
from polypstream.pipeline import Pipeline
from polypstream.server import SegmenterServicer
from tests.conftest import square_image


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
