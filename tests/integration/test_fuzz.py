"""Property: whatever frames a client sends, each is answered once, in order, and the
server stays healthy (hypothesis throws random Frames at a real in-process server)."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import SegmenterClient
from polypstream.config import EngineConfig, ServerConfig
from polypstream.metrics import Metrics
from polypstream.pipeline import Pipeline
from polypstream.runner import Runner
from polypstream.server import serve_in_thread
from tests.conftest import square_image
from tests.tiny_model import build_tiny_model

JPEG = cv2.imencode(".jpg", square_image())[1].tobytes()
PNG = cv2.imencode(".png", square_image(40, 30))[1].tobytes()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SegmenterClient]:
    model = build_tiny_model(tmp_path_factory.mktemp("fuzz") / "tiny.onnx")
    pipeline = Pipeline(
        Runner(model, device="cpu", max_batch=4),
        EngineConfig(max_batch=4, budget_ms=60_000),
        Metrics(CollectorRegistry()),
    )
    pipeline.start()
    config = ServerConfig(address="127.0.0.1:0", metrics_address="", max_pixels=512 * 512)
    with serve_in_thread(pipeline, config) as running, SegmenterClient(running.address) as c:
        yield c
    pipeline.stop()


images = st.one_of(
    st.just({"encoded": JPEG}),
    st.just({"encoded": PNG}),
    st.binary(max_size=64).map(lambda b: {"encoded": b}),
    st.integers(1, len(JPEG) - 1).map(lambda n: {"encoded": JPEG[:n]}),  # truncated
    st.builds(
        lambda w, h, fmt, data: {"raw": pb.RawImage(width=w, height=h, format=fmt, data=data)},
        st.integers(0, 40),
        st.integers(0, 40),
        st.integers(0, 6),  # includes unknown formats
        st.binary(max_size=4000),
    ),
    st.builds(
        lambda w, h: {"raw": pb.RawImage(width=w, height=h, format=pb.PIXEL_FORMAT_GRAY8)},
        st.just(100_000),
        st.just(100_000),
    ),
    st.just({}),  # no image
)
frames = st.lists(
    st.builds(
        lambda stream_id, index, image: pb.Frame(stream_id=stream_id, index=index, **image),
        st.sampled_from(["a", "a", "a", "b"]),
        st.integers(0, 12),
        images,
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sent=frames)
def test_every_random_frame_is_answered_once_in_order(client: SegmenterClient, sent: list[pb.Frame]) -> None:
    answers = list(client.segment(iter(sent)))
    assert [a.result.index for a in answers] == [f.index for f in sent]
    assert [a.status for a in answers] == expected_statuses(sent)
    for answer in answers:
        if answer.status == "INVALID_FRAME":
            assert answer.result.error  # always says why
    assert client.health() == "SERVING"


CHANNELS = {pb.PIXEL_FORMAT_BGR8: 3, pb.PIXEL_FORMAT_RGB8: 3, pb.PIXEL_FORMAT_GRAY8: 1}


def readable(frame: pb.Frame) -> bool:
    """Whether the frame carries an image the server can read (the generators above make
    valid images only as the JPEG and PNG constants and as raw pixels of the exact length)."""
    if frame.WhichOneof("image") == "encoded":
        return frame.encoded in (JPEG, PNG)
    if frame.WhichOneof("image") == "raw":
        raw = frame.raw
        channels = CHANNELS.get(raw.format)
        return (
            bool(channels) and raw.width > 0 and raw.height > 0 and len(raw.data) == raw.width * raw.height * channels
        )
    return False


def expected_statuses(sent: list[pb.Frame]) -> list[str]:
    """The stream rules, as the README states them: the first frame fixes the stream_id and
    indexes must increase; a frame breaking them changes nothing. A frame keeping them is
    OK when its image can be read."""
    stream_id: str | None = None
    last: int | None = None
    statuses = []
    for frame in sent:
        if (stream_id is not None and frame.stream_id != stream_id) or (last is not None and frame.index <= last):
            statuses.append("INVALID_FRAME")
            continue
        stream_id, last = frame.stream_id, frame.index
        statuses.append("OK" if readable(frame) else "INVALID_FRAME")
    return statuses
