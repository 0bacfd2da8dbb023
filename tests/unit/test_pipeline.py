"""The pipeline's threads: what runs on the batcher's thread and what does not."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from polypstream import pipeline as pipeline_module
from polypstream.config import EngineConfig
from polypstream.frames import Frame, FrameOptions, Result, Status
from polypstream.metrics import Metrics
from polypstream.pipeline import Pipeline
from polypstream.runner import Runner
from polypstream.threads import BACKGROUND_NICE, os_thread_name
from polypstream.view import ViewHub
from tests.conftest import square_image
from tests.tiny_model import build_tiny_model

T = TypeVar("T")


def run_one(pipeline: Pipeline, options: FrameOptions, image: np.ndarray | None = None) -> Result:
    done = threading.Event()
    got: list[Result] = []

    def on_done(result: Result) -> None:
        got.append(result)
        done.set()

    frame = pipeline.make_frame("k", "s", 0, square_image() if image is None else image, 0.0, options=options)
    pipeline.open_stream("k")
    pipeline.submit(frame, on_done)
    assert done.wait(10)
    pipeline.close_stream("k")
    return got[0]


@pytest.mark.parametrize("late", [2, 6])
def test_a_frame_dropped_late_shows_the_alerts_on_and_counts_as_a_frame_of_the_stream(
    pipeline: Pipeline, model_held: Callable[[], Callable[[], None]], late: int
) -> None:
    # The model's rule here: 2 of 2 frames, held 4. A late frame is answered, not looked at, and
    # its index is a frame of the stream all the same: the hold runs on over it.
    results: dict[tuple[str, int], Result] = {}
    answered = threading.Condition()

    def on_done(result: Result) -> None:
        with answered:
            results[result.stream_id, result.index] = result
            answered.notify_all()

    def submit(stream: str, index: int, image: np.ndarray, received_at: float) -> None:
        pipeline.submit(pipeline.make_frame(stream, stream, index, image, received_at), on_done)

    def send(index: int, image: np.ndarray) -> Result:
        submit("k", index, image, time.monotonic())
        with answered:
            assert answered.wait_for(lambda: ("k", index) in results, 10)
        return results["k", index]

    square, blank = square_image(), np.zeros_like(square_image())
    pipeline.open_stream("k")
    assert send(0, square).polyps[0].alerting is False  # seen once: confirming
    started = send(1, square)
    assert [(p.track_id, p.alerting) for p in started.polyps] == [(1, True)] and len(started.alert_events) == 1

    # While the model runs another stream's frame, a frame long past its budget and the next one
    # queue up: the freshest is served, the late one is dropped. Frame 2 is within the hold of
    # track 1 (last seen in frame 1); frame 6 is past it (5 frames unseen).
    go_on = model_held()
    submit("k", late, square, time.monotonic() - 10.0)
    submit("k", late + 1, blank, time.monotonic())
    go_on()
    with answered:
        assert answered.wait_for(lambda: ("k", late + 1) in results, 10)
    dropped, after = results["k", late], results["k", late + 1]
    assert (dropped.status, dropped.polyps, dropped.alert_events) == (Status.DROPPED_LATE, (), ())
    assert after.status is Status.OK
    if late == 6:  # past the hold: the dropped frame shows nothing; the next one ends the alert
        assert dropped.held == () and after.held == ()
        assert [(e.track_id, e.kind) for e in after.alert_events] == [(1, "end")]
        return
    assert [(p.track_id, p.box, p.alerting) for p in dropped.held] == [(1, started.polyps[0].box, True)]
    assert [p.track_id for p in after.held] == [1]  # unseen 2 frames: 2 and 3
    for index in (4, 5):  # unseen 3 and 4: held; the dropped frame counted as a frame of the stream
        assert [p.track_id for p in send(index, blank).held] == [1]
    assert [e.kind for e in send(6, blank).alert_events] == ["end"]


def test_overlays_are_drawn_off_the_batcher_thread(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn_on: list[str] = []
    real: Callable[..., np.ndarray] = pipeline_module.draw_overlay

    def spy(*args: object, **kwargs: object) -> np.ndarray:
        drawn_on.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "draw_overlay", spy)
    result = run_one(pipeline, FrameOptions(return_overlay=True, return_mask=True))
    assert result.status is Status.OK and result.render is None
    assert result.overlay is not None and result.overlay.shape == (80, 96, 3)
    assert result.mask is not None and result.mask.shape == (80, 96)
    assert result.mask[27:45, 19:45].all() and not result.mask[:20].any()  # the white square (edges ±2 px)
    assert len(drawn_on) == 1 and drawn_on[0].startswith("polypstream-render")


def test_a_slow_overlay_does_not_hold_up_the_decoding_of_other_frames(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, drawing = threading.Event(), threading.Semaphore(0)
    real: Callable[..., np.ndarray] = pipeline_module.draw_overlay

    def slow(*args: object, **kwargs: object) -> np.ndarray:
        drawing.release()
        release.wait(20)  # a 4096x4096 overlay, say
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "draw_overlay", slow)
    # Given as many overlays being drawn as there are decode workers
    answered = threading.Semaphore(0)
    pipeline.open_stream("k")
    for i in range(pipeline.decode_workers):
        options = FrameOptions(return_overlay=True, no_drop=True)
        frame = pipeline.make_frame("k", "s", i, square_image(), time.monotonic(), options=options)
        pipeline.submit(frame, lambda result: answered.release())
    try:
        for _ in range(pipeline.decode_workers):
            assert drawing.acquire(timeout=10)
        # When another stream's frame is decoded meanwhile, it does not wait for them
        decoded = pipeline.decode_pool.submit(pipeline.make_frame, "k2", "s2", 0, square_image(), 0.0)
        assert decoded.result(timeout=5).tensor is not None
    finally:
        release.set()
        for _ in range(pipeline.decode_workers):
            assert answered.acquire(timeout=20)
        pipeline.close_stream("k")


def test_a_result_whose_drawing_fails_is_answered_failed(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> np.ndarray:
        raise MemoryError("no room for the overlay")

    monkeypatch.setattr(pipeline_module, "draw_overlay", broken)
    result = run_one(pipeline, FrameOptions(return_overlay=True))
    assert result.status is Status.FAILED
    assert result.error == "drawing the mask or overlay failed: no room for the overlay"
    assert (result.overlay, result.render, result.polyps) == (None, None, ())


def test_every_decode_worker_thread_is_warmed_once_at_start() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from polypstream.pipeline import on_every_thread

    seen: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        with lock:
            seen.append(threading.get_ident())

    with ThreadPoolExecutor(max_workers=4) as pool:
        on_every_thread(pool, 4, work)
        assert len(seen) == 4 and len(set(seen)) == 4  # each of the 4 threads once, none twice
        assert set(seen) == {t.ident for t in pool._threads}


def test_served_regions_keep_the_models_score_floor(tmp_path: Path, registry: CollectorRegistry) -> None:
    # A white square (probability ~1.0) and a grey one (138/255: sigmoid(20 * 138/255 - 10) =
    # 0.695) on black, at the tiny model's own 64x64; its metadata puts the floor at 0.9.
    model = build_tiny_model(tmp_path / "floor.onnx", metadata={"polypstream.min_region_score": "0.9"})
    image = np.zeros((64, 64, 3), np.uint8)
    image[4:20, 4:20] = 255
    image[40:56, 40:56] = 138
    config = EngineConfig(max_batch=1, budget_ms=10_000, decode_workers=1, min_area_fraction=0.0)
    served = Pipeline(Runner(model, device="cpu", max_batch=1), config, Metrics(registry))
    served.start()
    try:
        result = run_one(served, FrameOptions(), image)
    finally:
        served.stop()
    assert [p.box for p in result.polyps] == [(4, 4, 16, 16)]  # the grey square is under the floor


class RecordingPool:
    """The pipeline's decode pool, recording what is handed to it."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.work: list[str] = []

    def submit(self, fn: Callable[..., object], *args: object) -> Future[object]:
        self.work.append(getattr(fn, "__name__", ""))
        return self.pool.submit(fn, *args)


def answer(pipeline: Pipeline, index: int, options: FrameOptions, image: np.ndarray | None = None) -> Result:
    """Run one frame of stream "k" (left open) and wait for its result."""
    done = threading.Event()
    got: list[Result] = []

    def on_done(result: Result) -> None:
        got.append(result)
        done.set()

    frame = pipeline.make_frame("k", "scope", index, square_image() if image is None else image, 0.0, options=options)
    pipeline.submit(frame, on_done)
    assert done.wait(10)
    return got[0]


def test_no_view_picture_is_drawn_while_nobody_watches(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = RecordingPool(pipeline.render_pool)
    monkeypatch.setattr(pipeline, "render_pool", pool)
    pipeline.view = ViewHub({})
    pipeline.open_stream("k")
    for index in range(3):
        answer(pipeline, index, FrameOptions(allow_view=True))
    # The decision is taken on the batcher's thread before the answer: nothing was handed over
    assert pool.work == []
    assert [s["id"] for s in pipeline.view.snapshot()["streams"]] == ["k"]  # type: ignore[attr-defined]
    assert pipeline.metrics.registry.get_sample_value("polypstream_view_pictures_total") == 0


def test_the_view_shows_each_streams_alert_rule_at_its_frame_rate(pipeline: Pipeline) -> None:
    # The server's rule here: 2 of 2 frames held 4, counted at 25 fps (a model without its own).
    pipeline.view = ViewHub({})
    for key, rate in (("k50", 50.0), ("k0", 0.0)):
        pipeline.open_stream(key)
        frame = pipeline.make_frame(
            key, key, 0, square_image(), 0.0, options=FrameOptions(allow_view=True, frame_rate=rate)
        )
        done = threading.Event()
        pipeline.submit(frame, lambda result, done=done: done.set())
        assert done.wait(10)
    shown = {s["id"]: s["alerts"] for s in pipeline.view.snapshot()["streams"]}  # type: ignore[attr-defined]
    assert shown == {"k50": "3 of 3 frames, held 8, at 50 fps", "k0": "2 of 2 frames, held 4, frame rate not said"}


def test_while_a_view_picture_is_drawn_no_other_of_that_stream_is_asked_for(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_draw = pipeline._draw_view

    def slow_draw(frame: Frame, *rest: object) -> None:
        release.wait(20)  # drawing at the bottom of a busy machine
        real_draw(frame, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "_draw_view", slow_draw)
    pool = RecordingPool(pipeline.render_pool)  # records on the batcher's thread, before each answer
    monkeypatch.setattr(pipeline, "render_pool", pool)
    hub = pipeline.view = ViewHub({})
    pipeline.open_stream("k")
    answer(pipeline, 0, FrameOptions(allow_view=True))  # puts the stream on the view
    viewer = hub.join()  # ready, and stays ready: it waits for pictures
    for index in range(1, 6):
        answer(pipeline, index, FrameOptions(allow_view=True))
    assert pool.work == ["slow_draw"]  # frame 1's; frames 2-5 came while it was being drawn
    release.set()
    pictures = hub.next_pictures(viewer, 10.0)
    assert pictures is not None and [p.index for p in pictures] == [1]
    answer(pipeline, 6, FrameOptions(allow_view=True))
    assert pool.work == ["slow_draw", "slow_draw"]  # published: the next frame is drawn again


def test_a_view_picture_that_fails_to_draw_does_not_stop_the_next(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = pipeline.view = ViewHub({})
    pipeline.open_stream("k")
    answer(pipeline, 0, FrameOptions(allow_view=True))
    viewer = hub.join()
    real = pipeline_module.draw_reported

    def broken(*args: object) -> np.ndarray:
        raise ValueError("broken")

    monkeypatch.setattr(pipeline_module, "draw_reported", broken)
    answer(pipeline, 1, FrameOptions(allow_view=True))
    deadline = time.monotonic() + 10
    while not hub.claim_picture("k"):  # until the failed drawing (on the render pool) gives its claim back
        assert time.monotonic() < deadline, "a failed drawing kept its stream's claim"
        time.sleep(0.01)
    hub.unclaim("k")
    monkeypatch.setattr(pipeline_module, "draw_reported", real)
    answer(pipeline, 2, FrameOptions(allow_view=True))
    pictures = hub.next_pictures(viewer, 10.0)
    assert pictures is not None and [p.index for p in pictures] == [2]


def test_a_ready_viewer_gets_the_frame_drawn_with_its_polyps(pipeline: Pipeline) -> None:
    hub = pipeline.view = ViewHub({})
    pipeline.open_stream("k")
    answer(pipeline, 0, FrameOptions(allow_view=True))  # puts the stream on the view
    viewer = hub.join()
    served = answer(pipeline, 1, FrameOptions(allow_view=True))
    pictures = hub.next_pictures(viewer, 10.0)
    assert pictures is not None and len(pictures) == 1
    picture = pictures[0]
    assert (picture.key, picture.index) == ("k", 1)
    assert picture.polyps == served.polyps and served.polyps  # 96 px wide: drawn at the frame's size
    assert pipeline.metrics.registry.get_sample_value("polypstream_view_pictures_total") == 1
    image = cv2.imdecode(np.frombuffer(picture.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (80, 96, 3)
    # A frame that does not allow viewing is not drawn, and takes the stream off the view
    answer(pipeline, 2, FrameOptions(allow_view=False))
    assert hub.next_pictures(viewer, 0.5) == []
    assert hub.snapshot()["streams"] == []
    pipeline.close_stream("k")


def test_a_wide_frame_is_drawn_for_the_view_at_most_960_pixels_wide(pipeline: Pipeline) -> None:
    hub = pipeline.view = ViewHub({})
    pipeline.open_stream("k")
    image = square_image(1920, 1600, (320, 480, 640, 480))
    answer(pipeline, 0, FrameOptions(allow_view=True), image)
    viewer = hub.join()
    served = answer(pipeline, 1, FrameOptions(allow_view=True), image)
    pictures = hub.next_pictures(viewer, 10.0)
    assert pictures is not None
    drawn = cv2.imdecode(np.frombuffer(pictures[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == (800, 960, 3)
    assert [p.box for p in pictures[0].polyps] == [tuple(round(v / 2) for v in p.box) for p in served.polyps]
    assert served.overlay is None  # the client asked for none: its answer carries none
    pipeline.close_stream("k")


def niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def on_the_models_thread(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, probe: Callable[[], T]) -> list[T]:
    """What `probe` says on the thread the model runs on, while one frame is served."""
    real_run = pipeline.runner.run
    seen: list[T] = []

    def spy(tensors: list[np.ndarray]) -> np.ndarray:
        seen.append(probe())
        return real_run(tensors)

    monkeypatch.setattr(pipeline.runner, "run", spy)
    assert run_one(pipeline, FrameOptions()).status is Status.OK
    return seen


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own niceness is Linux's")
def test_pixel_work_and_offline_decoding_run_below_the_model_and_live_decoding(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = niceness()
    lowered = min(19, own + BACKGROUND_NICE)
    assert pipeline.render_pool.submit(niceness).result(10) == lowered
    assert pipeline.offline_decode_pool.submit(niceness).result(10) == lowered
    assert pipeline.decode_pool.submit(niceness).result(10) == own
    # The model runs on the batcher's thread, at the process's priority
    assert on_the_models_thread(pipeline, monkeypatch, niceness) == [own]
    assert niceness() == own  # lowering a worker's priority left the caller's alone


@pytest.mark.skipif(sys.platform != "linux", reason="threads' names in /proc are Linux's")
def test_the_operating_system_sees_each_thread_by_its_work(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    def names(pool: ThreadPoolExecutor, workers: int) -> set[str | None]:
        seen: set[str | None] = set()
        pipeline_module.on_every_thread(pool, workers, lambda: seen.add(os_thread_name()))
        return seen

    workers = pipeline.decode_workers
    assert names(pipeline.decode_pool, workers) == {f"decode_{i}" for i in range(workers)}
    assert names(pipeline.render_pool, workers) == {f"render_{i}" for i in range(workers)}
    assert names(pipeline.offline_decode_pool, max(1, workers // 2)) == {
        f"offline_{i}" for i in range(max(1, workers // 2))
    }
    assert on_the_models_thread(pipeline, monkeypatch, os_thread_name) == ["batcher"]


def regions_of_a_batch(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    boxes: list[tuple[int, int, int, int]],
    workers: int = 2,
) -> tuple[list[Result], list[str]]:
    """The results of one batch of size×size frames, a white square at each box, processed by a
    pipeline with `workers` decode workers (so as many threads find regions: the regions pool's
    and the caller's), and the names of the threads that found each frame's regions."""
    from polypstream.batcher import Queued

    model = build_tiny_model(tmp_path / f"tiny{size}.onnx", size=size)
    config = EngineConfig(max_batch=len(boxes), budget_ms=10_000, decode_workers=workers)
    pipe = Pipeline(Runner(model, device="cpu", max_batch=len(boxes)), config, Metrics(CollectorRegistry()))
    found_on: list[str] = []
    real = pipeline_module.locate_polyps

    def spy(*args: object, **kwargs: object) -> object:
        found_on.append(threading.current_thread().name)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline_module, "locate_polyps", spy)
    try:
        batch = []
        for i, box in enumerate(boxes):
            pipe.open_stream(f"k{i}")
            frame = pipe.make_frame(f"k{i}", f"s{i}", 0, square_image(size, size, box), time.monotonic())
            batch.append(Queued(frame, lambda result: None, time.monotonic()))
        return pipe._process(batch, time.monotonic()), found_on
    finally:
        pipe.stop()


def test_a_batch_of_large_maps_has_its_regions_found_on_two_threads_in_batch_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boxes = [(16, 24, 32, 24), (100, 40, 50, 60), (8, 150, 70, 30)]
    results, found_on = regions_of_a_batch(tmp_path, monkeypatch, 224, boxes)  # 224²: over the 200² threshold
    assert [[p.box for p in r.polyps] for r in results] == [[box] for box in boxes]
    assert [r.stream_id for r in results] == ["s0", "s1", "s2"]
    # frames 0 and 2 on the calling thread, frame 1 on the regions pool
    assert sorted(name.startswith("polypstream-regions") for name in found_on) == [False, False, True]
    assert all(r.timing.postprocess_s > 0 for r in results)


def test_a_batch_of_five_large_maps_comes_back_in_batch_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two threads take frames 0, 2, 4 and 1, 3: the third of the first thread's lands in place.
    # 200²: the threshold itself is large enough.
    boxes = [(16, 24, 32, 24), (100, 40, 50, 60), (8, 150, 70, 30), (120, 120, 40, 40), (60, 10, 20, 20)]
    results, found_on = regions_of_a_batch(tmp_path, monkeypatch, 200, boxes)
    assert [[p.box for p in r.polyps] for r in results] == [[box] for box in boxes]
    assert sorted(name.startswith("polypstream-regions") for name in found_on) == [False, False, False, True, True]


def test_with_three_decode_workers_a_batchs_regions_are_found_on_three_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boxes = [(16, 24, 32, 24), (100, 40, 50, 60), (8, 150, 70, 30)]
    results, found_on = regions_of_a_batch(tmp_path, monkeypatch, 224, boxes, workers=3)
    assert [[p.box for p in r.polyps] for r in results] == [[box] for box in boxes]
    assert sorted(name.startswith("polypstream-regions") for name in found_on) == [False, True, True]


def test_a_batch_of_small_maps_has_its_regions_found_on_the_calling_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boxes = [(4, 6, 20, 10), (30, 30, 16, 16), (2, 40, 30, 20)]
    results, found_on = regions_of_a_batch(tmp_path, monkeypatch, 64, boxes)
    assert [[p.box for p in r.polyps] for r in results] == [[box] for box in boxes]
    assert found_on == [threading.current_thread().name] * 3


def test_offline_frames_get_half_the_decode_workers_unless_told_how_many(tiny_model: Path) -> None:
    for decode, offline, expected in ((4, 0, 2), (1, 0, 1), (4, 6, 6)):
        config = EngineConfig(max_batch=1, decode_workers=decode, offline_decode_workers=offline)
        pipe = Pipeline(Runner(tiny_model, device="cpu", max_batch=1), config, Metrics(CollectorRegistry()))
        try:
            assert pipe.offline_decode_workers == expected
            assert pipe.offline_decode_pool._max_workers == expected  # the pool no-drop frames decode on
        finally:
            pipe.stop()
