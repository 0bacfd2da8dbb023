"""What the server writes into its messages, field by field; how it sizes and times a frame's
decode; frames that arrive as it stops."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import pytest

from polypstream import pipeline as pipeline_module
from polypstream import server as server_module
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.batcher import QueueFullError
from polypstream.client import encode_frame
from polypstream.config import ServerConfig
from polypstream.frames import AlertEvent, FrameOptions, Polyp, Result, Status, Timing
from polypstream.pipeline import Pipeline
from polypstream.server import MAX_ID_CHARS, InOrder, SegmenterServicer, _cut, decode_size, result_to_proto
from polypstream.view import ViewHub
from tests.conftest import FakeClock, blank_image, square_image


def test_a_result_becomes_its_message_field_by_field() -> None:
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    overlay = np.full((60, 80, 3), 200, np.uint8)
    result = Result(
        stream_id="scope",
        index=41,
        status=Status.OK,
        polyps=(Polyp(box=(1, 2, 30, 40), score=0.75, area=900, track_id=3, alerting=True),),
        held=(Polyp(box=(5, 6, 7, 8), score=0.5, area=50, track_id=4, alerting=True),),
        alert_events=(AlertEvent(3, "start"), AlertEvent(9, "end")),
        width=80,
        height=60,
        timing=Timing(
            decode_s=0.0015, queue_s=0.0025, batch_size=3, inference_s=0.004, postprocess_s=0.0075, server_s=0.0155
        ),
        mask=mask,
        overlay=overlay,
        client_time_ns=123_456_789,
    )
    message = result_to_proto(result)
    assert (message.stream_id, message.index, message.status, message.error) == ("scope", 41, pb.FRAME_STATUS_OK, "")
    assert (message.width, message.height, message.client_time_ns) == (80, 60, 123_456_789)
    t = message.timing
    assert t.batch_size == 3
    milliseconds = [t.decode_ms, t.queue_ms, t.inference_ms, t.postprocess_ms, t.server_ms]
    assert milliseconds == pytest.approx([1.5, 2.5, 4.0, 7.5, 15.5], rel=1e-12)
    polyp, held = message.polyps[0], message.held[0]
    assert (polyp.box.x, polyp.box.y, polyp.box.width, polyp.box.height) == (1, 2, 30, 40)
    assert (polyp.score, polyp.area, polyp.track_id, polyp.alerting) == (0.75, 900, 3, True)
    assert (held.box.x, held.box.y, held.box.width, held.box.height, held.track_id) == (5, 6, 7, 8, 4)
    assert [(e.track_id, e.kind) for e in message.alert_events] == [
        (3, pb.AlertEvent.KIND_START),
        (9, pb.AlertEvent.KIND_END),
    ]
    assert (message.mask_width, message.mask_height) == (8, 6)
    png = cv2.imdecode(np.frombuffer(message.mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(png, mask.astype(np.uint8) * 255)  # lossless: 255 inside, 0 out
    jpeg = cv2.imdecode(np.frombuffer(message.overlay_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (60, 80, 3) and np.abs(jpeg.astype(int) - 200).max() <= 1  # one flat colour


def test_a_result_without_pixels_carries_none() -> None:
    message = result_to_proto(Result(stream_id="s", index=0, status=Status.DROPPED_LATE, error="late"))
    assert (message.status, message.error) == (pb.FRAME_STATUS_DROPPED_LATE, "late")
    assert (message.mask_png, message.overlay_jpeg, message.mask_width, message.mask_height) == (b"", b"", 0, 0)


def test_client_text_is_echoed_whole_up_to_the_limit_and_cut_past_it() -> None:
    assert _cut("scope-1") == "scope-1"
    assert _cut("a" * MAX_ID_CHARS) == "a" * MAX_ID_CHARS
    assert _cut("a" * (MAX_ID_CHARS + 1)) == "a" * MAX_ID_CHARS + "…"
    assert _cut("abcdef", 3) == "abc…"


def test_a_jpeg_is_decoded_large_enough_for_the_model_and_for_the_view_when_viewed() -> None:
    assert decode_size((128, 96), viewed=False) == (128, 96)
    assert decode_size((128, 96), viewed=True) == (640, 360)  # the live view's smallest picture
    assert decode_size((800, 300), viewed=True) == (800, 360)  # each side the larger of the two
    assert decode_size((300, 800), viewed=True) == (640, 800)


def servicer_of(pipeline: Pipeline) -> SegmenterServicer:
    return SegmenterServicer(pipeline, ServerConfig())


def test_a_frames_decode_time_is_reading_its_image_and_preparing_the_models_input(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's and the pipeline's clocks, moved only by the work: reading the JPEG takes
    # 2 ms, preparing the model's input 3 ms.
    clock = FakeClock()
    clock.install(monkeypatch, server_module, pipeline_module)
    monkeypatch.setattr(server_module, "decode_frame_image", clock.taking(0.002, server_module.decode_frame_image))
    monkeypatch.setattr(pipeline.runner, "preprocess", clock.taking(0.003, pipeline.runner.preprocess))
    frame = servicer_of(pipeline)._decode(encode_frame(square_image(), "s", 7, FrameOptions()), "k", 42.0)
    assert (frame.index, frame.received_at, frame.width, frame.height) == (7, 42.0, 96, 80)
    assert frame.decode_s == pytest.approx(0.005, abs=1e-12)


def test_a_frame_read_as_the_decode_pool_shuts_is_answered_failed_in_its_turn(pipeline: Pipeline) -> None:
    async def scenario() -> pb.FrameResult:
        servicer = servicer_of(pipeline)
        pool = ThreadPoolExecutor(max_workers=1)
        pool.shutdown()  # the server is stopping
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        order = InOrder()
        servicer.start_frame(encode_frame(square_image(), "scope", 5, FrameOptions()), "k", answer, order, pool)
        ran: list[int] = []
        order.run(order.ticket(), lambda: ran.append(1))  # the next frame's turn is not held up
        assert ran == [1]
        return (await answer).message

    message = asyncio.run(scenario())
    assert (message.stream_id, message.index) == ("scope", 5)
    assert (message.status, message.error) == (pb.FRAME_STATUS_FAILED, "server is shutting down")
    failed = pipeline.metrics.registry.get_sample_value(
        "polypstream_frames_total", {"status": "FAILED", "source": "grpc"}
    )
    assert failed == 1


def test_a_frame_handed_over_as_the_batcher_stops_is_answered_failed(pipeline: Pipeline) -> None:
    servicer = servicer_of(pipeline)
    frame = pipeline.make_frame("k", "scope", 3, square_image(), 0.0)
    pipeline.batcher.stop()
    got: list[Result] = []
    servicer._submit(frame, got.append)
    assert [(r.status, r.error, r.index) for r in got] == [(Status.FAILED, "the server is shutting down", 3)]


def test_a_frame_the_decoder_fails_on_unexpectedly_is_answered_invalid(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise ValueError("libjpeg said no")

    monkeypatch.setattr(server_module, "decode_frame_image", broken)
    outcome = servicer_of(pipeline)._decoded(encode_frame(square_image(), "scope", 4, FrameOptions()), "k", 1.0)
    assert isinstance(outcome, Result)
    assert (outcome.status, outcome.error, outcome.index) == (
        Status.INVALID_FRAME,
        "cannot read frame: libjpeg said no",
        4,
    )


def test_a_frame_refused_by_a_full_queue_is_answered_failed(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(frame: object, on_done: object, **kwargs: object) -> None:
        raise QueueFullError("inference queue full (1024 frames)")

    monkeypatch.setattr(pipeline, "submit", full)
    got: list[Result] = []
    servicer_of(pipeline)._submit(pipeline.make_frame("k", "scope", 3, square_image(), 0.0), got.append)
    assert [(r.status, r.error) for r in got] == [(Status.FAILED, "inference queue full (1024 frames)")]


@pytest.mark.parametrize(
    ("options", "viewer", "decoded"),
    [
        ({}, False, (240, 135)),  # enough for the tiny model's 64²: 1/8 scale
        ({"allow_view": True}, False, (240, 135)),  # viewable, but no live view: the model's size
        ({"allow_view": True}, True, (960, 540)),  # a viewer ready: the view's 640×360 covered, 1/2
        ({"return_overlay": True}, False, (1920, 1080)),  # the overlay is drawn on the frame itself
    ],
)
def test_a_jpeg_is_decoded_as_large_as_its_uses_need(
    pipeline: Pipeline, options: dict[str, bool], viewer: bool, decoded: tuple[int, int]
) -> None:
    if viewer:
        pipeline.view = ViewHub({})
        pipeline.view.join()
    message = pb.Frame(stream_id="s", index=0, encoded=blank_image(1920, 1080), options=pb.FrameOptions(**options))
    frame = servicer_of(pipeline)._decode(message, "k", 0.0)
    assert (frame.image.shape[1], frame.image.shape[0]) == decoded
    assert (frame.width, frame.height) == (1920, 1080)  # results are reported in the frame's pixels
