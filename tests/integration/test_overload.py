"""Slow and vanishing clients, stream limits and overload against a real server."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream._proto.polypstream.v1 import segmenter_pb2_grpc as pb_grpc
from polypstream.client import SegmenterClient, encode_frame
from polypstream.config import ServerConfig
from polypstream.frames import FrameOptions
from polypstream.pipeline import Pipeline
from polypstream.server import serve_in_thread
from polypstream.sources import SourceHub
from tests.conftest import square_image, wait_for

BIG = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)  # noisy: large JPEG overlays


def big_frames(n: int, stream_id: str = "slow") -> Iterator[pb.Frame]:
    options = FrameOptions(return_overlay=True, return_mask=True, no_drop=True)
    for i in range(n):
        yield encode_frame(BIG, stream_id, i, options)


def test_a_client_that_stops_reading_loses_its_stream_and_no_one_else_does(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    config = ServerConfig(address="127.0.0.1:0", metrics_address="", send_timeout_s=1.0, inflight_per_stream=4)
    with serve_in_thread(pipeline, config) as running:
        slow_channel = grpc.insecure_channel(running.address)
        stub = SegmenterClient(running.address).stub
        responses = stub.Segment(big_frames(400))  # and never read
        # Meanwhile a well-behaved client is served normally.
        with SegmenterClient(running.address) as other:
            good = [encode_frame(square_image(), "good", i, FrameOptions(no_drop=True)) for i in range(20)]
            assert [a.status for a in other.segment(iter(good))] == ["OK"] * 20
        aborts = {"reason": "slow_client"}
        wait_for(lambda: registry.get_sample_value("polypstream_stream_aborts_total", aborts) == 1)
        with pytest.raises(grpc.RpcError) as err:
            for _ in responses:
                pass
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "results could not be delivered for 1 s" in (err.value.details() or "")
        wait_for(lambda: registry.get_sample_value("polypstream_active_streams") == 0)
        slow_channel.close()


def test_a_client_that_never_reads_frees_its_slot_when_the_server_gives_up_on_it(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    # Given a server with room for one stream, and a client that sends overlays and never reads
    config = ServerConfig(address="127.0.0.1:0", metrics_address="", max_streams=1, send_timeout_s=1.0)
    with serve_in_thread(pipeline, config) as running:
        channel = grpc.insecure_channel(running.address)
        responses = pb_grpc.SegmenterStub(channel).Segment(big_frames(400))
        wait_for(lambda: registry.get_sample_value("polypstream_stream_aborts_total", {"reason": "slow_client"}) == 1)
        # Then its slot is free while it still has not read anything nor hung up
        wait_for(lambda: registry.get_sample_value("polypstream_active_streams") == 0)
        assert not pipeline._streams
        wait_for(lambda: registry.get_sample_value("polypstream_frame_memory_bytes") == 0)
        with SegmenterClient(running.address) as other:
            good = [encode_frame(square_image(), "good", i, FrameOptions(no_drop=True)) for i in range(3)]
            assert [a.status for a in other.segment(iter(good))] == ["OK"] * 3
        responses.cancel()
        channel.close()


def test_a_watcher_that_never_reads_loses_its_place_after_the_send_timeout(
    pipeline: Pipeline, registry: CollectorRegistry, tmp_path: Path
) -> None:
    # Given a server with room for one watcher, and a source of noisy frames (large overlays)
    clip = tmp_path / "noisy.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (640, 480))
    for _ in range(250):  # 10 s at its own pace
        writer.write(BIG)
    writer.release()
    hub = SourceHub("scope", str(clip), pipeline, realtime=True)
    config = ServerConfig(address="127.0.0.1:0", metrics_address="", max_watchers=1, send_timeout_s=1.0)
    with serve_in_thread(pipeline, config, {"scope": hub}) as running:
        # When a watcher asks for overlays and never reads them (nor hangs up)
        channel = grpc.insecure_channel(running.address)
        request = pb.WatchRequest(source="scope", options=pb.FrameOptions(return_overlay=True))
        stalled = pb_grpc.SegmenterStub(channel).Watch(request)
        # Then the server gives up on it, and its place is another's while the source plays on
        wait_for(lambda: registry.get_sample_value("polypstream_stream_aborts_total", {"reason": "slow_watcher"}) == 1)
        wait_for(lambda: running.servicer.active_watchers == 0)
        with SegmenterClient(running.address) as other:
            assert next(iter(other.watch("scope"))).result.status == pb.FRAME_STATUS_OK
        assert hub.state == "running"
        stalled.cancel()
        channel.close()


def test_a_client_that_disconnects_mid_stream_leaves_nothing_behind(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    with serve_in_thread(pipeline, config) as running:
        for _ in range(3):
            client = SegmenterClient(running.address)
            responses = client.segment(big_frames(200, "leaver"))
            next(responses)
            client.close()  # hang up with frames in flight
        wait_for(lambda: registry.get_sample_value("polypstream_active_streams") == 0)
        wait_for(lambda: pipeline.batcher.depth == 0)
        gc.collect()
        assert not pipeline._streams
        with SegmenterClient(running.address) as client:  # and the server still serves
            assert [a.status for a in client.segment(big_frames(2, "after"))] == ["OK", "OK"]


def test_overload_drops_late_frames_and_keeps_served_ones_within_budget(
    pipeline: Pipeline,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    slow_inference: Callable[[float], None],
) -> None:
    # Given a model that takes 30 ms per batch and a 100 ms budget, 4 live streams offering
    # far more than it can do: frames that would miss their deadline must be dropped.
    slow_inference(0.03)
    monkeypatch.setattr(pipeline, "budget_s", 0.1)
    pipeline.batcher.estimator.observe(1, 0.03)
    pipeline.batcher.estimator.observe(4, 0.035)
    results: list[list] = [[] for _ in range(4)]

    def live(k: int) -> None:
        frames = [encode_frame(square_image(), f"live{k}", i, FrameOptions()) for i in range(60)]
        with SegmenterClient(running.address) as client:
            results[k] = [a.result for a in client.segment(iter(frames))]

    with serve_in_thread(pipeline, ServerConfig(address="127.0.0.1:0", metrics_address="")) as running:
        threads = [threading.Thread(target=live, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    answered = [r for per_stream in results for r in per_stream]
    assert len(answered) == 240  # every frame answered
    dropped = [r for r in answered if r.status == pb.FRAME_STATUS_DROPPED_LATE]
    served = [r for r in answered if r.status == pb.FRAME_STATUS_OK]
    assert dropped and served
    assert registry.get_sample_value("polypstream_dropped_frames_total", {"reason": "late", "source": "grpc"}) == len(
        dropped
    )
    # Which frames are dropped, and when, is pinned on a fake clock in tests/unit/test_batcher.py;
    # how near the budget served frames stay is measured by the benchmarks, not asserted here.


def test_shutdown_answers_every_frame_it_read_then_ends_streams_unavailable(
    pipeline: Pipeline, registry: CollectorRegistry
) -> None:
    config = ServerConfig(address="127.0.0.1:0", metrics_address="", grace_s=10)
    sent = threading.Event()

    def slow_frames() -> Iterator[pb.Frame]:
        for i in range(1000):
            if i == 5:
                sent.set()
            time.sleep(0.02)
            yield encode_frame(square_image(), "live", i, FrameOptions(no_drop=True))

    answers = []
    with serve_in_thread(pipeline, config) as running:
        client = SegmenterClient(running.address)
        stream = client.segment(slow_frames())
        answers.append(next(stream))
        assert sent.wait(10)
        loop = running.loop
        assert loop is not None
        asyncio.run_coroutine_threadsafe(running.health.enter_graceful_shutdown(), loop).result()
        loop.call_soon_threadsafe(running.servicer.start_draining)
        with pytest.raises(grpc.RpcError) as err:
            for answer in stream:
                answers.append(answer)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in (err.value.details() or "")
        assert client.health() == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as refused:
            list(client.segment(iter([encode_frame(square_image(), "new", 0, FrameOptions())])))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert registry.get_sample_value("polypstream_streams_refused_total", {"reason": "shutting_down"}) == 1
        client.close()
    # Every frame the server read was answered to the client: its own count agrees.
    assert [a.result.index for a in answers] == list(range(len(answers)))
    assert registry.get_sample_value("polypstream_frames_total", {"status": "OK", "source": "grpc"}) == len(answers)
