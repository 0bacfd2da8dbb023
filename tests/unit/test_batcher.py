"""Batching and deadline logic with a fake model (no onnxruntime)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from service.batcher import Batcher, BatcherStoppedError, Queued, QueueFullError, ServiceTimeEstimator
from service.frames import Frame, FrameOptions, Result, Status


def make_frame(index: int, *, budget_s: float = 10.0, no_drop: bool = False, now: float | None = None) -> Frame:
    now = time.monotonic() if now is None else now
    return Frame(
        stream_key="s",
        stream_id="s",
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


def test_full_batch_launches_without_waiting() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch=4, max_wait_s=60, capacity=16)
    collect = Collector(4)
    # Given a stopped worker, queue four frames so they are all there when it starts.
    batcher._accepting = True
    for i in range(4):
        batcher.submit(make_frame(i), collect)
    started = time.monotonic()
    batcher.start()
    collect.wait()
    # Then one full batch ran at once, long before the 60 s wait bound.
    assert model.batches == [[0, 1, 2, 3]]
    assert time.monotonic() - started < 5
    batcher.stop()


def test_partial_batch_launches_after_max_wait() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch=8, max_wait_s=0.02, capacity=16)
    batcher.start()
    collect = Collector(1)
    batcher.submit(make_frame(0), collect)
    assert collect.wait()[0].status is Status.OK
    assert model.batches == [[0]]
    batcher.stop()


def test_deadline_launches_before_max_wait() -> None:
    # Given batches take ~0.2 s and a frame with 0.5 s of budget, the batcher must not
    # wait the full 30 s bound: it launches by deadline - estimate.
    estimator = ServiceTimeEstimator()
    estimator.observe(1, 0.2)
    estimator.observe(8, 0.2)
    model = FakeModel()
    batcher = Batcher(model, max_batch=8, max_wait_s=30, capacity=16, estimator=estimator)
    batcher.start()
    collect = Collector(1)
    started = time.monotonic()
    batcher.submit(make_frame(0, budget_s=0.5), collect)
    result = collect.wait()[0]
    elapsed = time.monotonic() - started
    assert result.status is Status.OK
    assert 0.2 <= elapsed < 5
    batcher.stop()


def test_late_frames_are_answered_dropped_unless_no_drop() -> None:
    model = FakeModel()
    batcher = Batcher(model, max_batch=4, max_wait_s=0, capacity=16)
    collect = Collector(3)
    past = time.monotonic() - 1.0
    batcher._accepting = True
    batcher.submit(make_frame(0, budget_s=0.1, now=past), collect)  # already 0.9 s late
    batcher.submit(make_frame(1, budget_s=0.1, now=past, no_drop=True), collect)  # late, but offline
    batcher.submit(make_frame(2), collect)
    batcher.start()
    by_index = {r.index: r for r in collect.wait()}
    assert by_index[0].status is Status.DROPPED_LATE
    assert "deadline" in by_index[0].error
    assert by_index[1].status is Status.OK
    assert by_index[2].status is Status.OK
    assert model.batches == [[1, 2]]
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
    batcher._accepting = True
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
    batcher._accepting = True
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
    batcher._accepting = True
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
    batcher._accepting = True
    gone = make_frame(0)
    batcher.submit(Frame(**{**gone.__dict__, "stream_key": "gone"}), collect)
    batcher.submit(make_frame(1), collect)
    batcher.submit(make_frame(2), collect)
    batcher.start()
    by_index = {r.index: r for r in collect.wait()}
    assert by_index[0].status is Status.FAILED and "stream closed" in by_index[0].error
    assert model.batches == [[1, 2]]
    batcher.stop()


def test_a_frame_is_dropped_when_the_batch_it_would_join_finishes_too_late() -> None:
    # Batch of 1: 10 ms; batch of 2: 50 ms. Frame 0 has 30 ms left, frame 1 plenty:
    # together they would finish in 50 ms, so frame 0 cannot make it and is dropped.
    estimator = ServiceTimeEstimator()
    estimator.observe(1, 0.010)
    estimator.observe(2, 0.050)
    model = FakeModel()
    batcher = Batcher(model, max_batch=2, max_wait_s=0, capacity=8, estimator=estimator)
    now = time.monotonic()
    batcher._accepting = True
    collect = Collector(2)
    batcher.submit(make_frame(0, budget_s=0.030, now=now), collect)
    batcher.submit(make_frame(1, budget_s=10, now=now), collect)
    batcher.start()
    by_index = {r.index: r for r in collect.wait()}
    assert by_index[0].status is Status.DROPPED_LATE and by_index[1].status is Status.OK
    assert model.batches == [[1]]
    batcher.stop()
