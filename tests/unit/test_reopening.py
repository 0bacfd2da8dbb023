"""capture.Reopening: a live source opened again when it stops, on a scripted clock.

Each fake source delivers its frames at given seconds (the clock is set to each as the frame
comes); the fake wait moves the clock by the pause it is asked for, so every try, gap and word
is exact."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from polypstream.capture import CapturedFrame, Reopening, SourceError, endless

URL = "rtsp://nurse:secret@scope/live"
SHOWN = "rtsp://***@scope/live"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeSource:
    """A live source whose frames come at `times` (seconds on the clock), then it stops."""

    clock: Clock
    times: Sequence[float]
    uri: str = URL
    realtime: bool = False
    frame_rate: float = 10.0
    fps: float = 10.0
    frame_count: int | None = None

    def __iter__(self) -> Iterator[CapturedFrame]:
        for i, t in enumerate(self.times):
            self.clock.now = t
            yield CapturedFrame(i, np.full((2, 2, 3), i, np.uint8), i / self.fps)


@dataclass
class Script:
    """What each try to open the source again gives: a source delivering frames at the times
    listed, or (a string) a SourceError; past the list, a refusal. The clock at each try and
    the open timeout it was given are kept."""

    clock: Clock
    outcomes: list[Sequence[float] | str]
    tries: list[tuple[float, float]] = field(default_factory=list)

    def __call__(self, timeout_s: float) -> FakeSource:
        self.tries.append((self.clock.now, timeout_s))
        outcome = self.outcomes.pop(0) if self.outcomes else f"{URL}: cannot open"
        if isinstance(outcome, str):
            raise SourceError(outcome)
        return FakeSource(self.clock, outcome)


def reopening(
    first: Sequence[float],
    outcomes: list[Sequence[float] | str],
    window_s: float,
    stop: threading.Event | None = None,
) -> tuple[Reopening, Script, list[str], Clock]:
    clock, said = Clock(), []
    script = Script(clock, outcomes)
    stop = stop or threading.Event()

    def wait(seconds: float) -> bool:
        clock.now += seconds
        return stop.is_set()

    source = Reopening(
        FakeSource(clock, first),
        window_s,
        stop=stop,
        report=said.append,
        opener=script,
        clock=clock,
        wait=wait,
    )
    return source, script, said, clock


def test_a_source_that_stops_is_opened_again_and_its_frames_are_numbered_on() -> None:
    source, script, said, _ = reopening([0.5, 0.6, 0.7], ["refused", "refused", [7.5, 7.6]], window_s=30)
    frames = list(source)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.pts_s for f in frames] == pytest.approx([0.0, 0.1, 0.2, 7.0, 7.1])  # from its first frame
    assert [int(f.image[0, 0, 0]) for f in frames] == [0, 1, 2, 0, 1]  # the new source's own frames
    # at once, then 0.25 s and 0.5 s later; each may take what is left of the window (at most 10 s);
    # a second stop is tried at once again
    assert script.tries[:5] == [(0.7, 10.0), (0.95, 10.0), (1.45, 10.0), (7.6, 10.0), (7.85, 10.0)]
    assert source.gaps_s == pytest.approx([6.8]) and source.reopens == 1
    assert said == [
        "the source stopped delivering frames after frame 2; opening it again for up to 30 s",
        "the source is back after 6.8 s without frames; frames go on from 3",
        "the source stopped delivering frames after frame 4; opening it again for up to 30 s",
    ]
    # and the second stop, with no source left in the script: tried until its window passed
    assert source.gave_up == (
        "the source stopped delivering frames after frame 4 and did not come back within 30 s "
        f"(last try: {SHOWN}: cannot open)"
    )


def test_a_source_that_does_not_come_back_is_tried_until_its_window_passes() -> None:
    source, script, said, _ = reopening([0.0], [], window_s=10)
    assert [f.index for f in source] == [0]
    # pauses 0.25, 0.5, 1, 2, then 2 s apart; the try that would start with no more than its pause
    # left in the window is not made
    assert script.tries == [
        (0.0, 10.0),
        (0.25, 9.75),
        (0.75, 9.25),
        (1.75, 8.25),
        (3.75, 6.25),
        (5.75, 4.25),
        (7.75, 2.25),
        (9.75, 0.25),
    ]
    assert len(said) == 1 and source.gaps_s == []
    assert source.gave_up == (
        "the source stopped delivering frames after frame 0 and did not come back within 10 s "
        f"(last try: {SHOWN}: cannot open)"
    )


def test_no_try_is_made_with_no_more_than_its_pause_left_and_each_gets_at_least_a_tenth_of_a_second() -> None:
    source, script, _, _ = reopening([0.0], [], window_s=0.25)
    list(source)
    assert script.tries == [(0.0, 0.25)]  # 0.25 s left, the pause 0.25 s: given up
    source, script, _, _ = reopening([0.0], [], window_s=0.3)
    list(source)
    (first, second) = script.tries
    assert first == (0.0, 0.3) and second == pytest.approx((0.25, 0.1))  # 0.05 s left: the open may take 0.1 s


def test_a_source_that_opens_and_delivers_nothing_is_the_same_stop() -> None:
    source, script, said, _ = reopening([0.0, 0.1], [[], []], window_s=2)
    assert [f.index for f in source] == [0, 1]
    assert said == ["the source stopped delivering frames after frame 1; opening it again for up to 2 s"]
    assert [t for t, _ in script.tries] == pytest.approx([0.1, 0.35, 0.85, 1.85])
    assert source.gave_up == (
        "the source stopped delivering frames after frame 1 and did not come back within 2 s "
        f"(last try: {SHOWN}: cannot open)"
    )


def test_the_last_try_opening_without_a_frame_is_said_so() -> None:
    source, script, _, _ = reopening([0.0], [[], []], window_s=0.5)
    list(source)
    assert len(script.tries) == 2
    assert source.gave_up == (
        "the source stopped delivering frames after frame 0 and did not come back within 0.5 s "
        "(it opened again, but delivered no frame)"
    )


def test_a_stalled_source_counts_its_gap_from_before_the_stall() -> None:
    """A stalled stream's read fails after its timeout, and its decoder then hands out the frames
    it held, at once: the gap starts at the last frame before the stall, not at those."""
    source, _, said, _ = reopening([0.0, 0.1, 0.2, 10.2, 10.2, 10.2], [[15.2, 15.3]], window_s=30)
    assert [f.index for f in source] == list(range(8))
    assert said[0] == (
        "the source stopped delivering frames after frame 5 (no new frame for 10.0 s); opening it again for up to 30 s"
    )
    assert said[1] == "the source is back after 15.0 s without frames; frames go on from 6"
    assert source.gaps_s[0] == pytest.approx(15.0)


def test_a_wait_of_exactly_the_stall_time_is_a_stall() -> None:
    source, _, said, _ = reopening([0.0, 1.0, 1.0], [[3.0]], window_s=30)
    list(source)
    assert said[0] == (
        "the source stopped delivering frames after frame 2 (no new frame for 1.0 s); opening it again for up to 30 s"
    )
    assert source.gaps_s[0] == pytest.approx(3.0)


def test_a_slow_frame_followed_by_frames_at_their_pace_is_no_stall() -> None:
    source, _, said, _ = reopening([0.0, 2.0, 2.1], [[5.1]], window_s=30)
    list(source)
    assert said[0] == "the source stopped delivering frames after frame 2; opening it again for up to 30 s"
    assert source.gaps_s[0] == pytest.approx(3.0)


def test_with_no_window_the_source_ends_with_its_stop_and_says_so() -> None:
    source, script, said, _ = reopening([0.0, 0.1, 0.2], [], window_s=0)
    assert [f.index for f in source] == [0, 1, 2]
    assert script.tries == [] and said == []
    assert source.gave_up == "the source stopped delivering frames after frame 2"


def test_a_source_that_delivers_nothing_at_all_says_it_stopped_at_once() -> None:
    source, _, said, _ = reopening([], [], window_s=0.2)
    assert list(source) == []
    assert said == ["the source stopped delivering frames at once; opening it again for up to 0.2 s"]
    assert source.gave_up.startswith("the source stopped delivering frames at once and did not come back within 0.2 s")


def test_stop_ends_a_wait_for_the_source_without_giving_up() -> None:
    stop = threading.Event()
    source, script, _, _ = reopening([0.0], ["refused"], window_s=30, stop=stop)
    frames = iter(source)
    assert next(frames).index == 0
    stop.set()  # Ctrl-C while it is being tried again
    assert list(frames) == []
    assert script.tries == [] and source.gave_up == ""


def test_stop_during_the_pause_between_tries_ends_it() -> None:
    stop = threading.Event()
    source, script, _, clock = reopening([0.0], [], window_s=30, stop=stop)

    def opener(timeout_s: float) -> FakeSource:
        script.tries.append((clock.now, timeout_s))
        stop.set()  # Ctrl-C during the first try
        raise SourceError("refused")

    source._open = opener
    assert [f.index for f in source] == [0]
    assert len(script.tries) == 1 and source.gave_up == ""


@pytest.mark.parametrize(
    ("uri", "frame_count", "expected"),
    [
        ("rtsp://scope/live", None, True),
        ("http://scope/live.ts", None, True),
        ("0", None, True),  # a capture device
        ("http://host/clip.mp4", 64, False),  # a file served over HTTP ends where it ends
        ("clip.mp4", None, False),
        ("clip.mp4", 64, False),
    ],
)
def test_only_a_live_source_without_a_frame_count_is_endless(uri: str, frame_count: int | None, expected: bool) -> None:
    assert endless(FakeSource(Clock(), [], uri=uri, frame_count=frame_count)) is expected  # type: ignore[arg-type]
