"""The byte budget frames of client streams share, and what one frame is charged."""

from __future__ import annotations

import asyncio

import pytest

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.memory import MemoryBudget
from polypstream.server import frame_cost, frame_sizes
from tests.conftest import blank_image


def test_a_stream_waits_for_its_own_share_and_others_go_on() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(limit=100, per_stream=40)
        assert await budget.reserve("a", 30) == 30
        blocked = asyncio.ensure_future(budget.reserve("a", 30))  # 60 > a's share of 40
        await asyncio.sleep(0)
        assert not blocked.done()
        assert await budget.reserve("b", 40) == 40  # another stream is not held up by a's wait
        budget.release("a", 30)
        assert await blocked == 30
        assert (budget.held, budget.held_by("a"), budget.held_by("b")) == (70, 30, 40)

    asyncio.run(scenario())


def test_the_total_is_granted_in_arrival_order() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(limit=100, per_stream=100)
        await budget.reserve("a", 90)
        big = asyncio.ensure_future(budget.reserve("b", 60))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(budget.reserve("c", 10))  # fits now, but b came first
        await asyncio.sleep(0)
        assert not big.done() and not small.done()
        budget.release("a", 90)
        assert (await big, await small) == (60, 10)
        assert budget.held == 70

    asyncio.run(scenario())


def test_a_frame_larger_than_a_share_is_charged_the_share_so_it_can_pass() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(limit=100, per_stream=40)
        assert await budget.reserve("a", 1000) == 40
        assert budget.held_by("a") == 40

    asyncio.run(scenario())


def test_closing_a_stream_gives_back_what_it_holds_and_cancels_what_it_waits_for() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(limit=50, per_stream=50)
        await budget.reserve("a", 50)
        waiting_a = asyncio.ensure_future(budget.reserve("a", 10))
        waiting_b = asyncio.ensure_future(budget.reserve("b", 20))
        await asyncio.sleep(0)
        budget.close_stream("a")
        with pytest.raises(asyncio.CancelledError):
            await waiting_a
        assert await waiting_b == 20
        assert (budget.held, budget.held_by("a")) == (20, 0)

    asyncio.run(scenario())


def test_a_cancelled_wait_takes_nothing_and_lets_the_next_in() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(limit=100, per_stream=100)
        await budget.reserve("a", 50)
        first = asyncio.ensure_future(budget.reserve("b", 80))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(budget.reserve("c", 40))
        await asyncio.sleep(0)
        first.cancel()  # the head of the queue leaves: c now fits
        assert await second == 40
        assert (budget.held, budget.held_by("b")) == (90, 0)

    asyncio.run(scenario())


def test_limits_must_be_consistent() -> None:
    with pytest.raises(ValueError, match="per stream"):
        MemoryBudget(limit=10, per_stream=20)


def test_frame_cost_counts_the_message_pixels_and_what_was_asked_for() -> None:
    model = (160, 160)

    def frame_cost_of(frame: pb.Frame) -> int:  # the header read once, as the server reads it
        return frame_cost(frame, model, frame_sizes(frame, model))

    model_bytes = 16 * 160 * 160  # float32 CHW input (12 bytes a pixel) + float32 probabilities
    data = blank_image(1920, 1080)
    # A JPEG without overlay is decoded at the smallest scale covering 160x160: 1/4 -> 480x270
    plain = pb.Frame(encoded=data)
    assert frame_cost_of(plain) == len(data) + model_bytes + 3 * 480 * 270
    # An overlay needs the full decode, the boolean mask and its 0/255 copy, and the overlay
    overlay = pb.Frame(encoded=data, options=pb.FrameOptions(return_overlay=True))
    assert frame_cost_of(overlay) == len(data) + model_bytes + 3 * 1920 * 1080 + 2 * 1920 * 1080 + 3 * 1920 * 1080
    # A frame the live view may show is counted at the view's decode size (covering 640x360): 1/2
    viewable = pb.Frame(encoded=data, options=pb.FrameOptions(allow_view=True))
    assert frame_cost_of(viewable) == len(data) + model_bytes + 3 * 960 * 540
    # A mask at the model's resolution costs no frame-sized buffer
    small_mask = pb.Frame(encoded=data, options=pb.FrameOptions(return_mask=True, mask_at_model_resolution=True))
    assert frame_cost_of(small_mask) == frame_cost_of(plain)
    # Raw pixels are used as they come; unreadable bytes cost what they weigh
    raw = pb.Frame(raw=pb.RawImage(width=64, height=48, format=pb.PIXEL_FORMAT_BGR8, data=b"\0" * 9216))
    assert frame_cost_of(raw) == 9216 + model_bytes + 3 * 64 * 48
    assert frame_cost_of(pb.Frame(encoded=b"garbage")) == 7 + model_bytes
    # Sums, not bitwise ors (16 | 240 would be 240): 16 bytes, and a 5x3 model's 16 bytes a pixel
    assert frame_cost(pb.Frame(encoded=b"x" * 16), (5, 3), None) == 16 + 240


def test_a_stream_takes_frames_up_to_exactly_its_share_and_gives_back_part_of_it() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(limit=1000, per_stream=100)
        for nbytes in (32, 32, 36):  # 100: its whole share, each granted at once
            assert await asyncio.wait_for(budget.reserve("a", nbytes), 1) == nbytes
        assert (budget.held, budget.held_by("a")) == (100, 100)
        budget.release("a", 32)  # one frame answered: the others still held
        assert (budget.held, budget.held_by("a")) == (68, 68)
        budget.release("a", 67)  # down to one byte
        assert (budget.held, budget.held_by("a")) == (1, 1)
        budget.release("a", 1)
        assert (budget.held, budget.held_by("a")) == (0, 0)
        budget.release("nobody", 50)  # a stream that holds nothing gives back nothing
        budget.close_stream("nobody")
        assert budget.held == 0

    asyncio.run(scenario())


def test_the_total_counts_every_byte() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(limit=100, per_stream=64)
        await budget.reserve("a", 64)
        waiting = asyncio.ensure_future(budget.reserve("b", 64))  # 128 > 100
        await asyncio.sleep(0)
        assert not waiting.done()
        budget.release("a", 64)
        assert await waiting == 64

    asyncio.run(scenario())


def test_a_frame_that_costs_nothing_takes_nothing() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(limit=10, per_stream=10)
        assert (await budget.reserve("a", 0), await budget.reserve("a", -5), budget.held) == (0, 0, 0)

    asyncio.run(scenario())


def test_closing_one_stream_leaves_the_others_waits_alone() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(limit=50, per_stream=50)
        await budget.reserve("bb", 50)
        waiting_a = asyncio.ensure_future(budget.reserve("aa", 20))  # "aa" sorts before "bb"
        waiting_b = asyncio.ensure_future(budget.reserve("bb", 10))
        await asyncio.sleep(0)
        budget.close_stream("".join(["b", "b"]))  # as the server builds keys: an equal string, another object
        assert await waiting_a == 20
        with pytest.raises(asyncio.CancelledError):
            await waiting_b
        assert budget.held == 20

    asyncio.run(scenario())


def test_a_wait_granted_as_it_is_cancelled_gives_the_bytes_back() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(limit=100, per_stream=100)
        await budget.reserve("a", 100)
        waiting = asyncio.ensure_future(budget.reserve("b", 60))
        await asyncio.sleep(0)
        budget.release("a", 100)  # grants b's wait...
        waiting.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (budget.held, budget.held_by("b")) == (0, 0)

    asyncio.run(scenario())


def test_a_stream_gone_leaves_no_entry_behind() -> None:
    # Memory over a long-running server: one entry per stream that ever held a frame would leak.
    async def scenario() -> None:
        budget = MemoryBudget(limit=100, per_stream=100)
        for i in range(3):
            await budget.reserve(f"s{i}", 10)
            if i:
                budget.release(f"s{i}", 10)  # its last frame answered
            else:
                budget.close_stream(f"s{i}")  # ended
        assert budget._by_stream == {} and budget.held == 0

    asyncio.run(scenario())


def test_a_share_of_one_byte_is_a_share_and_none_is_refused() -> None:
    assert MemoryBudget(limit=1, per_stream=1).per_stream == 1
    with pytest.raises(ValueError, match="per stream"):
        MemoryBudget(limit=10, per_stream=0)


def test_a_cancelled_wait_of_a_stream_holding_frames_keeps_what_it_holds() -> None:
    async def scenario() -> None:
        budget = MemoryBudget(limit=100, per_stream=40)
        await budget.reserve("a", 30)  # a frame in flight
        waiting = asyncio.ensure_future(budget.reserve("a", 30))  # over its share: waits
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (budget.held, budget.held_by("a")) == (30, 30)

    asyncio.run(scenario())
