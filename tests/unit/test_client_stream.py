"""client.Stream: a stream carried over a server that goes away, against a scripted client.

Each call of the fake client takes some frames from the stream, answers some of them, then
ends as told (UNAVAILABLE, another status, or normally once the frames run out), as a real
call does; `connected()` becomes done after a set number of looks. Every count is exact."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest

import polypstream.client as client_module
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.capture import CapturedFrame
from polypstream.client import Answer, SourceWatch, Stream, Watched
from polypstream.frames import FrameOptions

NO_DROP, LIVE = FrameOptions(no_drop=True), FrameOptions(no_drop=False)


class Ended(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "server shutting down") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@dataclass
class Call:
    """One scripted call: take `takes` frames, answer the first `answers` of them, then raise
    `ends` (None: take every frame and answer each, ending normally)."""

    takes: int = 0
    answers: int = 0
    ends: grpc.StatusCode | None = None


class Looks:
    """A `connected()` future done from its `after`-th look on; each look takes half a second
    of the client's clock (nothing else moves it)."""

    def __init__(self, after: int, client: ScriptedClient) -> None:
        self.after, self.client, self.looked, self.cancelled = after, client, 0, False

    def done(self) -> bool:
        self.looked += 1
        self.client.now += 0.5
        return self.looked >= self.after

    def cancel(self) -> bool:
        assert not self.cancelled, "cancelled twice: gRPC's future raises TypeError then"
        self.cancelled = True
        return True


@dataclass
class ScriptedClient:
    calls: list[Call]
    looks_until_connected: int = 1
    sent: list[list[int]] = field(default_factory=list)  # the frame indices each call took
    futures: list[Looks] = field(default_factory=list)
    now: float = 100.0  # the Stream's clock

    def clock(self) -> float:
        return self.now

    def connected(self) -> Looks:
        self.futures.append(Looks(self.looks_until_connected, self))
        return self.futures[-1]

    def stop_watching(self, connecting: Looks) -> None:
        connecting.cancel()

    def stream(self, frames: Iterator[CapturedFrame], options: FrameOptions, **kwargs: Any) -> Stream:
        return Stream(self, frames, "s", options, clock=self.clock, **kwargs)  # type: ignore[arg-type]

    def segment(self, frames: Iterable[pb.Frame]) -> Iterator[Answer]:
        call = self.calls.pop(0)
        iterator = iter(frames)
        taken = [f for f in (next(iterator, None) for _ in range(call.takes)) if f is not None]
        if call.ends is None:
            taken += list(iterator)
        self.sent.append([f.index for f in taken])
        for f in taken[: len(taken) if call.ends is None else call.answers]:
            yield Answer(pb.FrameResult(stream_id=f.stream_id, index=f.index), latency_s=0.001)
        if call.ends is not None:
            raise Ended(call.ends)


def frames(n: int, taken: list[int] | None = None) -> Iterator[CapturedFrame]:
    for i in range(n):
        if taken is not None:
            taken.append(i)
        yield CapturedFrame(i, np.zeros((2, 2, 3), np.uint8), i / 25)


def run(stream: Stream) -> list[int]:
    """The indices answered, each paired with the frame it answers."""
    pairs = [(frame.index, answer.result.index) for frame, answer in stream]
    assert all(sent == answered for sent, answered in pairs)
    return [answered for _, answered in pairs]


# CANCELLED: a call the server had not yet handed to its handler when it stopped (grpc/grpc#41785)
@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED])
def test_a_file_stream_sends_its_unanswered_frames_again_and_loses_none(code: grpc.StatusCode) -> None:
    client = ScriptedClient([Call(takes=5, answers=3, ends=code), Call()])
    said: list[str] = []
    stream = client.stream(frames(10), NO_DROP, reconnect_s=1, report=said.append)
    assert run(stream) == list(range(10))
    assert client.sent == [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7, 8, 9]]
    assert (stream.sent, stream.resent, stream.reconnects, stream.lost, stream.unsent) == (10, 2, 1, 0, 0)
    assert said[0] == (
        f"the stream's call ended ({code.name}: server shutting down); trying the server again for up to 1 s; "
        "the 2 frames sent and not answered will be sent again"
    )
    assert said[1] == "reconnected after 0.5 s; the stream goes on"
    assert [f.looked for f in client.futures] == [1]  # connected at the first look: a new call at once
    assert all(f.cancelled for f in client.futures)


def test_a_live_stream_goes_on_from_its_newest_frame_and_counts_the_frames_without_a_result() -> None:
    # The first call takes 0–3 and answers 0–1; while the channel is not connected (two looks)
    # the source is read at its pace and 4, 5 are not sent; the next call gets 6–9.
    client = ScriptedClient([Call(takes=4, answers=2, ends=grpc.StatusCode.UNAVAILABLE), Call()], 3)
    said: list[str] = []
    stream = client.stream(frames(10), LIVE, reconnect_s=30, report=said.append)
    assert run(stream) == [0, 1, 6, 7, 8, 9]
    assert client.sent == [[0, 1, 2, 3], [6, 7, 8, 9]]
    assert (stream.sent, stream.resent, stream.reconnects, stream.lost, stream.unsent) == (8, 0, 1, 2, 2)
    assert said[0].endswith("2 frames sent and not answered; frames read meanwhile are not sent")
    assert said[1] == "reconnected after 1.5 s; the stream goes on"


def test_calls_refused_at_once_are_retried_after_a_pause_within_one_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "RETRY_PAUSE_S", 2.0)
    unavailable = grpc.StatusCode.UNAVAILABLE
    # A draining server: connected all along, the call after the first one refused at once.
    calls = [Call(takes=2, answers=2, ends=unavailable), Call(takes=1, ends=unavailable), Call()]
    client = ScriptedClient(calls)
    said: list[str] = []
    stream = client.stream(frames(5), NO_DROP, reconnect_s=30, report=said.append)
    assert run(stream) == list(range(5))
    assert client.sent == [[0, 1], [2], [2, 3, 4]]
    assert (stream.sent, stream.reconnects, stream.resent) == (5, 1, 1)
    assert said == [  # one outage: its start and its end told once each
        "the stream's call ended (UNAVAILABLE: server shutting down); trying the server again for up to 30 s; "
        "the 0 frames sent and not answered will be sent again",
        "reconnected after 2.5 s; the stream goes on",
    ]
    first, second = client.futures
    assert (first.looked, second.looked) == (1, 4)  # the first new call at once, the next after the 2 s pause


@pytest.mark.parametrize(
    ("code", "reconnect_s"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 30.0),
        (grpc.StatusCode.UNAUTHENTICATED, 30.0),
        (grpc.StatusCode.UNAVAILABLE, 0.0),
        (grpc.StatusCode.UNAVAILABLE, -1.0),
    ],
)
def test_other_endings_and_no_reconnect_are_raised_at_once(code: grpc.StatusCode, reconnect_s: float) -> None:
    client = ScriptedClient([Call(takes=3, answers=1, ends=code), Call()])
    stream = client.stream(frames(6), NO_DROP, reconnect_s=reconnect_s)
    answered: list[int] = []
    with pytest.raises(Ended) as ended:
        for _, answer in stream:
            answered.append(answer.result.index)
    assert ended.value.code() == code and answered == [0]
    assert len(client.calls) == 1 and client.futures == []  # no second call, no wait


@pytest.mark.parametrize("reconnect_s", [3.0, 2.75])  # the clock reaching the deadline, or passing it
def test_a_server_that_does_not_come_back_in_time_ends_the_stream_with_the_calls_error(reconnect_s: float) -> None:
    client = ScriptedClient([Call(takes=3, answers=1, ends=grpc.StatusCode.UNAVAILABLE)], looks_until_connected=10**9)
    stream = client.stream(frames(6), NO_DROP, reconnect_s=reconnect_s)
    with pytest.raises(Ended) as ended:
        list(stream)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert client.futures[0].cancelled and client.calls == []
    assert client.futures[0].looked == 6  # a look each half second, until the deadline


def test_a_file_stream_read_to_its_end_whose_server_does_not_come_back_raises() -> None:
    # Every frame was handed to the call (the source has ended) but 4 are unanswered: an error,
    # not an end (replay found a video counted done with frames missing, its server gone).
    client = ScriptedClient([Call(takes=7, answers=2, ends=grpc.StatusCode.UNAVAILABLE)], looks_until_connected=10**9)
    stream = client.stream(frames(6), NO_DROP, reconnect_s=1)
    answered: list[int] = []
    with pytest.raises(Ended):
        for _, answer in stream:
            answered.append(answer.result.index)
    assert answered == [0, 1] and client.sent == [[0, 1, 2, 3, 4, 5]]


def test_a_live_source_that_ends_while_no_server_answers_ends_the_stream_with_its_counts() -> None:
    client = ScriptedClient([Call(takes=4, answers=3, ends=grpc.StatusCode.UNAVAILABLE)], looks_until_connected=10**9)
    stream = client.stream(frames(9), LIVE, reconnect_s=30)
    assert run(stream) == [0, 1, 2]
    assert (stream.sent, stream.lost, stream.unsent, stream.reconnects) == (4, 1, 5, 0)
    assert client.futures[0].looked == 6  # a look before each of frames 4–8 and the source's end: then no more


def test_a_file_stream_whose_every_frame_was_answered_before_the_call_ended_needs_no_new_call() -> None:
    client = ScriptedClient([Call(takes=4, answers=3, ends=grpc.StatusCode.UNAVAILABLE)])
    stream = client.stream(frames(3), NO_DROP, reconnect_s=30)
    assert run(stream) == [0, 1, 2]
    assert client.futures == []


def test_stop_ends_a_wait_for_the_server_at_once_without_an_error() -> None:
    stop = threading.Event()
    stop.set()  # Ctrl-C came while the call was failing
    client = ScriptedClient([Call(takes=2, answers=1, ends=grpc.StatusCode.UNAVAILABLE)], looks_until_connected=10**9)
    taken: list[int] = []
    stream = client.stream(frames(9, taken), LIVE, reconnect_s=30, stop=stop)
    with pytest.raises(Ended):  # stop set before the call ended: nothing is sought, the ending is raised
        list(stream)
    stop.clear()

    class StopOnFirstLook(Looks):
        def done(self) -> bool:
            stop.set()
            return False

    client = ScriptedClient([Call(takes=2, answers=1, ends=grpc.StatusCode.UNAVAILABLE)])
    client.connected = lambda: StopOnFirstLook(1, client)  # type: ignore[method-assign]
    taken.clear()
    stream = client.stream(frames(9, taken), LIVE, reconnect_s=30, stop=stop)
    assert run(stream) == [0]
    assert taken == [0, 1] and stream.unsent == 0  # Ctrl-C while waiting: no frame read after it


# --- SourceWatch: a server-side source's results carried over a server that goes away ---------


class WatchCall:
    """One scripted Watch call: yields results of `indices`, then ends with `ends` (None: the
    source ended); cancel() ends it at the next result with CANCELLED."""

    def __init__(self, indices: list[int], ends: grpc.StatusCode | None) -> None:
        self.indices, self.ends, self.cancelled = indices, ends, False

    def __iter__(self) -> Iterator[Watched]:
        for i in self.indices:
            if self.cancelled:
                raise Ended(grpc.StatusCode.CANCELLED, "cancelled")
            yield Watched(pb.FrameResult(stream_id="scope", index=i))
        if self.ends is not None:
            raise Ended(self.ends, "server shutting down: source 'scope' reads no more frames")

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class ScriptedWatches(ScriptedClient):
    watches: list[WatchCall] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    def watch(self, source: str, options: FrameOptions | None = None) -> WatchCall:
        self.asked.append(source)
        return self.watches.pop(0)

    def source_watch(self, **kwargs: Any) -> SourceWatch:
        return SourceWatch(self, "scope", clock=self.clock, **kwargs)  # type: ignore[arg-type]


def test_a_watch_goes_on_after_its_server_restarts_and_says_so() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    client = ScriptedWatches([])
    client.watches = [WatchCall([0, 1, 2], unavailable), WatchCall([0, 1], None)]  # the new server counts from 0
    said: list[str] = []
    watch = client.source_watch(reconnect_s=1, report=said.append)
    assert [w.result.index for w in watch] == [0, 1, 2, 0, 1]
    assert client.asked == ["scope", "scope"] and watch.reconnects == 1
    assert said == [
        "the watch ended (UNAVAILABLE: server shutting down: source 'scope' reads no more frames); trying the "
        "server again for up to 1 s",
        "reconnected after 0.5 s; the watch goes on",  # one look of half a second
    ]


def test_a_watch_refused_by_a_draining_server_is_tried_again_after_a_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "RETRY_PAUSE_S", 2.0)
    unavailable = grpc.StatusCode.UNAVAILABLE
    client = ScriptedWatches([])
    client.watches = [WatchCall([0], unavailable), WatchCall([], unavailable), WatchCall([0], None)]
    watch = client.source_watch(reconnect_s=30)
    assert [w.result.index for w in watch] == [0, 0]
    assert watch.reconnects == 1 and [f.looked for f in client.futures] == [1, 4]


@pytest.mark.parametrize(
    ("code", "reconnect_s"),
    [(grpc.StatusCode.NOT_FOUND, 30.0), (grpc.StatusCode.UNAVAILABLE, 0.0), (grpc.StatusCode.UNAVAILABLE, -1.0)],
)
def test_a_watch_that_ends_otherwise_or_may_not_reconnect_raises(code: grpc.StatusCode, reconnect_s: float) -> None:
    client = ScriptedWatches([])
    client.watches = [WatchCall([0], code), WatchCall([0], None)]
    with pytest.raises(Ended) as ended:
        list(client.source_watch(reconnect_s=reconnect_s))
    assert ended.value.code() == code and len(client.watches) == 1 and client.futures == []


def test_a_watch_whose_server_does_not_come_back_raises_at_its_deadline() -> None:
    client = ScriptedWatches([], looks_until_connected=10**9)
    client.watches = [WatchCall([0], grpc.StatusCode.UNAVAILABLE)]
    with pytest.raises(Ended) as ended:
        list(client.source_watch(reconnect_s=2.75))
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and client.futures[0].looked == 6


def test_cancel_ends_a_watch_at_once_even_while_it_waits_for_the_server() -> None:
    client = ScriptedWatches([])
    client.watches = [WatchCall([0, 1, 2], None)]
    watch = client.source_watch(reconnect_s=30)
    seen = []
    with pytest.raises(Ended) as ended:
        for w in watch:
            seen.append(w.result.index)
            watch.cancel()  # from another thread, in the CLI (Ctrl-C, --seconds)
    assert seen == [0] and ended.value.code() == grpc.StatusCode.CANCELLED

    client = ScriptedWatches([], looks_until_connected=10**9)
    client.watches = [WatchCall([0], grpc.StatusCode.UNAVAILABLE)]
    watch = client.source_watch(reconnect_s=30)

    class CancelOnFirstLook(Looks):
        def done(self) -> bool:
            watch.cancel()
            return False

    client.connected = lambda: CancelOnFirstLook(1, client)  # type: ignore[method-assign]
    assert [w.result.index for w in watch] == [0]  # the wait ended, without an error


class Gate:
    """A live source whose frames the test lets out: `deliver(n)` lets out n more and returns
    once the reader has taken them all (it asks for the next; `read_by_call`: the call itself
    reads them as it takes them, there is nothing to wait for); `finish()` ends it."""

    def __init__(self, read_by_call: bool = False) -> None:
        self._cond = threading.Condition()
        self.allowed = self.asked = 0
        self.ended = False
        self.read_by_call = read_by_call

    def frames(self) -> Iterator[CapturedFrame]:
        i = 0
        while True:
            with self._cond:
                self.asked = i  # frames before i have been taken by the reader
                self._cond.notify_all()
                self._cond.wait_for(lambda n=i: self.allowed > n or self.ended)  # type: ignore[misc]
                if self.allowed <= i:
                    return
            yield CapturedFrame(i, np.zeros((2, 2, 3), np.uint8), i / 25)
            i += 1

    def deliver(self, n: int) -> None:
        with self._cond:
            self.allowed += n
            self._cond.notify_all()
            assert self.read_by_call or self._cond.wait_for(lambda: self.asked == self.allowed, 10), (
                "the reader took no frame"
            )

    def finish(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()


Step = tuple[int, float]  # (frames the source delivers, the clock when they come)


@dataclass
class PacedClient:
    """A call that lets the source out as scripted: before the call takes its k-th frame, the
    source delivers `script[k]`; each frame taken is answered at once; past the script the source
    ends. With `ends_after`, the call ends UNAVAILABLE after taking that many frames, unanswered,
    the source having delivered `script_after` meanwhile; the next call follows the script on."""

    gate: Gate
    script: list[Step]
    ends_after: int | None = None
    script_after: list[Step] = field(default_factory=list)
    finish_after: bool = False  # the source ends too, while no server answers
    looks: int = 1  # the server answers again at the looks-th look (each look but the last reads the source)
    sent: list[list[int]] = field(default_factory=list)
    now: float = 0.0

    def clock(self) -> float:
        return self.now

    def connected(self) -> Looks:
        return Looks(self.looks, self)  # type: ignore[arg-type]

    def deliver(self, steps: list[Step]) -> None:
        for n, at in steps:
            self.now = at
            self.gate.deliver(n)

    def segment(self, frames: Iterable[pb.Frame]) -> Iterator[Answer]:
        iterator = iter(frames)
        self.sent.append([])
        while True:
            if self.ends_after is not None and len(self.sent[-1]) == self.ends_after:
                self.ends_after = None
                self.deliver(self.script_after)
                if self.finish_after:
                    self.gate.finish()
                raise Ended(grpc.StatusCode.UNAVAILABLE)
            if self.script:
                self.deliver([self.script.pop(0)])
            else:
                self.gate.finish()
            frame = next(iterator, None)
            if frame is None:
                return
            self.sent[-1].append(frame.index)
            if self.ends_after is None:
                yield Answer(pb.FrameResult(stream_id=frame.stream_id, index=frame.index), latency_s=0.001)


def keeping_up(client: PacedClient, **kwargs: Any) -> Stream:
    return Stream(client, client.gate.frames(), "s", LIVE, keep_up=True, clock=client.clock, **kwargs)  # type: ignore[arg-type]


def test_a_live_stream_that_keeps_up_sends_a_burst_whole_and_skips_the_frames_that_aged_out() -> None:
    client = PacedClient(Gate(), script=[(3, 0.0), (0, 0.0), (1, 1.0), (6, 1.0)])
    stream = keeping_up(client)
    # 0-2 come at once and go; 3 comes 1 s after 2, which had not gone: 2 aged out; 4-9 come at
    # once, and only the last four are kept
    assert run(stream) == [0, 1, 3, 6, 7, 8, 9]
    assert (stream.sent, stream.skipped, stream.lost, stream.unsent) == (7, 3, 0, 0)


def test_without_keep_up_a_live_stream_sends_every_frame_as_the_call_takes_it() -> None:
    gate = Gate(read_by_call=True)
    client = PacedClient(gate, script=[(1, 0.0), (1, 1.0), (1, 2.0)])
    stream = Stream(client, gate.frames(), "s", LIVE, clock=client.clock)  # type: ignore[arg-type]
    assert run(stream) == [0, 1, 2] and stream.skipped == 0


def test_frames_that_aged_out_while_no_server_answered_are_unsent_not_skipped() -> None:
    # call 1 takes frame 0 and ends before answering it; meanwhile 1 and 2 come, and 3 a second
    # later (1 and 2 age out); call 2 takes 3, then 4
    client = PacedClient(Gate(), script=[(1, 0.0), (0, 1.0), (1, 1.0)], ends_after=1, script_after=[(2, 0.0), (1, 1.0)])
    stream = keeping_up(client, reconnect_s=5)
    assert run(stream) == [3, 4]
    assert client.sent == [[0], [3, 4]]
    assert (stream.sent, stream.lost, stream.unsent, stream.skipped, stream.reconnects) == (3, 1, 2, 0, 1)


def test_a_keep_up_stream_holds_at_most_a_fifth_of_a_second_of_frames_in_flight_and_never_under_four() -> None:
    def in_flight(rate: float) -> int:
        return Stream(None, [], "s", FrameOptions(frame_rate=rate), keep_up=True).in_flight_bound()  # type: ignore[arg-type]

    assert [in_flight(rate) for rate in (0, 10, 25, 30, 60)] == [5, 4, 5, 6, 12]  # 0: rate unknown, taken as 25
    stream = Stream(None, [], "s", LIVE, keep_up=True)  # type: ignore[arg-type]
    closed = threading.Event()
    assert stream._room_in(deque([pb.Frame()] * 4), closed)
    assert not stream._room_in(deque([pb.Frame()] * 5), closed)
    closed.set()
    assert not stream._room_in(deque(), closed)  # the call is over: nothing more goes on it


def test_frames_that_aged_out_are_counted_unsent_as_the_wait_for_the_server_reads_them() -> None:
    # while no server answers, the wait reads the source: 2 came 1 s after 1, which aged out
    client = PacedClient(Gate(), script=[(1, 0.0)], ends_after=1, script_after=[(1, 0.0), (1, 1.0)], looks=2)
    stream = keeping_up(client, reconnect_s=5)
    assert run(stream) == []
    assert client.sent == [[0], []]
    assert (stream.sent, stream.lost, stream.unsent, stream.skipped) == (1, 1, 2, 0)


def test_a_source_with_no_frame_for_a_while_during_an_outage_has_not_ended() -> None:
    # no frame comes while the server is sought (each read waits FRESH_POLL_S and finds none): the
    # stream waits on, and the next call takes the source's next frame
    client = PacedClient(Gate(), script=[(1, 0.0), (1, 2.0)], ends_after=1, looks=3)
    stream = keeping_up(client, reconnect_s=5)
    assert run(stream) == [1]
    assert client.sent == [[0], [1]] and stream.reconnects == 1


def test_a_live_source_that_ends_while_no_server_answers_ends_the_stream_there() -> None:
    client = PacedClient(Gate(), script=[(1, 0.0)], ends_after=1, script_after=[(1, 0.0)], finish_after=True, looks=3)
    stream = keeping_up(client, reconnect_s=5)
    assert run(stream) == []
    assert client.sent == [[0]]  # no new call: the source had ended
    assert (stream.lost, stream.unsent, stream.reconnects) == (1, 1, 0)


def test_a_keep_up_stream_waits_for_a_source_slower_than_its_poll() -> None:
    def slow() -> Iterator[CapturedFrame]:
        for i in range(3):
            time.sleep(3 * client_module.FRESH_POLL_S)  # the call looks for a frame and finds none, twice or more
            yield CapturedFrame(i, np.zeros((2, 2, 3), np.uint8), i / 25)

    client = ScriptedClient([Call()])
    stream = client.stream(slow(), LIVE, keep_up=True)
    assert run(stream) == [0, 1, 2] and stream.skipped == 0


def test_a_frame_exactly_a_fifth_of_a_second_older_than_the_newest_is_still_fresh() -> None:
    now = [0.0]
    gate = Gate()
    fresh = client_module._Fresh(gate.frames(), lambda: now[0])
    fresh.start()
    gate.deliver(1)
    now[0] = client_module.LIVE_IN_FLIGHT_S
    gate.deliver(1)
    frame, dropped = fresh.take(1.0)
    assert frame is not None and (frame.index, dropped) == (0, 0)
    fresh.close()
    gate.finish()


@dataclass
class GrpcLikeClient:
    """A call that reads its frames on a thread of its own, as gRPC does, and answers none until
    `hold_s` after the `first` frame has come; then each, as it comes."""

    first: int
    hold_s: float
    read_in_hold: int = 0  # frames the call had read when the hold ended

    def segment(self, frames: Iterable[pb.Frame]) -> Iterator[Answer]:
        read: queue.Queue[pb.Frame | None] = queue.Queue()

        def consume() -> None:
            for frame in frames:
                read.put(frame)
            read.put(None)

        threading.Thread(target=consume, daemon=True).start()
        deadline = time.monotonic() + 30
        while read.qsize() < self.first:
            assert time.monotonic() < deadline, "the call never got its first frames"
            time.sleep(0.005)
        time.sleep(self.hold_s)
        self.read_in_hold = read.qsize()
        while (frame := read.get(timeout=30)) is not None:
            yield Answer(pb.FrameResult(stream_id=frame.stream_id, index=frame.index), latency_s=0.001)


def test_a_keep_up_call_with_its_frames_in_flight_unanswered_is_sent_no_more_and_goes_on_when_answered() -> None:
    def camera() -> Iterator[CapturedFrame]:  # a frame every 10 ms
        for i in range(40):
            time.sleep(0.01)
            yield CapturedFrame(i, np.zeros((2, 2, 3), np.uint8), i / 100)

    client = GrpcLikeClient(first=5, hold_s=0.3)
    stream = Stream(client, camera(), "s", LIVE, keep_up=True)  # type: ignore[arg-type]
    answered = run(stream)
    assert client.read_in_hold == 5  # 0.2 s of 25 fps video in flight, and no more for 0.3 s
    assert answered == sorted(answered) and answered[-1] == 39  # then on, to the source's last frame
    assert stream.sent == len(answered) and stream.sent + stream.skipped == 40  # every frame sent or counted


def test_a_keep_up_stream_left_early_stops_reading_its_source() -> None:
    released, read = threading.Event(), []

    def camera() -> Iterator[CapturedFrame]:  # no end of its own
        try:
            for i in itertools.count():
                read.append(i)
                time.sleep(0.01)
                yield CapturedFrame(i, np.zeros((2, 2, 3), np.uint8), i / 100)
        finally:
            released.set()  # what a VideoSource does: release its capture

    class EachClient:  # answers each frame as it takes it
        def segment(self, frames: Iterable[pb.Frame]) -> Iterator[Answer]:
            for frame in frames:
                yield Answer(pb.FrameResult(stream_id=frame.stream_id, index=frame.index), latency_s=0.001)

    answers = iter(Stream(EachClient(), camera(), "s", LIVE, keep_up=True))  # type: ignore[arg-type]
    assert next(answers)[1].result.index == 0
    answers.close()  # the caller is done with the stream
    assert released.wait(10), "the source was still being read"


def test_the_bound_in_flight_grows_with_the_shortest_round_trip_seen() -> None:
    class SlowAnswers:  # answers each frame as it takes it, after the round trips listed
        def __init__(self, latencies: list[float]) -> None:
            self.latencies = latencies

        def segment(self, frames: Iterable[pb.Frame]) -> Iterator[Answer]:
            for frame, latency in zip(frames, self.latencies, strict=False):
                yield Answer(pb.FrameResult(stream_id=frame.stream_id, index=frame.index), latency_s=latency)

    stream = Stream(SlowAnswers([0.5, 0.3, 0.4]), frames(3), "s", LIVE, keep_up=True)  # type: ignore[arg-type]
    assert stream.in_flight_bound() == 5  # nothing answered yet: 0.2 s of 25 fps video
    assert run(stream) == [0, 1, 2]
    assert stream.in_flight_bound() == 13  # 25 fps over the shortest, 0.3 s, and 0.2 s more
