"""Which pool does a frame's pixel work: light live frames beside the model, heavy and offline
work on the pools that run below them (tests/unit/test_pipeline.py checks the priorities)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import numpy as np
import pytest

from polypstream import server as server_module
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.config import ServerConfig
from polypstream.frames import Result, Status, invalid_result
from polypstream.pipeline import Pipeline
from polypstream.server import SegmenterServicer, frame_sizes, heavy
from tests.conftest import blank_image


def encoded(width: int, height: int, ext: str = ".jpg", **options: bool) -> pb.Frame:
    return pb.Frame(stream_id="s", index=0, encoded=blank_image(width, height, ext), options=pb.FrameOptions(**options))


@pytest.mark.parametrize(
    ("frame", "pool"),
    [
        # A 1080p JPEG without an overlay is decoded at a fraction of its size: light
        pytest.param(encoded(1920, 1080), "decode_pool", id="1080p"),
        # With an overlay it is decoded in full: 2.07 MP, heavy
        pytest.param(encoded(1920, 1080, return_overlay=True), "render_pool", id="1080p-overlay"),
        # 720p in full is not more than the threshold (server.HEAVY_PIXELS)
        pytest.param(encoded(1280, 720, return_overlay=True), "decode_pool", id="720p-overlay"),
        pytest.param(encoded(1281, 720, return_overlay=True), "render_pool", id="over-720p-overlay"),
        # A PNG is always decoded in full
        pytest.param(encoded(1920, 1080, ".png"), "render_pool", id="1080p-png"),
        pytest.param(encoded(640, 480, ".png"), "decode_pool", id="small-png"),
        # Raw pixels are taken as they are
        pytest.param(pb.Frame(raw=pb.RawImage(width=1920, height=1080)), "render_pool", id="raw-1080p"),
        # Offline frames, heavy or not, have their own pool
        pytest.param(encoded(1920, 1080, return_overlay=True, no_drop=True), "offline_decode_pool", id="offline-heavy"),
        pytest.param(encoded(64, 48, no_drop=True), "offline_decode_pool", id="offline-light"),
        # Unreadable bytes are refused by a light worker, without decoding
        pytest.param(pb.Frame(encoded=b"not an image"), "decode_pool", id="unreadable"),
    ],
)
def test_frames_are_decoded_on_the_pool_their_weight_calls_for(pipeline: Pipeline, frame: pb.Frame, pool: str) -> None:
    servicer = SegmenterServicer(pipeline, ServerConfig())
    sizes = frame_sizes(frame, pipeline.runner.input_size)
    assert servicer.decode_pool_for(frame, sizes) is getattr(pipeline, pool)


@pytest.fixture
def encoded_on(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each result is encoded to protobuf on, in order."""
    threads: list[str] = []
    real = server_module.result_to_proto

    def spy(result: Result) -> pb.FrameResult:
        threads.append(threading.current_thread().name)
        return real(result)

    monkeypatch.setattr(server_module, "result_to_proto", spy)
    return threads


def test_masks_and_overlays_are_encoded_on_the_render_pool(pipeline: Pipeline, encoded_on: list[str]) -> None:
    servicer = SegmenterServicer(pipeline, ServerConfig())
    plain = invalid_result("s", 0, "", 0.0)
    mask, overlay = np.ones((48, 64), bool), np.zeros((48, 64, 3), np.uint8)
    with_pixels = [
        dataclasses.replace(plain, mask=mask, overlay=overlay),
        dataclasses.replace(plain, mask=mask),
        dataclasses.replace(plain, overlay=overlay),
    ]

    async def each() -> list[pb.FrameResult]:
        return [await servicer._to_proto(result) for result in [plain, *with_pixels]]

    _, both, only_mask, only_overlay = asyncio.run(each())
    assert both.mask_png and both.overlay_jpeg and only_mask.mask_png and only_overlay.overlay_jpeg
    assert encoded_on[0] == threading.current_thread().name  # nothing to encode: no hand-over
    assert all(thread.startswith("polypstream-render") for thread in encoded_on[1:]) and len(encoded_on) == 4


def test_a_frame_is_heavy_by_the_pixels_it_decodes_to() -> None:
    assert heavy(((1920, 1080), (1920, 1080)))  # in full: over 1280×720
    assert not heavy(((3840, 2160), (960, 540)))  # a 4K JPEG decoded at a quarter: light
    assert not heavy(((1280, 720), (1280, 720)))  # 720p itself is not over
    assert not heavy(None)  # unreadable header: refused before decoding


@pytest.mark.parametrize(
    ("pixels", "encoded_on_worker"), [({}, False), ({"mask": True}, True), ({"overlay": True}, True)]
)
def test_an_answer_with_pixels_is_encoded_on_the_worker_that_drew_them(
    encoded_on: list[str], pixels: dict[str, bool], encoded_on_worker: bool
) -> None:
    # So that what waits on the event loop holds no frame-sized pixels, and the loop encodes none.
    mask = np.ones((4, 4), bool) if pixels.get("mask") else None
    overlay = np.zeros((4, 4, 3), np.uint8) if pixels.get("overlay") else None
    result = Result(stream_id="s", index=0, status=Status.OK, mask=mask, overlay=overlay)

    async def scenario() -> pb.FrameResult:
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        delivery = server_module._Delivery(asyncio.get_running_loop(), answer)
        worker = threading.Thread(target=delivery.deliver_threadsafe, args=(result,), name="worker")
        worker.start()
        worker.join()
        return (await answer).message

    message = asyncio.run(scenario())
    assert encoded_on == (["worker"] if encoded_on_worker else ["MainThread"])
    assert (message.mask_png != b"", message.overlay_jpeg != b"") == (mask is not None, overlay is not None)
