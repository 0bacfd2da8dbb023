"""What the pipeline reports and how it is set up: each stage's time, the masks each way they are
asked for, its metrics, its pools and budget from the configuration, and its stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from polypstream import pipeline as pipeline_module
from polypstream.batcher import STREAM_CLOSED, Queued
from polypstream.config import EngineConfig
from polypstream.frames import Frame, FrameOptions, Polyp, Result, Status, Timing
from polypstream.metrics import Metrics
from polypstream.pipeline import Pipeline, _scaled
from polypstream.runner import Runner
from polypstream.view import ViewHub
from tests.conftest import FakeClock, square_image
from tests.tiny_model import build_tiny_model


@pytest.fixture
def clocked(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """Each stage takes a known time: preprocessing 3 ms, the model 10 ms, finding a frame's
    regions 2 ms, drawing an overlay 5 ms."""
    clock = FakeClock()
    clock.install(monkeypatch, pipeline_module)
    monkeypatch.setattr(pipeline.runner, "preprocess", clock.taking(0.003, pipeline.runner.preprocess))
    monkeypatch.setattr(pipeline.runner, "run", clock.taking(0.010, pipeline.runner.run))
    monkeypatch.setattr(pipeline_module, "locate_polyps", clock.taking(0.002, pipeline_module.locate_polyps))
    monkeypatch.setattr(pipeline_module, "draw_overlay", clock.taking(0.005, pipeline_module.draw_overlay))
    yield clock


def processed(pipeline: Pipeline, frames: list[Frame], enqueued_at: float, launched_at: float) -> list[Result]:
    """The results of one batch of `frames`, run on this thread as the batcher would run it."""
    for frame in frames:
        pipeline.open_stream(frame.stream_key)
    return pipeline._process([Queued(f, lambda result: None, enqueued_at) for f in frames], launched_at)


def test_each_stage_reports_its_own_time(pipeline: Pipeline, clocked: FakeClock) -> None:
    options = FrameOptions(return_overlay=True)
    received = clocked.monotonic()
    frame = pipeline.make_frame("k", "s", 0, square_image(), received, decode_s=0.001, options=options)
    assert frame.decode_s == pytest.approx(0.004, abs=1e-9)  # the JPEG's 1 ms, then preprocessing's 3
    assert frame.deadline == received + 10.0  # the budget: 10,000 ms from its receipt
    (result,) = processed(pipeline, [frame], enqueued_at=50.0, launched_at=50.25)
    t = result.timing
    assert (t.batch_size, t.queue_s) == (1, 0.25)  # queued from 50.0 until the batch launched at 50.25
    assert t.decode_s == pytest.approx(0.004, abs=1e-9)
    assert t.inference_s == pytest.approx(0.010, abs=1e-9)
    assert t.postprocess_s == pytest.approx(0.002, abs=1e-9)  # its regions
    assert t.server_s == pytest.approx(0.015, abs=1e-9)  # received before preprocessing: 3 + 10 + 2 ms
    assert result.render is not None
    drawn = result.render().timing  # the overlay's 5 ms count as post-processing, and toward the server's time
    assert drawn.postprocess_s == pytest.approx(0.007, abs=1e-9)
    assert drawn.server_s == pytest.approx(0.020, abs=1e-9)
    assert (drawn.decode_s, drawn.queue_s, drawn.inference_s) == (t.decode_s, t.queue_s, t.inference_s)
    decode = pipeline.metrics.registry.get_sample_value("polypstream_stage_seconds_sum", {"stage": "decode"})
    assert decode == pytest.approx(0.004, abs=1e-9)
    # A frame of a server-side source: no JPEG read, no client clock
    sourced = pipeline.make_frame("src", "src", 0, square_image(), received)
    assert (sourced.decode_s, sourced.client_time_ns) == (pytest.approx(0.003, abs=1e-9), 0)


def test_a_batchs_frames_share_its_inference_time_and_each_has_its_own_regions_time(
    pipeline: Pipeline, clocked: FakeClock
) -> None:
    frames = [pipeline.make_frame(f"k{i}", f"s{i}", 0, square_image(), clocked.monotonic()) for i in range(3)]
    results = processed(pipeline, frames, enqueued_at=50.0, launched_at=50.5)
    assert [r.timing.batch_size for r in results] == [3, 3, 3]
    assert [r.timing.inference_s for r in results] == [pytest.approx(0.010, abs=1e-9)] * 3
    assert [r.timing.postprocess_s for r in results] == [pytest.approx(0.002, abs=1e-9)] * 3
    # received when decoding began (3 frames × 3 ms), then the model and all three frames' regions
    assert [r.timing.server_s for r in results] == [pytest.approx(s, abs=1e-9) for s in (0.025, 0.022, 0.019)]


def expected_masks() -> tuple[np.ndarray, np.ndarray]:
    """The white square of a 128×128 frame, (32, 16, 64, 48), as a mask at the frame's size and
    at the tiny model's 64² (each model pixel averages a 2×2 block wholly inside or outside it)."""
    full = np.zeros((128, 128), bool)
    full[16:64, 32:96] = True
    model = np.zeros((64, 64), bool)
    model[8:32, 16:48] = True
    return full, model


@pytest.mark.parametrize(
    ("options", "mask_size", "overlay"),
    [
        (FrameOptions(return_mask=True), "frame", False),
        (FrameOptions(return_mask=True, mask_at_model_resolution=True), "model", False),
        (FrameOptions(return_mask=True, mask_at_model_resolution=True, return_overlay=True), "model", True),
        (FrameOptions(return_mask=True, return_overlay=True), "frame", True),
        (FrameOptions(return_overlay=True), None, True),
        (FrameOptions(), None, False),
    ],
)
def test_the_mask_comes_at_the_size_asked_for_with_or_without_an_overlay(
    pipeline: Pipeline, options: FrameOptions, mask_size: str | None, overlay: bool
) -> None:
    image = square_image(128, 128, (32, 16, 64, 48))
    (result,) = processed(pipeline, [pipeline.make_frame("k", "s", 0, image, 0.0, options=options)], 0.0, 0.0)
    # Drawn off the batcher's thread only when something frame-sized is asked for; a model-sized
    # mask alone comes with the result.
    assert (result.render is not None) == (mask_size == "frame" or overlay)
    if result.render is not None:
        result = result.render()
    full, model = expected_masks()
    if mask_size is None:
        assert result.mask is None
    else:
        assert result.mask is not None
        np.testing.assert_array_equal(result.mask, full if mask_size == "frame" else model)
    assert (result.overlay is not None) == overlay
    if result.overlay is not None:
        assert result.overlay.shape == (128, 128, 3)
    assert [p.box for p in result.polyps] == [(32, 16, 64, 48)]


def result_of(status: Status, error: str = "") -> Result:
    timing = Timing(decode_s=0.001, queue_s=0.002, batch_size=1, inference_s=0.004, postprocess_s=0.008, server_s=0.016)
    return Result(stream_id="s", index=0, status=status, error=error, timing=timing)


def test_each_result_is_counted_by_status_and_only_served_frames_time_the_model(pipeline: Pipeline) -> None:
    closed = STREAM_CLOSED[:1] + STREAM_CLOSED[1:]  # equal, not the same object: compared by value
    for status, error in (
        (Status.OK, ""),
        (Status.DROPPED_LATE, "missed its deadline"),
        (Status.FAILED, closed),
        (Status.FAILED, "inference failed: boom"),
        (Status.FAILED, "server is shutting down"),
        (Status.INVALID_FRAME, "not an image"),
    ):
        pipeline.record(result_of(status, error), "grpc")
    value = pipeline.metrics.registry.get_sample_value
    frames = {s.value: value("polypstream_frames_total", {"status": s.value, "source": "grpc"}) for s in Status}
    assert frames == {"OK": 1, "DROPPED_LATE": 1, "FAILED": 3, "INVALID_FRAME": 1}
    dropped = {
        r: value("polypstream_dropped_frames_total", {"reason": r, "source": "grpc"}) for r in ("late", "stream_closed")
    }
    assert dropped == {"late": 1, "stream_closed": 1}  # a failed inference, a shutdown: no drop
    count = {
        s: value("polypstream_stage_seconds_count", {"stage": s})
        for s in ("queue", "inference", "postprocess", "server")
    }
    assert count == {"queue": 1, "inference": 1, "postprocess": 1, "server": 6}  # the model's stages: the OK frame's
    total = {
        s: value("polypstream_stage_seconds_sum", {"stage": s}) for s in ("queue", "inference", "postprocess", "server")
    }
    assert total == {"queue": 0.002, "inference": 0.004, "postprocess": 0.008, "server": pytest.approx(0.096)}


def test_a_failed_batch_is_counted_and_raised(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(tensors: list[np.ndarray]) -> np.ndarray:
        raise RuntimeError("CUDA error")

    monkeypatch.setattr(pipeline.runner, "run", broken)
    frame = pipeline.make_frame("k", "s", 0, square_image(), 0.0)
    with pytest.raises(RuntimeError, match="CUDA error"):
        processed(pipeline, [frame], 0.0, 0.0)
    value = pipeline.metrics.registry.get_sample_value
    assert (
        value("polypstream_batches_total", {"outcome": "failed"}),
        value("polypstream_batches_total", {"outcome": "ok"}),
    ) == (1, 0)


def engine(tiny_model: Path, **config: object) -> Pipeline:
    return Pipeline(Runner(tiny_model, device="cpu", max_batch=4), EngineConfig(**config), Metrics(CollectorRegistry()))  # type: ignore[arg-type]


def test_the_budget_and_the_batchers_waits_come_from_the_configuration(tiny_model: Path) -> None:
    pipe = engine(tiny_model, budget_ms=40, max_wait_ms=3, max_batch=8, decode_workers=1)
    try:
        assert pipe.budget_s == 0.04
        assert pipe.batcher.max_wait_s == 0.003
        assert pipe.batcher.offline_slice_s == 0.01  # a quarter of the budget
        assert pipe.batcher.max_batch == 4  # the runner's, below the configured 8
        frame = pipe.make_frame("k", "s", 0, square_image(), 100.0)
        assert frame.deadline == 100.04
    finally:
        pipe.stop()


@pytest.mark.parametrize(
    ("decode_workers", "cpus", "workers", "offline", "regions"),
    [(5, 8, 5, 2, 4), (0, 6, 6, 3, 5), (0, None, 2, 1, 1), (1, 8, 1, 1, 1)],
)
def test_the_pools_are_sized_from_the_decode_workers_or_the_cpus(
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    decode_workers: int,
    cpus: int | None,
    workers: int,
    offline: int,
    regions: int,
) -> None:
    monkeypatch.setattr(pipeline_module.os, "cpu_count", lambda: cpus)
    pipe = engine(tiny_model, decode_workers=decode_workers)
    try:
        assert (pipe.decode_workers, pipe.decode_pool._max_workers, pipe.render_pool._max_workers) == (
            workers,
            workers,
            workers,
        )
        assert (pipe.offline_decode_workers, pipe.offline_decode_pool._max_workers) == (offline, offline)
        assert pipe.regions_pool._max_workers == regions  # the batcher's thread takes a share too
        assert pipe.region_shares == workers
    finally:
        pipe.stop()


def test_start_seeds_the_batchers_estimates_and_warns_when_one_frame_is_over_budget(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for one_s, warned in ((0.125, False), (0.25, False), (0.375, True)):
        pipe = engine(tiny_model, budget_ms=250, decode_workers=1)
        monkeypatch.setattr(pipe.runner, "warm_up", lambda one_s=one_s: {1: one_s, 4: 0.5})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="polypstream.pipeline"):
            pipe.start()
        try:
            assert (pipe.batcher.estimator.estimate(1), pipe.batcher.estimator.estimate(4)) == (one_s, 0.5)
            words = [r.getMessage() for r in caplog.records if "budget" in r.getMessage()]
            expected = [
                f"one frame takes {one_s * 1e3:.1f} ms on CPUExecutionProvider, over the 250.0 ms budget: live frames "
                "will be dropped; raise --budget-ms or use a faster model"
            ]
            assert words == (expected if warned else [])  # at the budget exactly: no warning
        finally:
            pipe.stop()


@pytest.mark.parametrize("pool", ["decode_pool", "offline_decode_pool", "render_pool", "regions_pool"])
def test_stop_waits_for_the_work_each_pool_was_given(tiny_model: Path, pool: str) -> None:
    pipe = engine(tiny_model, decode_workers=1)
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        finished.set()

    getattr(pipe, pool).submit(slow)  # the only work anywhere: nothing else makes stop take its time
    pipe.stop()
    assert finished.is_set()


def test_without_a_gpu_there_is_no_gpu_state(pipeline: Pipeline) -> None:
    assert pipeline.gpu_state() is None


def test_an_overlay_asked_for_as_the_pipeline_stops_is_drawn_on_the_batchers_thread(pipeline: Pipeline) -> None:
    pipeline.render_pool.shutdown(wait=True)  # stopping: the render pool takes no more work
    done = threading.Event()
    got: list[Result] = []
    pipeline.open_stream("k")
    frame = pipeline.make_frame(
        "k", "s", 0, square_image(), time.monotonic(), options=FrameOptions(return_overlay=True)
    )

    def on_done(result: Result) -> None:
        got.append(result)
        done.set()

    pipeline.submit(frame, on_done)
    assert done.wait(10)
    assert got[0].status is Status.OK and got[0].overlay is not None and got[0].render is None


def test_a_streams_first_frame_dropped_late_shows_and_ends_nothing(
    pipeline: Pipeline, model_held: Callable[[], Callable[[], None]]
) -> None:
    # Stream "new" is open, nothing of it looked at yet (no alert state), when its first frame is
    # queued long past its budget, and a fresher one after it.
    results: dict[int, Result] = {}
    answered = threading.Condition()

    def on_done(result: Result) -> None:
        with answered:
            results[result.index] = result
            answered.notify_all()

    pipeline.open_stream("new")
    go_on = model_held()
    pipeline.submit(pipeline.make_frame("new", "new", 0, square_image(), time.monotonic() - 60.0), on_done)
    pipeline.submit(pipeline.make_frame("new", "new", 1, square_image(), time.monotonic()), on_done)
    go_on()
    with answered:
        assert answered.wait_for(lambda: len(results) == 2, 10)
    assert (results[0].status, results[0].held, results[0].alert_events) == (Status.DROPPED_LATE, (), ())
    assert results[1].status is Status.OK


def test_a_box_scaled_for_the_view_keeps_at_least_a_pixel_each_way() -> None:
    polyp = Polyp(box=(3, 5, 1, 1), score=0.9, area=1, track_id=2)
    assert _scaled(polyp, 0.5, 0.25).box == (2, 1, 1, 1)  # round(1.5) = 2, round(1.25) = 1; 0.5 → 1, 0.25 → 1
    assert _scaled(polyp, 3.0, 2.0).box == (9, 10, 3, 2)
    assert _scaled(polyp, 3.0, 2.0).track_id == 2


def test_an_alerting_polyps_overlay_has_the_frames_mask_tinted_in_it(pipeline: Pipeline) -> None:
    from polypstream.postprocess import MASK_COLOUR

    image = square_image(128, 128, (32, 16, 64, 48))
    options = FrameOptions(return_overlay=True)
    frames = [pipeline.make_frame("k", "s", i, image, 0.0, options=options) for i in range(2)]
    pipeline.open_stream("k")
    first = pipeline._process([Queued(frames[0], lambda result: None, 0.0)], 0.0)[0]
    second = pipeline._process([Queued(frames[1], lambda result: None, 0.0)], 0.0)[0]
    assert first.render is not None and second.render is not None
    assert [p.alerting for p in second.polyps] == [True]  # seen in 2 of 2 frames
    np.testing.assert_array_equal(first.render().overlay, image)  # not alerting yet: nothing drawn
    overlay = second.render().overlay
    assert overlay is not None
    white, colour = np.full((1, 1, 3), 255, np.uint8), np.array([[MASK_COLOUR]], np.uint8)
    tinted = cv2.addWeighted(white, 0.6, colour, 0.4, 0)[0, 0]
    assert overlay[40, 64].tolist() == tinted.tolist()  # inside the polyp, away from its outline and box
    assert overlay[110, 10].tolist() == [0, 0, 0]  # far from it


def test_without_the_regions_pool_a_batchs_regions_are_found_on_the_batchers_thread(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = build_tiny_model(tmp_path / "tiny224.onnx", size=224)  # maps over the threshold
    pipe = Pipeline(
        Runner(model, device="cpu", max_batch=3),
        EngineConfig(max_batch=3, budget_ms=10_000, decode_workers=3),
        Metrics(CollectorRegistry()),
    )
    try:
        boxes = [(16, 24, 32, 24), (100, 40, 50, 60), (8, 150, 70, 30)]
        frames = [pipe.make_frame(f"k{i}", f"s{i}", 0, square_image(224, 224, b), 0.0) for i, b in enumerate(boxes)]
        pipe.regions_pool.shutdown(wait=True)  # the server is stopping
        results = processed(pipe, frames, 0.0, 0.0)
        assert [[p.box for p in r.polyps] for r in results] == [[box] for box in boxes]
    finally:
        pipe.stop()


def test_a_view_picture_asked_for_as_the_pipeline_stops_gives_its_claim_back(pipeline: Pipeline) -> None:
    hub = pipeline.view = ViewHub({})
    pipeline.open_stream("k")
    first = pipeline.make_frame("k", "s", 0, square_image(), 0.0, options=FrameOptions(allow_view=True))
    answered = threading.Event()
    pipeline.submit(first, lambda result: answered.set())  # its answer puts the stream on the view
    assert answered.wait(10)
    hub.join()  # a viewer ready for a picture
    pipeline.render_pool.shutdown(wait=True)
    second = pipeline.make_frame("k", "s", 1, square_image(), 0.0, options=FrameOptions(allow_view=True))
    assert processed(pipeline, [second], 0.0, 0.0)[0].status is Status.OK
    assert hub.claim_picture("k")  # not left claimed by a picture that will never be drawn
