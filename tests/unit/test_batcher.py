"""Batching and deadline logic with a fake model (no onnxruntime)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from polypstream.batcher import Batcher, BatcherStoppedError, Queued, QueueFullError, ServiceTimeEstimator, _largest
from polypstream.frames import Frame, FrameOptions, Result, Status
from tests.conftest import wait_for


def make_frame(
    index: int, *, budget_s: float = 10.0, no_drop: bool = False, now: float | None = None, stream: str = "s"
) -> Frame:
    now = time.monotonic() if now is None else now
    return Frame(
        stream_key=stream,
        stream_id=stream,
        index=index,
        image=np.zeros((4, 4, 3), np.uint8),
        received_at=now,
        deadline=now + budget_s,
        options=FrameOptions(no_drop=no_drop),
    )


class FakeModel:
    """Records batch sizes; optionally sleeps or fails."""

    def __init__(self, delay_s: float = 0.0, fail_on: set[int] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on or set()

    def __call__(self, batch: list[Queued], launched_at: float) -> list[Result]:
        indexes = [q.frame.index for q in batch]
        self.batches.append(indexes)
        time.sleep(self.delay_s)
        if self.fail_on & set(indexes):
            raise RuntimeError("boom")
        return [Result(stream_id="s", index=i, status=Status.OK) for i in indexes]


class Collector:
    def __init__(self, expected: int) -> None:
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self.done = threading.Event()
        self.expected = expected

    def __call__(self, result: Result) -> None:
        with self._lock:
            self.results.append(result)
            if len(self.results) >= self.expected:
                self.done.set()

    def wait(self) -> list[Result]:
        assert self.done.wait(10), f"only {len(self.results)} of {self.expected} answered"
        return self.results


def test_a_full_batch_is_run_by_the_worker_thread() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch=4, max_wait_s=60, capacity=16)
    collect = Collector(4)
    batcher.open()  # queued before the worker starts: all four are there when it looks
    for i in range(4):
        batcher.submit(make_frame(i), collect)
    batcher.start()
    assert [r.status for r in collect.wait()] == [Status.OK] * 4
    assert model.batches == [[0, 1, 2, 3]]
    batcher.stop()


# --- when a batch launches: on a fake clock ----------------------------------------------


def estimator_of(*runs: tuple[int, float]) -> ServiceTimeEstimator:
    """An estimator (alpha 0.2, spread 2) that has seen these (batch size, seconds) runs, in order."""
    estimator = ServiceTimeEstimator()
    for size, seconds in runs:
        estimator.observe(size, seconds)
    return estimator


def still_batcher(estimator: ServiceTimeEstimator, max_batch: int) -> Batcher:
    """An open batcher (no worker thread) at 100.0 on a clock that does not move."""
    batcher = Batcher(
        FakeModel(), max_batch=max_batch, max_wait_s=0, capacity=8, estimator=estimator, clock=lambda: 100.0
    )
    batcher.open()
    return batcher


def clocked_batcher(clock: list[float], *, max_batch: int = 8, max_wait_s: float = 60.0, **kw: float) -> Batcher:
    """An open batcher (no worker thread) on the clock clock[0]; batches of 1 take 10 ms, of 2
    16 ms, of 8 48 ms (no spread)."""
    estimator = estimator_of((1, 0.010), (2, 0.016), (8, 0.048))
    batcher = Batcher(
        FakeModel(), max_batch=max_batch, max_wait_s=max_wait_s, capacity=64, estimator=estimator,
        clock=lambda: clock[0], **kw,
    )  # fmt: skip
    batcher.open()
    return batcher


def another_stream_just_served(batcher: Batcher, now: float = 100.0) -> None:
    """A live frame of stream "other" comes and is taken at `now`: that stream is active, with
    nothing queued, so a batch may wait for its next frame."""
    batcher.submit(make_frame(-1, now=now, stream="other"), print)
    assert [q.frame.stream_key for q in batcher.plan(now)[0]] == ["other"]


def test_a_full_batch_launches_at_once() -> None:
    clock = [100.0]
    batcher = clocked_batcher(clock, max_batch=2)
    another_stream_just_served(batcher)
    batcher.submit(make_frame(0, now=100.0), print)
    assert batcher.wait_s(100.0) > 0
    batcher.submit(make_frame(1, now=100.0), print)
    assert batcher.wait_s(100.0) == 0.0


def test_a_partial_batch_waits_max_wait_for_more_frames() -> None:
    clock = [100.0]
    batcher = clocked_batcher(clock, max_wait_s=0.004)
    another_stream_just_served(batcher)
    batcher.submit(make_frame(0, now=100.0, budget_s=10.0), print)
    assert batcher.launch_time() == 100.0 + 0.004
    assert batcher.wait_s(100.001) == pytest.approx(0.003, abs=1e-12)
    assert batcher.wait_s(100.004) == 0.0


def test_a_partial_batch_launches_when_waiting_for_one_more_frame_would_miss_the_deadline() -> None:
    # One frame due at 100.050. Waiting for a second means a batch of 2 (16 ms): it must start
    # by 100.034, less the launch margin (2 ms); not by 100.040, the time a batch of 1 allows.
    clock = [100.0]
    batcher = clocked_batcher(clock, launch_margin_s=0.002)
    another_stream_just_served(batcher)
    batcher.submit(make_frame(0, now=100.0, budget_s=0.050), print)
    assert batcher.launch_time() == pytest.approx(100.032, abs=1e-9)
    assert batcher.wait_s(100.010) == pytest.approx(0.022, abs=1e-9)
    assert batcher.wait_s(100.032) == 0.0


def test_the_launch_time_counts_no_frame_past_the_largest_batch() -> None:
    # max_batch 1: no frame can join, so only the batch of 1 (10 ms) must fit.
    clock = [100.0]
    batcher = clocked_batcher(clock, max_batch=1, launch_margin_s=0.0)
    batcher.submit(make_frame(0, now=100.0, budget_s=0.050), print)
    assert batcher.launch_time() == pytest.approx(100.040, abs=1e-9)


def test_the_earliest_deadline_sets_the_launch_time_whatever_the_arrival_order() -> None:
    # Two queued, due at 101.0 and 100.1; a batch of 3 takes 16 + 32/6 ms (between 2 and 8).
    clock = [100.0]
    batcher = clocked_batcher(clock, launch_margin_s=0.0)
    batcher.submit(make_frame(0, now=100.0, budget_s=1.0), print)
    batcher.submit(make_frame(1, now=100.0, budget_s=0.100), print)
    assert batcher.launch_time() == pytest.approx(100.100 - (0.016 + 0.032 / 6), abs=1e-9)


def test_a_batch_does_not_wait_when_every_live_stream_has_a_frame_queued() -> None:
    # One live stream: its next frame comes a frame interval later, so waiting max_wait for
    # more could only delay this one (first light: 2.2 ms of a single stream's 9.3 ms on the H100).
    clock = [100.0]
    batcher = clocked_batcher(clock, max_wait_s=0.004)
    batcher.submit(make_frame(0, now=100.0, stream="a"), print)
    assert batcher.wait_s(100.0) == 0.0
    assert [q.frame.index for q in batcher.plan(100.0)[0]] == [0]
    # A second stream heard from (and served) at 100.0 may send again: wait for it.
    another_stream_just_served(batcher)
    batcher.submit(make_frame(1, now=100.0, stream="a"), print)
    assert batcher.wait_s(100.0) == pytest.approx(0.004, abs=1e-12)
    batcher.submit(make_frame(-2, now=100.0, stream="other"), print)
    assert batcher.wait_s(100.0) == 0.0
    # A stream silent for longer than live_window_s (1 s) no longer counts.
    assert [q.frame.index for q in batcher.plan(100.0)[0]] == [1, -2]
    clock[0] = 101.5
    batcher.submit(make_frame(2, now=101.5, stream="a"), print)
    assert batcher.wait_s(101.5) == 0.0  # "other" was last heard from at 100.0
    batcher.submit(make_frame(3, now=101.5, stream="b"), print)
    batcher.submit(make_frame(4, now=101.5, stream="c", no_drop=True), print)
    assert batcher.wait_s(101.5) == pytest.approx(0.004, abs=1e-12)  # an offline frame: batching pays


def test_a_stopping_batcher_takes_its_last_frames_at_once() -> None:
    clock = [100.0]
    batcher = clocked_batcher(clock)
    batcher.submit(make_frame(0, now=100.0), print)
    batcher.stop()
    assert batcher.wait_s(100.0) == 0.0


def test_a_live_frame_that_cannot_finish_by_its_deadline_is_dropped_before_it_is_late() -> None:
    # Due in 5 ms, a batch of 1 takes 10 ms: hopeless although not yet past its deadline. The
    # fresher frame runs (max_batch 1: were the hopeless one kept, it would take the slot).
    clock = [100.0]
    batcher = clocked_batcher(clock, max_batch=1)
    batcher.submit(make_frame(0, now=99.995, budget_s=0.010), print)  # due at 100.005
    batcher.submit(make_frame(1, now=100.0, budget_s=1.0), print)
    batch, late, _ = batcher.plan(100.0)
    assert ([q.frame.index for q in batch], [q.frame.index for q in late]) == ([1], [0])


def test_a_live_frame_that_can_just_finish_by_its_deadline_is_served() -> None:
    # A batch of 1 takes 1/64 s and the frame has exactly 1/64 s left (binary fractions: exact).
    clock = [100.0]
    batcher = clocked_batcher(clock, max_batch=1)
    batcher.estimator = ServiceTimeEstimator()
    batcher.estimator.observe(1, 1 / 64)
    batcher.submit(make_frame(0, now=100.0, budget_s=1 / 64), print)
    batcher.submit(make_frame(1, now=100.0, budget_s=1.0), print)
    batch, late, _ = batcher.plan(100.0)
    assert ([q.frame.index for q in batch], late) == ([0], [])


def test_offline_frames_alone_wait_for_their_interval_after_live_pressure() -> None:
    clock = [100.0]
    batcher = clocked_batcher(
        clock, max_batch=4, max_wait_s=0.0, offline_interval_s=0.05, live_window_s=1.0, offline_slice_s=0.005
    )  # an offline frame would add 6 ms to the live batch: more than a slice
    batcher.submit(make_frame(10, now=99.0, budget_s=0.04), print)  # hopeless
    batcher.submit(make_frame(11, now=100.0, budget_s=0.04), print)
    batcher.submit(make_frame(0, now=100.0, no_drop=True), print)
    batch, late, _ = batcher.plan(100.0)  # live pressure: a frame was dropped
    assert ([q.frame.index for q in batch], [q.frame.index for q in late]) == ([11], [10])
    assert [q.frame.index for q in batcher.plan(100.0)[0]] == [0]  # one slice of offline work
    batcher.submit(make_frame(1, now=100.0, no_drop=True), print)
    assert batcher.wait_s(100.0) == pytest.approx(0.05, abs=1e-9)  # the next slice: 50 ms later
    assert batcher.wait_s(100.05) == 0.0


def test_late_frames_are_answered_dropped_unless_no_drop() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch=4, max_wait_s=0, capacity=16)
    collect = Collector(3)
    past = time.monotonic() - 1.0
    batcher.open()
    batcher.submit(make_frame(0, budget_s=0.1, now=past), collect)  # already 0.9 s late
    batcher.submit(make_frame(1, budget_s=0.1, now=past, no_drop=True), collect)  # late, but offline
    batcher.submit(make_frame(2), collect)
    batcher.start()
    by_index = {r.index: r for r in collect.wait()}
    assert by_index[0].status is Status.DROPPED_LATE
    assert "deadline" in by_index[0].error
    assert by_index[1].status is Status.OK
    assert by_index[2].status is Status.OK
    assert model.batches == [[2, 1]]  # the live frame first, the offline one in the room left
    batcher.stop()


def test_when_every_frame_is_late_the_freshest_is_served() -> None:
    # Given an estimate far over the budget, dropping everything would stall the stream
    # forever (no batch would run to correct the estimate): the freshest frame is served.
    estimator = ServiceTimeEstimator()
    estimator.observe(1, 5.0)
    model = FakeModel()
    batcher = Batcher(model, max_batch=4, max_wait_s=0, capacity=16, estimator=estimator)
    now = time.monotonic()
    collect = Collector(3)
    batcher.open()
    for i in range(3):
        batcher.submit(make_frame(i, budget_s=0.1, now=now + i * 0.01), collect)
    batcher.start()
    by_index = {r.index: r for r in collect.wait()}
    assert [by_index[i].status for i in range(3)] == [Status.DROPPED_LATE, Status.DROPPED_LATE, Status.OK]
    assert model.batches == [[2]]
    batcher.stop()


def test_failed_batch_fails_only_its_frames() -> None:
    model = FakeModel(fail_on={0})
    batcher = Batcher(model, max_batch=2, max_wait_s=0, capacity=16)
    collect = Collector(4)
    batcher.open()
    for i in range(4):
        batcher.submit(make_frame(i), collect)
    batcher.start()
    by_index = {r.index: r for r in collect.wait()}
    assert [by_index[i].status for i in range(4)] == [Status.FAILED, Status.FAILED, Status.OK, Status.OK]
    assert "inference failed: boom" in by_index[0].error
    batcher.stop()


def test_stop_answers_everything_queued_then_refuses() -> None:
    model = FakeModel(delay_s=0.01)
    batcher = Batcher(model, max_batch=2, max_wait_s=60, capacity=64)
    batcher.start()
    collect = Collector(9)
    for i in range(9):
        batcher.submit(make_frame(i), collect)
    batcher.stop()
    assert sorted(r.index for r in collect.wait()) == list(range(9))
    with pytest.raises(BatcherStoppedError):
        batcher.submit(make_frame(99), collect)


def test_queue_is_bounded() -> None:
    batcher = Batcher(FakeModel(), max_batch=2, max_wait_s=0, capacity=2)
    batcher.open()
    batcher.submit(make_frame(0), lambda r: None)
    batcher.submit(make_frame(1), lambda r: None)
    with pytest.raises(QueueFullError, match="2 frames"):
        batcher.submit(make_frame(2), lambda r: None)


def test_result_callback_error_does_not_stop_the_worker() -> None:
    batcher = Batcher(FakeModel(), max_batch=1, max_wait_s=0, capacity=8)
    batcher.start()

    def explode(result: Result) -> None:
        raise ValueError("client went away")

    batcher.submit(make_frame(0), explode)
    collect = Collector(1)
    batcher.submit(make_frame(1), collect)
    assert collect.wait()[0].status is Status.OK
    batcher.stop()


def test_estimator_interpolates_and_extrapolates() -> None:
    estimator = ServiceTimeEstimator(alpha=0.5)
    assert estimator.estimate(4) == 0.0
    estimator.observe(1, 0.010)
    estimator.observe(8, 0.080)
    assert estimator.estimate(1) == pytest.approx(0.010)
    assert estimator.estimate(4) == pytest.approx(0.040)
    assert estimator.estimate(16) == pytest.approx(0.160)
    estimator.observe(1, 0.020)  # alpha 0.5: mean 0.015, mean deviation 0.005, spread 2
    assert estimator.estimate(1) == pytest.approx(0.015 + 2 * 0.005)


def test_frames_of_closed_streams_are_answered_not_run() -> None:
    model = FakeModel()
    closed = {"gone"}
    batcher = Batcher(model, max_batch=4, max_wait_s=0, capacity=16, discard=lambda f: f.stream_key in closed)
    collect = Collector(3)
    batcher.open()
    gone = make_frame(0)
    batcher.submit(Frame(**{**gone.__dict__, "stream_key": "gone"}), collect)
    batcher.submit(make_frame(1), collect)
    batcher.submit(make_frame(2), collect)
    batcher.start()
    by_index = {r.index: r for r in collect.wait()}
    assert by_index[0].status is Status.FAILED and "stream closed" in by_index[0].error
    assert model.batches == [[1, 2]]
    batcher.stop()


def plan_at_100(batcher: Batcher, *frames: tuple[int, float, float]) -> tuple[list[int], list[int]]:
    """Queue live frames (index, arrival, budget in s) and plan at 100.0: the batch's and the
    dropped frames' indexes."""
    for index, now, budget_s in frames:
        batcher.submit(make_frame(index, now=now, budget_s=budget_s), print)
    batch, late, _ = batcher.plan(100.0)
    return planned(batch), planned(late)


def test_a_frame_that_can_finish_alone_runs_alone_rather_than_being_dropped_from_a_pair() -> None:
    # A batch of 1 takes 10 ms, of 2 16 ms. Frame 0 has 14 ms left, frame 1 a second: the pair
    # would end too late for frame 0, so frame 0 runs alone first, then frame 1; none is dropped.
    batcher = clocked_batcher([100.0], max_wait_s=0.0)
    assert plan_at_100(batcher, (0, 100.0, 0.014), (1, 100.0, 1.0)) == ([0], [])
    assert planned(batcher.plan(100.010)[0]) == [1]


def test_frames_that_fit_a_batch_together_run_together() -> None:
    # Due in 19 and 20 ms, a batch of 2 takes 16 ms: one batch, earliest deadline first.
    batcher = clocked_batcher([100.0], max_wait_s=0.0)
    assert plan_at_100(batcher, (1, 100.001, 0.018), (0, 100.0, 0.020)) == ([1, 0], [])


def test_one_slow_batch_of_a_size_no_longer_tried_does_not_keep_its_estimate_high() -> None:
    # A batch of 2 once took 100 ms (a stall); batches of 1 take 10 ms. Two batches of 1 would
    # take 20 ms, so a batch of 2 is taken to cost 20 ms, not 100, and two frames due in 30 ms
    # run together (before, the pair was planned at 100 ms: one of them was dropped, and pairs
    # were never tried, so never measured again).
    estimator = estimator_of((1, 0.010), (2, 0.100))
    assert estimator.estimate(2) == 0.020
    assert estimator.estimate(5) == pytest.approx(0.050)  # five of 1; three of 2 would be 0.300
    batcher = still_batcher(estimator, max_batch=2)
    assert plan_at_100(batcher, (0, 100.0, 0.030), (1, 100.0, 0.030)) == ([0, 1], [])


def test_a_frame_is_dropped_on_the_cautious_estimate_not_the_mean() -> None:
    # Batches of 1 took 10 then 20 ms: mean 12 ms, cautious estimate 16 ms (mean + 2 x 2 ms). A
    # frame due in 14 ms is dropped: run on the mean, such frames made an overloaded server serve
    # its stalest frames, late (sweep, 8 streams of 720p on 2 cores: server p50 24 -> 37 ms).
    batcher = still_batcher(estimator_of((1, 0.010), (1, 0.020)), max_batch=1)
    assert plan_at_100(batcher, (0, 100.0, 0.014), (1, 100.0, 1.0)) == ([1], [0])


# --- live first: batches planned on a fake clock ------------------------------------------


def linear_estimator(per_frame_s: float, up_to: int = 16) -> ServiceTimeEstimator:
    """A batch of n frames takes n x per_frame_s (no spread)."""
    estimator = ServiceTimeEstimator()
    for n in range(1, up_to + 1):
        estimator.observe(n, n * per_frame_s)
    return estimator


def planned(batch: list[Queued]) -> list[int]:
    return [q.frame.index for q in batch]


def frame_at(index: int, now: float, *, budget_s: float = 10.0, no_drop: bool = False) -> Frame:
    return make_frame(index, budget_s=budget_s, no_drop=no_drop, now=now)


def opened_batcher(max_batch: int, per_frame_s: float, clock: list[float], **kw: float) -> Batcher:
    batcher = Batcher(
        FakeModel(), max_batch=max_batch, max_wait_s=0, capacity=64, estimator=linear_estimator(per_frame_s),
        launch_margin_s=0.0, clock=lambda: clock[0], **kw,
    )  # fmt: skip
    batcher.open()
    return batcher


def test_live_frames_go_first_earliest_deadline_first_then_offline_in_arrival_order() -> None:
    clock = [100.0]
    batcher = opened_batcher(4, 0.001, clock, live_window_s=0.0)
    for i in range(3):
        batcher.submit(frame_at(i, 100.0, no_drop=True), print)
    batcher.submit(frame_at(10, 100.0, budget_s=0.5), print)
    batcher.submit(frame_at(11, 100.0, budget_s=0.2), print)  # earlier deadline, later arrival
    batch, late, discarded = batcher.plan(100.0)
    assert (planned(batch), late, discarded) == ([11, 10, 0, 1], [], [])
    assert planned(batcher.plan(100.0)[0]) == [2]


def test_offline_frames_join_a_live_batch_only_while_its_deadline_holds() -> None:
    # 10 ms a frame; the live frame is due in 25 ms: a batch of 2 (20 ms) fits, 3 (30 ms) does not
    clock = [100.0]
    batcher = opened_batcher(8, 0.010, clock)
    for i in range(5):
        batcher.submit(frame_at(i, 100.0, no_drop=True), print)
    batcher.submit(frame_at(10, 100.0, budget_s=0.025), print)
    assert planned(batcher.plan(100.0)[0]) == [10, 0]


def test_while_live_streams_are_active_offline_batches_stay_within_their_slice() -> None:
    # 4 ms a frame, 10 ms slices: 2 offline frames a batch while a live frame was seen in the
    # last second; a full batch once live streams have been quiet longer than that
    clock = [100.0]
    batcher = opened_batcher(8, 0.004, clock, offline_slice_s=0.010, live_window_s=1.0)
    batcher.submit(frame_at(10, 100.0, budget_s=0.04), print)
    assert planned(batcher.plan(100.0)[0]) == [10]
    for i in range(12):
        batcher.submit(frame_at(i, 100.0, no_drop=True), print)
    assert planned(batcher.plan(100.5)[0]) == [0, 1]
    assert planned(batcher.plan(101.0)[0]) == [2, 3]
    assert planned(batcher.plan(101.01)[0]) == [4, 5, 6, 7, 8, 9, 10, 11]


def test_an_offline_frame_that_waited_too_long_gets_a_place_in_a_full_live_batch() -> None:
    clock = [100.0]
    batcher = opened_batcher(2, 0.001, clock, offline_max_wait_s=1.0)
    batcher.submit(frame_at(0, 100.0, no_drop=True), print)
    for i in (10, 11, 12, 13):
        batcher.submit(frame_at(i, 100.9, budget_s=0.04 + i / 1000), print)
    assert planned(batcher.plan(100.9)[0]) == [10, 11]  # waited 0.9 s: live first
    assert planned(batcher.plan(101.0)[0]) == [12, 0]  # waited 1.0 s: one place is its


def test_when_every_live_frame_is_late_the_freshest_is_served_beside_offline_work() -> None:
    clock = [100.0]
    batcher = opened_batcher(4, 0.010, clock)
    batcher.submit(frame_at(0, 100.0, no_drop=True), print)
    batcher.submit(frame_at(10, 99.9, budget_s=0.04), print)
    batcher.submit(frame_at(11, 99.95, budget_s=0.04), print)
    batch, late, _ = batcher.plan(100.0)
    assert planned(late) == [10]
    assert planned(batch)[0] == 11


def test_while_live_frames_are_being_dropped_offline_frames_run_one_slice_per_interval() -> None:
    clock = [100.0]
    batcher = opened_batcher(4, 0.010, clock, offline_interval_s=0.05, live_window_s=1.0)
    for i in range(4):
        batcher.submit(frame_at(i, 100.0, no_drop=True), print)
    batcher.submit(frame_at(10, 99.0, budget_s=0.04), print)  # hopeless: dropped (the only live frame kept)
    batcher.submit(frame_at(11, 99.99, budget_s=0.035), print)  # due at 100.025: room for one offline frame
    batch, late, _ = batcher.plan(100.0)
    assert (planned(batch), planned(late)) == ([11, 0], [10])  # a live drop: offline now paced
    assert planned(batcher.plan(100.02)[0]) == []  # 20 ms later: offline waits
    assert planned(batcher.plan(100.05)[0]) == [1]  # 50 ms after the last offline slice


def pressed(batcher: Batcher, now: float) -> list[int]:
    """Live frames pressed at `now`: one is dropped (it cannot make its deadline); the batch."""
    batcher.submit(frame_at(99, now - 1.0, budget_s=0.5), print)
    batcher.submit(frame_at(98, now, budget_s=10.0), print)  # the live frame served beside it
    batch, late, _ = batcher.plan(now)
    assert planned(late) == [99]
    return planned(batch)


def test_the_pacing_interval_doubles_while_live_pressure_lasts_and_halves_once_it_is_gone() -> None:
    clock = [100.0]
    batcher = opened_batcher(4, 0.001, clock, offline_interval_s=1 / 16, live_window_s=1.0, offline_max_wait_s=1.0)
    pressed(batcher, 100.0)  # a new episode: paced at the base interval
    assert batcher.pacing_s == 1 / 16
    pressed(batcher, 100 + 1 / 32)  # within the interval: unchanged
    assert batcher.pacing_s == 1 / 16
    # Pressed for a whole interval more: doubled, up to offline_max_wait_s
    for now, pacing in ((100 + 1 / 16, 1 / 8), (100 + 2 / 16, 1 / 8), (100 + 3 / 16, 1 / 4), (100 + 7 / 16, 1 / 2),
                        (100 + 15 / 16, 1.0), (101 + 15 / 16, 1.0)):  # fmt: skip
        pressed(batcher, now)
        assert batcher.pacing_s == pacing, now
    # No pressure: halved once per live window without it, down to the base interval
    for now, pacing in ((102.5, 1.0), (102 + 15 / 16, 1 / 2), (103.5, 1 / 2), (103 + 15 / 16, 1 / 4),
                        (104 + 15 / 16, 1 / 8), (105 + 15 / 16, 1 / 16), (106 + 15 / 16, 1 / 16)):  # fmt: skip
        batcher.plan(now)
        assert batcher.pacing_s == pacing, now


def test_under_live_pressure_offline_frames_run_one_slice_per_pacing_interval_in_live_batches_too() -> None:
    clock = [100.0]
    batcher = opened_batcher(4, 0.001, clock, offline_slice_s=0.010, offline_interval_s=0.05, live_window_s=1.0)
    for i in range(8):
        batcher.submit(frame_at(i, 100.0, no_drop=True), print)
    assert pressed(batcher, 100.0) == [98, 0, 1, 2]  # a slice joined the batch whose pressure was found
    assert planned(batcher.plan(100.0)[0]) == []  # then none
    batcher.submit(frame_at(20, 100.01, budget_s=1.0), print)  # a live frame with room to spare
    assert planned(batcher.plan(100.01)[0]) == [20]  # paced: no offline frame joins it
    batcher.submit(frame_at(21, 100.05, budget_s=1.0), print)
    assert planned(batcher.plan(100.05)[0]) == [21, 3, 4, 5]  # the interval has passed: one slice joins


def test_offline_frames_joining_a_live_batch_add_at_most_a_slice() -> None:
    # 4 ms a frame; the live frame is due in 1 s, so its deadline allows many, but a 10 ms
    # slice allows two: a live frame arriving meanwhile must not wait behind a long batch
    clock = [100.0]
    batcher = opened_batcher(8, 0.004, clock, offline_slice_s=0.010)
    for i in range(6):
        batcher.submit(frame_at(i, 100.0, no_drop=True), print)
    batcher.submit(frame_at(10, 100.0, budget_s=1.0), print)
    assert planned(batcher.plan(100.0)[0]) == [10, 0, 1]


def test_a_starving_offline_stream_displaces_a_live_frame_once_per_max_wait_only() -> None:
    clock = [100.0]
    batcher = opened_batcher(1, 0.001, clock, offline_max_wait_s=1.0)
    for i in range(3):
        batcher.submit(frame_at(i, 100.0, no_drop=True), print)
    for i in (10, 11, 12):
        batcher.submit(frame_at(i, 101.0, budget_s=5.0 + i), print)
    assert planned(batcher.plan(101.0)[0]) == [0]  # waited 1 s: it takes the live frame's place
    assert planned(batcher.plan(101.1)[0]) == [10]  # not again before another second
    assert planned(batcher.plan(101.5)[0]) == [11]
    assert planned(batcher.plan(102.0)[0]) == [1]


def test_the_default_estimate_is_a_moving_mean_plus_twice_the_mean_deviation() -> None:
    estimator = ServiceTimeEstimator()  # alpha 0.2, spread 2
    estimator.observe(1, 0.010)
    estimator.observe(1, 0.020)  # mean 0.010 + 0.2 * 0.010; deviation 0.2 * 0.010
    assert estimator.estimate(1) == pytest.approx(0.012 + 2 * 0.002, abs=1e-12)


def test_a_dropped_frame_says_by_how_much_it_missed_its_deadline() -> None:
    clock = [100.0]
    batcher = clocked_batcher(clock, max_batch=1, max_wait_s=0.0)
    collect = Collector(2)
    batcher.submit(make_frame(0, now=99.9, budget_s=0.0875), collect)  # due 99.9875: 12.5 ms ago
    batcher.submit(make_frame(1, now=100.0, budget_s=1.0), collect)
    batcher.start()  # on the fixed clock every decision is due at once
    by_index = {r.index: r for r in collect.wait()}
    batcher.stop()
    assert by_index[0].status is Status.DROPPED_LATE
    assert by_index[0].error == "missed its deadline by 12.5 ms before inference"
    assert by_index[0].timing.queue_s == 0.0 and by_index[0].timing.server_s == pytest.approx(0.1)


def test_a_batcher_may_hold_a_single_frame_but_not_none() -> None:
    Batcher(FakeModel(), max_batch=1, max_wait_s=0, capacity=1)
    with pytest.raises(ValueError, match="max_batch and capacity must be at least 1"):
        Batcher(FakeModel(), max_batch=1, max_wait_s=0, capacity=0)
    with pytest.raises(ValueError, match="max_batch and capacity must be at least 1"):
        Batcher(FakeModel(), max_batch=0, max_wait_s=0, capacity=1)


def test_stop_returns_after_the_worker_thread_has_ended() -> None:
    batcher = Batcher(FakeModel(delay_s=0.05), max_batch=1, max_wait_s=0, capacity=8)
    batcher.start()
    for i in range(3):
        batcher.submit(make_frame(i), print)
    batcher.stop()
    assert not any(t.name == "polypstream-batcher" and t.is_alive() for t in threading.enumerate())


def test_with_no_live_frame_ever_seen_offline_frames_run_in_full_unpaced_batches() -> None:
    # At clock 0.5 s (any time, even within the first second), no live stream has been active.
    clock = [0.5]
    batcher = opened_batcher(4, 0.010, clock, offline_slice_s=0.010, live_window_s=1.0)
    for i in range(8):
        batcher.submit(frame_at(i, 0.5, no_drop=True), print)
    assert planned(batcher.plan(0.5)[0]) == [0, 1, 2, 3]
    assert batcher.wait_s(0.5) == 0.0
    assert planned(batcher.plan(0.5)[0]) == [4, 5, 6, 7]


@pytest.mark.parametrize(("spare", "paced"), [(1 / 32, False), (1 / 32 - 1 / 128, True)])
def test_a_live_frame_finishing_with_less_than_a_slice_to_spare_paces_offline_work(spare: float, paced: bool) -> None:
    # A frame takes 1/64 s, a slice is 1/32 s (two offline frames). The live frame finishes
    # with `spare` before its deadline: less than a slice means no capacity is left over.
    clock = [100.0]
    batcher = opened_batcher(4, 1 / 64, clock, offline_slice_s=1 / 32, offline_interval_s=0.05, live_window_s=1.0)
    batcher.submit(frame_at(10, 100.0, budget_s=1 / 64 + spare), print)
    assert planned(batcher.plan(100.0)[0]) == [10]
    for i in range(3):
        batcher.submit(frame_at(i, 100.0, no_drop=True), print)
    assert planned(batcher.plan(100.0)[0]) == [0, 1]  # one slice
    assert batcher.wait_s(100.0) == (pytest.approx(0.05) if paced else 0.0)


def test_largest_counts_up_while_it_fits() -> None:
    assert (_largest(5, lambda n: False), _largest(5, lambda n: True), _largest(5, lambda n: n <= 3)) == (0, 5, 3)


def test_the_documented_defaults() -> None:
    b = Batcher(FakeModel(), max_batch=1, max_wait_s=0, capacity=1)
    assert (b.launch_margin_s, b.offline_slice_s, b.offline_max_wait_s, b.live_window_s, b.offline_interval_s) == (
        0.002, 0.010, 1.0, 1.0, 0.05,
    )  # fmt: skip
    with pytest.raises(BatcherStoppedError):  # not open yet
        b.submit(make_frame(0), print)
    b.open()
    b.submit(make_frame(0), print)
    assert b.depth == 1


def test_the_worker_measures_each_batch_on_its_clock_and_runs_on_its_own_thread() -> None:
    clock = [100.0]

    def model(batch: list[Queued], launched_at: float) -> list[Result]:
        clock[0] += 0.25  # the batch takes 250 ms
        return [Result(stream_id="s", index=q.frame.index, status=Status.OK) for q in batch]

    batcher = Batcher(model, max_batch=1, max_wait_s=0, capacity=4, clock=lambda: clock[0])
    batcher.start()
    assert batcher._thread is not None and batcher._thread.daemon
    collect = Collector(1)
    batcher.submit(make_frame(0, now=100.0), collect)
    collect.wait()
    batcher.stop()
    assert batcher.estimator.estimate(1) == 0.25


@pytest.mark.parametrize("produced", [1, 3])
def test_a_batch_whose_processing_answers_the_wrong_number_of_frames_fails(produced: int) -> None:
    def model(batch: list[Queued], launched_at: float) -> list[Result]:
        return [Result(stream_id="s", index=0, status=Status.OK)] * produced

    batcher = Batcher(model, max_batch=2, max_wait_s=0, capacity=4)
    batcher.open()
    collect = Collector(2)
    batcher.submit(make_frame(0), collect)
    batcher.submit(make_frame(1), collect)
    batcher.start()
    results = collect.wait()
    batcher.stop()
    assert [r.status for r in results] == [Status.FAILED] * 2
    assert results[0].error == f"inference failed: batch of 2 produced {produced} results"


def test_a_frame_due_100_ms_ago_says_so_and_one_not_yet_due_says_when_it_is_due() -> None:
    clock = [100.0]
    batcher = clocked_batcher(clock, max_batch=1, max_wait_s=0.0)
    collect = Collector(3)
    batcher.submit(make_frame(0, now=99.8, budget_s=0.1), collect)  # due 99.9: 100 ms ago
    batcher.submit(make_frame(1, now=99.995, budget_s=0.01), collect)  # due 100.005: hopeless, not late
    batcher.submit(make_frame(2, now=100.0, budget_s=1.0), collect)
    batcher.start()
    by_index = {r.index: r for r in collect.wait()}
    batcher.stop()
    assert by_index[0].error == "missed its deadline by 100.0 ms before inference"
    assert by_index[1].error == "would miss its deadline: due in 5.0 ms, a batch of one may take 10.0 ms"


def test_a_queue_of_closed_streams_frames_only_does_not_stop_the_worker() -> None:
    closed = {"gone"}
    batcher = Batcher(FakeModel(), max_batch=2, max_wait_s=0, capacity=8, discard=lambda f: f.stream_key in closed)
    batcher.open()
    collect = Collector(2)
    gone = make_frame(0)
    batcher.submit(Frame(**{**gone.__dict__, "stream_key": "gone"}), collect)
    batcher.start()
    wait_for(lambda: len(collect.results) == 1)
    batcher.submit(make_frame(1), collect)  # the worker is still there to run it
    assert [r.status for r in collect.wait()] == [Status.FAILED, Status.OK]
    batcher.stop()


def test_a_partial_batch_on_a_still_clock_waits_for_the_frame_that_fills_it() -> None:
    clock = [100.0]  # time never passes: only a full batch (or stopping) launches it
    model = FakeModel()
    batcher = Batcher(model, max_batch=2, max_wait_s=0.2, capacity=4, clock=lambda: clock[0])
    batcher.start()
    collect = Collector(3)
    batcher.submit(make_frame(-1, now=100.0, stream="b"), collect)  # alone in the queue: runs at once
    wait_for(lambda: model.batches == [[-1]])
    batcher.submit(make_frame(0, now=100.0, stream="a"), collect)
    time.sleep(0.05)  # the worker has looked at the queue: one frame, 200 ms to wait, on a still clock
    assert model.batches == [[-1]]
    batcher.submit(make_frame(1, now=100.0, stream="b"), collect)
    collect.wait()
    batcher.stop()
    assert model.batches == [[-1], [0, 1]]


def test_the_oldest_offline_frame_decides_whether_offline_work_is_starving() -> None:
    clock = [100.0]
    batcher = opened_batcher(2, 0.001, clock, offline_max_wait_s=1.0)
    batcher.submit(frame_at(0, 100.0, no_drop=True), print)
    clock[0] = 100.9
    batcher.submit(frame_at(1, 100.9, no_drop=True), print)  # the newest has waited 0.1 s only
    for i in (10, 11):
        batcher.submit(frame_at(i, 101.0, budget_s=1.0 + i / 1000), print)
    assert planned(batcher.plan(101.0)[0]) == [10, 0]


def test_offline_work_is_paced_while_live_pressure_is_at_most_the_window_old() -> None:
    clock = [100.0]
    batcher = opened_batcher(4, 1 / 64, clock, offline_slice_s=1 / 32, offline_interval_s=0.25, live_window_s=0.5)
    batcher._last_live_pressure_at, batcher._last_offline_at = 100.0, 100.0
    assert batcher._offline_held_until(100.5) == 100.25  # exactly the window after: still paced
    assert batcher._offline_held_until(100.75) == 100.75  # later: not held (held until now)


def test_offline_frames_join_a_live_batch_up_to_exactly_its_deadline_less_the_margin() -> None:
    # 1/64 s a frame, margin 1/128 s: the live frame due 100 + 3/64 + 1/128 fits two offline
    # frames exactly (3 frames end at 100 + 3/64); one more than that does not fit.
    clock = [100.0]
    batcher = Batcher(
        FakeModel(), max_batch=8, max_wait_s=0, capacity=16, estimator=linear_estimator(1 / 64),
        launch_margin_s=1 / 128, offline_slice_s=1.0, clock=lambda: clock[0],
    )  # fmt: skip
    batcher.open()
    for i in range(4):
        batcher.submit(frame_at(i, 100.0, no_drop=True), print)
    batcher.submit(frame_at(10, 100.0, budget_s=3 / 64 + 1 / 128), print)
    assert planned(batcher.plan(100.0)[0]) == [10, 0, 1]


def test_an_offline_slice_holds_one_frame_even_when_a_frame_takes_longer_than_a_slice() -> None:
    clock = [100.0]
    batcher = opened_batcher(4, 0.02, clock, offline_slice_s=0.01, live_window_s=1.0)
    batcher.submit(frame_at(10, 100.0, budget_s=0.04), print)
    assert planned(batcher.plan(100.0)[0]) == [10]  # a live stream is active
    for i in range(3):
        batcher.submit(frame_at(i, 100.0, no_drop=True), print)
    assert planned(batcher.plan(100.0)[0]) == [0]


def test_a_batch_finishing_exactly_at_a_deadline_keeps_that_frame() -> None:
    clock = [100.0]
    batcher = opened_batcher(2, 1 / 64, clock)
    batcher.submit(frame_at(0, 100.0, budget_s=2 / 64), print)  # a batch of 2 ends exactly then
    batcher.submit(frame_at(1, 100.0, budget_s=1.0), print)
    batch, late, _ = batcher.plan(100.0)
    assert (planned(batch), late) == ([0, 1], [])
