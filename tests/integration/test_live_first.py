"""Live frames first: a live stream keeps its budget beside an offline client flooding the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import Answer, SegmenterClient, encode_frame
from polypstream.config import EngineConfig, ServerConfig
from polypstream.frames import FrameOptions
from polypstream.metrics import Metrics
from polypstream.pipeline import Pipeline
from polypstream.runner import Runner
from polypstream.server import serve_in_thread
from tests.conftest import square_image

BATCH_S = 0.1  # each batch of one frame takes 100 ms: 16 offline frames queued are 1.6 s of work


@pytest.fixture
def slow_pipeline(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    config = EngineConfig(max_batch=1, budget_ms=1000, max_wait_ms=0, decode_workers=2)
    pipe = Pipeline(Runner(tiny_model, device="cpu", max_batch=1), config, Metrics(CollectorRegistry()))
    real_run = pipe.runner.run

    def slow_run(tensors: list[np.ndarray]) -> np.ndarray:
        time.sleep(BATCH_S)
        return real_run(tensors)

    monkeypatch.setattr(pipe.runner, "run", slow_run)
    pipe.start()
    yield pipe
    pipe.stop()


def test_a_live_stream_beside_a_flooding_offline_client_keeps_every_frame(slow_pipeline: Pipeline) -> None:
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    with serve_in_thread(slow_pipeline, config) as running:
        offline_answers: list[Answer] = []
        flooding = threading.Event()

        def offline() -> None:
            def frames() -> Iterator[pb.Frame]:
                for i in range(60):
                    if i == 16:
                        flooding.set()  # 16 frames in flight: the server's queue is full of them
                    yield encode_frame(square_image(), "replay", i, FrameOptions(no_drop=True))

            with SegmenterClient(running.address) as client:
                offline_answers.extend(client.segment(frames()))

        replay = threading.Thread(target=offline)
        replay.start()
        assert flooding.wait(30)

        def live() -> Iterator[pb.Frame]:
            for i in range(5):
                yield encode_frame(square_image(), "scope", i, FrameOptions())  # live: may be dropped
                time.sleep(0.5)

        with SegmenterClient(running.address) as client:
            live_answers = list(client.segment(live()))
        replay.join(60)
        # Before live-first, each live frame waited behind 1.6 s of offline work: all dropped.
        assert [a.status for a in live_answers] == ["OK"] * 5
        assert [a.status for a in offline_answers] == ["OK"] * 60  # and the replay lost nothing
