"""A real grpc.aio server in-process on port 0, with the tiny brightness model."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.capture import CapturedFrame
from polypstream.client import Answer, SegmenterClient, SourceWatch, Stream, encode_frame
from polypstream.config import ServerConfig
from polypstream.corpus import METADATA_CSV, plan_corpus, write_corpus
from polypstream.frames import FrameOptions, Result
from polypstream.pipeline import Pipeline
from polypstream.replay import Tally, replay
from polypstream.server import RunningServer, serve_in_thread
from polypstream.sources import SourceHub
from tests.conftest import drawn_dataset, square_image, wait_for, write_clip

SQUARE = (16, 24, 32, 24)


@pytest.fixture
def server(pipeline: Pipeline) -> Iterator[RunningServer]:
    with serve_in_thread(pipeline, ServerConfig(address="127.0.0.1:0", metrics_address="", max_streams=4)) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[SegmenterClient]:
    with SegmenterClient(server.address) as c:
        c.wait_ready()
        yield c


def frames(n: int, stream_id: str = "s", options: FrameOptions = FrameOptions(no_drop=True)) -> Iterator[pb.Frame]:
    for i in range(n):
        yield encode_frame(square_image(box=SQUARE), stream_id, i, options, jpeg_quality=100)


def test_every_frame_is_answered_once_in_order_with_the_polyp_box(client: SegmenterClient) -> None:
    answers = list(client.segment(frames(20)))
    assert [a.result.index for a in answers] == list(range(20))
    assert {a.status for a in answers} == {"OK"}
    first = answers[0].result
    assert (first.width, first.height, len(first.polyps)) == (96, 80, 1)
    box = first.polyps[0].box
    # Down to 64×64 and back up: the white square's edges move by at most 2 px.
    assert np.allclose([box.x, box.y, box.width, box.height], SQUARE, atol=2)
    assert first.polyps[0].score > 0.9
    assert {a.result.polyps[0].track_id for a in answers} == {1}  # one polyp, one track
    assert all(a.result.timing.batch_size >= 1 and a.result.timing.server_ms > 0 for a in answers)


def test_invalid_frames_are_answered_and_the_stream_goes_on(client: SegmenterClient) -> None:
    def mixed() -> Iterator[pb.Frame]:
        good = list(frames(5))
        yield good[0]
        yield pb.Frame(stream_id="s", index=1, encoded=b"definitely not a jpeg")
        yield pb.Frame(stream_id="s", index=2)  # no image at all
        yield pb.Frame(
            stream_id="s", index=3, raw=pb.RawImage(width=4, height=4, format=pb.PIXEL_FORMAT_BGR8, data=b"123")
        )
        yield good[4]

    answers = list(client.segment(mixed()))
    assert [a.status for a in answers] == ["OK", "INVALID_FRAME", "INVALID_FRAME", "INVALID_FRAME", "OK"]
    assert "not a JPEG or PNG" in answers[1].result.error
    assert "empty frame" in answers[2].result.error
    assert "needs 48 bytes, got 3" in answers[3].result.error


def test_every_answer_echoes_its_frames_client_time_valid_or_not(client: SegmenterClient) -> None:
    good = list(frames(3))
    sent = [
        good[0],
        pb.Frame(stream_id="s", index=1, encoded=b"not an image"),  # cannot be decoded
        pb.Frame(stream_id="s", index=1, encoded=good[2].encoded),  # breaks the order rules
        good[2],
    ]
    for k, frame in enumerate(sent):
        frame.client_time_ns = 1_000 + k
    answers = list(client.segment(iter(sent)))
    assert [a.status for a in answers] == ["OK", "INVALID_FRAME", "INVALID_FRAME", "OK"]
    assert [a.result.client_time_ns for a in answers] == [1_000, 1_001, 1_002, 1_003]


def test_order_rules_refuse_repeats_and_id_changes_and_the_stream_goes_on(client: SegmenterClient) -> None:
    good = list(frames(6))

    def mixed() -> Iterator[pb.Frame]:
        yield good[2]
        yield good[2]  # repeated index
        yield good[1]  # earlier index
        renamed = pb.Frame()
        renamed.CopyFrom(good[3])
        renamed.stream_id = "other"
        yield renamed  # stream_id changed
        yield good[5]  # a gap is fine

    answers = list(client.segment(mixed()))
    assert [a.status for a in answers] == ["OK", "INVALID_FRAME", "INVALID_FRAME", "INVALID_FRAME", "OK"]
    assert "index 2 is not after the previous index 2" in answers[1].result.error
    assert "stream_id changed from 's' to 'other'" in answers[3].result.error


def test_raw_frames_are_segmented(client: SegmenterClient) -> None:
    image = square_image(box=SQUARE)
    raw = pb.RawImage(width=96, height=80, format=pb.PIXEL_FORMAT_BGR8, data=image.tobytes())
    (answer,) = client.segment(iter([pb.Frame(stream_id="raw", index=7, raw=raw)]))
    assert answer.status == "OK" and answer.result.index == 7 and len(answer.result.polyps) == 1


def test_mask_and_overlay_come_back_at_frame_resolution(client: SegmenterClient) -> None:
    (answer,) = client.segment(frames(1, options=FrameOptions(return_mask=True, return_overlay=True)))
    mask = cv2.imdecode(np.frombuffer(answer.result.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE)
    overlay = cv2.imdecode(np.frombuffer(answer.result.overlay_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert mask.shape == (80, 96) and overlay.shape == (80, 96, 3)
    assert (answer.result.mask_width, answer.result.mask_height) == (96, 80)
    x, y, w, h = SQUARE
    assert mask[y + h // 2, x + w // 2] == 255 and mask[2, 90] == 0


def test_mask_comes_back_at_model_resolution_when_asked(client: SegmenterClient) -> None:
    options = FrameOptions(return_mask=True, mask_at_model_resolution=True, no_drop=True)
    (answer,) = client.segment(frames(1, options=options))
    r = answer.result
    mask = cv2.imdecode(np.frombuffer(r.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE)
    # the tiny model's input is 64×64; the frame stays 96×80, and so do the boxes
    assert mask.shape == (64, 64) and (r.mask_width, r.mask_height) == (64, 64) and (r.width, r.height) == (96, 80)
    x, y, w, h = SQUARE
    sx, sy = 64 / 96, 64 / 80
    assert mask[int((y + h / 2) * sy), int((x + w / 2) * sx)] == 255 and mask[2, 60] == 0
    assert np.allclose([r.polyps[0].box.x, r.polyps[0].box.width], [x, w], atol=2)


def test_two_concurrent_streams_each_get_their_own_answers(server: RunningServer) -> None:
    results: dict[str, list[pb.FrameResult]] = {}

    def run(stream_id: str) -> None:
        with SegmenterClient(server.address) as c:
            results[stream_id] = [a.result for a in c.segment(frames(15, stream_id))]

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for name in ("a", "b"):
        assert [r.index for r in results[name]] == list(range(15))
        assert {r.stream_id for r in results[name]} == {name}
        assert {p.track_id for r in results[name] for p in r.polyps} == {1}  # trackers are per stream


def test_health_model_info_and_sources(server: RunningServer, client: SegmenterClient) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    for name in ("", "polypstream.v1.Segmenter"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        )
    info = client.model_info()
    assert (info.name, info.input_width, info.provider, info.max_batch, info.path) == (
        "tiny-brightness",
        64,
        "CPUExecutionProvider",
        4,
        "tiny.onnx",  # the file's name: where the server keeps it is not the client's business
    )
    assert (info.alert_rule.min_seen, info.alert_rule.window, info.alert_rule.hold) == (2, 2, 4)  # no rule of its own
    assert list(client.stub.ListSources(pb.ListSourcesRequest()).sources) == []
    with pytest.raises(grpc.RpcError) as err:
        next(iter(client.stub.Watch(pb.WatchRequest(source="nope"))))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_metrics_after_a_stream(client: SegmenterClient, registry: CollectorRegistry) -> None:
    def mixed() -> Iterator[pb.Frame]:
        yield from frames(6)
        yield pb.Frame(stream_id="s", index=6, encoded=b"junk")

    list(client.segment(mixed()))
    value = registry.get_sample_value
    assert value("polypstream_frames_total", {"status": "OK", "source": "grpc"}) == 6
    assert value("polypstream_frames_total", {"status": "INVALID_FRAME", "source": "grpc"}) == 1
    assert value("polypstream_stage_seconds_count", {"stage": "inference"}) == 6
    assert value("polypstream_stage_seconds_count", {"stage": "server"}) == 7
    assert value("polypstream_batch_size_sum") == 6  # warm-up batches are not counted
    assert value("polypstream_active_streams") == 0
    assert (
        value(
            "polypstream_model_info",
            {"name": "tiny-brightness", "version": "test", "provider": "CPUExecutionProvider", "input": "64x64"},
        )
        == 1
    )


def test_stream_limit_refuses_the_extra_stream(pipeline: Pipeline, registry: CollectorRegistry) -> None:
    config = ServerConfig(address="127.0.0.1:0", metrics_address="", max_streams=1)
    release = threading.Event()

    def held() -> Iterator[pb.Frame]:
        yield from frames(1)
        release.wait(20)

    with (
        serve_in_thread(pipeline, config) as running,
        SegmenterClient(running.address) as first,
        SegmenterClient(running.address) as second,
    ):
        stream = first.segment(held())
        assert next(stream).status == "OK"  # the first stream is open and being served
        with pytest.raises(grpc.RpcError) as err:
            list(second.segment(frames(1)))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many concurrent streams" in (err.value.details() or "")
        assert registry.get_sample_value("polypstream_streams_refused_total", {"reason": "limit"}) == 1
        release.set()
        assert list(stream) == []


def test_oversized_message_is_refused_and_the_server_stays_up(pipeline: Pipeline) -> None:
    config = ServerConfig(address="127.0.0.1:0", metrics_address="", max_message_bytes=64 * 1024)
    with serve_in_thread(pipeline, config) as running, SegmenterClient(running.address) as client:
        big = pb.Frame(stream_id="big", index=0, encoded=b"\xff\xd8\xff" + b"\x00" * 100_000)
        with pytest.raises(grpc.RpcError) as err:
            list(client.segment(iter([big])))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [a.status for a in client.segment(frames(2))] == ["OK", "OK"]


def test_an_inference_error_fails_only_its_batch(
    client: SegmenterClient, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = pipeline.runner.run
    calls = {"n": 0}

    def flaky(tensors: list[np.ndarray]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_run(tensors)

    monkeypatch.setattr(pipeline.runner, "run", flaky)
    first = list(client.segment(frames(1)))
    assert first[0].status == "FAILED" and "CUDA out of memory (simulated)" in first[0].result.error
    assert [a.status for a in client.segment(frames(3))] == ["OK", "OK", "OK"]


def test_watch_shares_a_file_source_and_ends_with_it(pipeline: Pipeline, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", frames=10)
    hub = SourceHub("scope1", str(clip), pipeline, realtime=False)
    hub.open()  # as `serve` does at start
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    with serve_in_thread(pipeline, config, {"scope1": hub}) as running, SegmenterClient(running.address) as client:
        (info,) = client.sources()
        assert (info.name, info.state, info.frame_rate) == ("scope1", "idle", 10.0)  # write_clip's rate
        watched = list(client.stub.Watch(pb.WatchRequest(source="scope1", options=pb.FrameOptions(return_mask=True))))
        assert [r.index for r in watched] == list(range(10))  # a file source never skips
        assert all(r.status == pb.FRAME_STATUS_OK and len(r.polyps) == 1 and r.mask_png for r in watched)
        (info,) = client.stub.ListSources(pb.ListSourcesRequest()).sources
        assert (info.state, info.frames, info.subscribers) == ("ended", 10, 0)
        assert list(client.stub.Watch(pb.WatchRequest(source="scope1"))) == []  # ended: the stream ends at once


def test_a_watch_ends_with_the_results_of_the_frames_read_when_the_server_starts_draining(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    clip = write_clip(tmp_path / "long.avi", frames=250, fps=25.0)  # 10 s at its own pace
    hub = SourceHub("scope", str(clip), pipeline, realtime=True)
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    with serve_in_thread(pipeline, config, {"scope": hub}) as running, SegmenterClient(running.address) as client:
        received: list[int] = []
        with pytest.raises(grpc.RpcError) as err:
            for watched in client.watch("scope"):
                received.append(watched.result.index)
                if len(received) == 3:
                    assert running.loop is not None
                    running.loop.call_soon_threadsafe(running.servicer.start_draining)
        # Before, the watch went on to the file's end (or, for a live source, until the grace ran out).
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (
            err.value.details() == "server shutting down: source 'scope' reads no more frames; those it read were sent"
        )
        assert received == list(range(hub.frames)) and hub.frames < 250  # every frame read was sent, in order
        assert hub.state == "ended"
        with pytest.raises(grpc.RpcError) as refused:
            list(client.watch("scope"))
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.UNAVAILABLE,
            "server is shutting down",
        )


def test_watchers_of_one_source_share_each_results_encoding_and_get_only_the_parts_they_asked_for(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polypstream.server as server_module

    encoded: list[tuple[int, bool, bool]] = []
    real = server_module.result_to_proto

    def counting(result: Result) -> pb.FrameResult:
        encoded.append((result.index, result.mask is not None, result.overlay is not None))
        return real(result)

    monkeypatch.setattr(server_module, "result_to_proto", counting)
    clip = write_clip(tmp_path / "clip.avi", frames=20, fps=20.0)
    hub = SourceHub("scope", str(clip), pipeline, realtime=True)
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    with serve_in_thread(pipeline, config, {"scope": hub}) as running, SegmenterClient(running.address) as client:
        wanted = {"a": FrameOptions(return_overlay=True), "b": FrameOptions(return_overlay=True),
                  "c": FrameOptions(return_mask=True)}  # fmt: skip
        got: dict[str, dict[int, pb.FrameResult]] = {}

        def watch(name: str) -> None:
            got[name] = {w.result.index: w.result for w in client.watch("scope", wanted[name])}

        threads = [threading.Thread(target=watch, args=(name,)) for name in wanted]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    # A frame's mask and overlay are made if someone watching as it was read wants them: each
    # watcher's first results may be of frames read just before it joined (the three join in any
    # order); from its first picture on, every result has one, of the parts it asked for only.
    pictures: dict[str, set[int]] = {}
    for name, part in (("a", "overlay_jpeg"), ("b", "overlay_jpeg"), ("c", "mask_png")):
        results = [got[name][i] for i in sorted(got[name])]
        first = next(k for k, r in enumerate(results) if getattr(r, part))
        assert len(results) - first >= 10 and all(getattr(r, part) for r in results[first:])
        other = "mask_png" if part == "overlay_jpeg" else "overlay_jpeg"
        assert not any(getattr(r, other) for r in results)
        pictures[name] = {r.index for r in results[first:]}
    both = pictures["a"] & pictures["b"]
    assert len(both) >= 10 and all(got["a"][i].overlay_jpeg == got["b"][i].overlay_jpeg for i in both)
    overlays = [index for index, _, overlay in encoded if overlay]
    assert sorted(overlays) == sorted(set(overlays))  # once per frame, not once per watcher
    assert set(overlays) == pictures["a"] | pictures["b"]


def test_watch_calls_past_the_limit_are_refused_and_a_freed_place_is_taken_again(
    pipeline: Pipeline, registry: CollectorRegistry, tmp_path: Path
) -> None:
    clip = write_clip(tmp_path / "long.avi", frames=250, fps=25.0)
    hub = SourceHub("scope", str(clip), pipeline, realtime=True)
    config = ServerConfig(address="127.0.0.1:0", metrics_address="", max_watchers=1)
    with serve_in_thread(pipeline, config, {"scope": hub}) as running, SegmenterClient(running.address) as client:
        first = client.watch("scope")
        results = iter(first)
        next(results)  # watching
        with pytest.raises(grpc.RpcError) as refused:
            list(client.watch("scope"))
        assert (refused.value.code(), refused.value.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "too many concurrent Watch calls (limit 1)",
        )
        assert registry.get_sample_value("polypstream_streams_refused_total", {"reason": "watch_limit"}) == 1
        first.cancel()
        wait_for(lambda: running.servicer.active_watchers == 0, what="the cancelled watch's place freed")
        assert next(iter(client.watch("scope"))).result.status == pb.FRAME_STATUS_OK


def test_watch_of_a_source_that_cannot_open_is_unavailable(pipeline: Pipeline, tmp_path: Path) -> None:
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video")
    hub = SourceHub("broken", str(junk), pipeline, realtime=False)
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    with serve_in_thread(pipeline, config, {"broken": hub}) as running, SegmenterClient(running.address) as client:
        with pytest.raises(grpc.RpcError) as err:
            list(client.stub.Watch(pb.WatchRequest(source="broken")))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot open" in (err.value.details() or "")


def test_replay_spreads_videos_over_servers_and_accounts_for_every_frame(pipeline: Pipeline, tmp_path: Path) -> None:
    corpus = tmp_path / "labeled-videos"
    for i, folder in enumerate(["lower-gi-tract/polyps", "lower-gi-tract/polyps", "upper-gi-tract/normal", "x/y"]):
        (corpus / folder).mkdir(parents=True, exist_ok=True)
        write_clip(corpus / folder / f"video{i}.avi", frames=5 + i)
    (corpus / "x/y/broken.avi").write_bytes(b"not a video")
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    reported: list[int] = []
    inside = threading.Lock()

    def progress(tally: Tally, total: int) -> None:  # called by the workers: one at a time, or lines interleave
        assert inside.acquire(blocking=False), "progress called by two workers at once"
        try:
            time.sleep(0.05)  # long enough for a second worker to arrive meanwhile
            reported.append(tally.videos)
        finally:
            inside.release()

    with serve_in_thread(pipeline, config) as first, serve_in_thread(pipeline, config) as second:
        report = replay(corpus, [first.address, second.address], streams=2, progress=progress)
    assert sorted(reported) == [1, 2, 3, 4, 5]
    assert report["videos"] == 5 and report["frames"] == 5 + 6 + 7 + 8
    assert report["accounting"] == {"sent": 26, "answered": 26, "ok": 26, "errors": 0, "all_accounted": True}
    per_server = report["frames_per_server"]
    assert isinstance(per_server, dict) and len(per_server) == 2 and sum(per_server.values()) == 26
    messages = report["error_messages"]
    assert isinstance(messages, list) and any("broken.avi" in m and "cannot open" in m for m in messages)
    assert report["failed_videos"] == 1


def test_a_watch_subscriber_that_vanishes_does_not_disturb_the_source(
    pipeline: Pipeline, registry: CollectorRegistry, tmp_path: Path
) -> None:
    clip = write_clip(tmp_path / "clip.avi", frames=30, fps=30)
    hub = SourceHub("scope", str(clip), pipeline, realtime=True)
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    with serve_in_thread(pipeline, config, {"scope": hub}) as running, SegmenterClient(running.address) as client:
        leaver = client.stub.Watch(pb.WatchRequest(source="scope"))
        stayer = client.stub.Watch(pb.WatchRequest(source="scope"))
        assert next(leaver).index == 0
        leaver.cancel()  # vanishes mid-stream
        watched = [r.index for r in stayer]
        assert watched == sorted(watched) and watched[-1] == 29
        assert registry.get_sample_value("polypstream_subscribers") == 0
        assert registry.get_sample_value("polypstream_frames_total", {"status": "OK", "source": "scope"}) == 30


def write_videos(folder: Path, count: int = 6, frames: int = 20) -> None:
    for i in range(count):
        write_clip(folder / f"v{i}.avi", frames=frames)


def test_replay_leaves_a_server_that_does_not_come_back_and_the_other_takes_the_videos_left(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    write_videos(tmp_path)
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    with contextlib.ExitStack() as lost, serve_in_thread(pipeline, config) as kept:
        going = lost.enter_context(serve_in_thread(pipeline, config))

        def progress(tally: Tally, total: int) -> None:  # once the first server answered a video: it goes
            if tally.per_server.get(going.address) and not tally.servers_lost:
                lost.close()

        report = replay(tmp_path, [going.address, kept.address], streams=2, progress=progress, reconnect_s=0.5)
    assert report["servers_lost"] == [going.address]
    # the video the lost server's worker had begun went back to the other worker, with the rest:
    # every video replayed whole, every frame answered
    assert (report["videos"], report["failed_videos"], report["videos_not_replayed"]) == (6, 0, 0)
    assert report["accounting"] == {"sent": 120, "answered": 120, "ok": 120, "errors": 0, "all_accounted": True}


def test_replay_with_its_only_server_gone_reports_the_videos_it_could_not_replay(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    write_videos(tmp_path)
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    with contextlib.ExitStack() as lost:
        going = lost.enter_context(serve_in_thread(pipeline, config))

        def progress(tally: Tally, total: int) -> None:
            if tally.videos == 1:
                lost.close()

        report = replay(tmp_path, [going.address], streams=1, progress=progress, reconnect_s=0.5)
    # one video answered in full; the next one's call failed with no server to go to: the worker
    # stops rather than failing that video and the other four at once; five are left unreplayed
    assert (report["videos"], report["failed_videos"], report["videos_not_replayed"]) == (1, 0, 5)
    assert report["servers_lost"] == [going.address] and report["frames_per_server"] == {going.address: 20}
    assert report["accounting"] == {"sent": 20, "answered": 20, "ok": 20, "errors": 0, "all_accounted": True}
    assert report["error_messages"] == []


def test_replay_of_a_corpus_checks_the_csv_and_measures_temporal_dice(pipeline: Pipeline, tmp_path: Path) -> None:
    # A corpus made of white squares on black, each mask exactly its square: what the tiny
    # model segments, so the Dice measures the replay's pairing of answers with ground truth
    # (only lighting, motion blur and compression move the edges: 0.975-0.983 for seeds 5-7).
    source = drawn_dataset(tmp_path / "drawn")
    square = np.zeros((64, 64), np.uint8)
    square[10:30, 10:30] = 255
    cv2.imwrite(str(source / "masks" / "a.png"), square)
    corpus = tmp_path / "corpus"
    write_corpus(corpus, source, plan_corpus(3, seconds=0.4, fps=10.0, seed=5), seed=5)
    csv_path = corpus / METADATA_CSV
    lines = csv_path.read_text().splitlines()
    first = lines[1].split(";")
    first[4] = str(int(first[4]) + 1)  # the CSV now claims one frame more than the video has
    csv_path.write_text("\n".join([lines[0], ";".join(first), *lines[2:]]) + "\n")
    with serve_in_thread(pipeline, ServerConfig(address="127.0.0.1:0", metrics_address="")) as running:
        report = replay(corpus, [running.address], streams=2)
    assert report["metadata_csv"] is True and report["accounting"]["all_accounted"] is True  # type: ignore[index]
    assert report["dice_frames"] == report["frames"]
    assert isinstance(report["dice"], float) and report["dice"] > 0.95
    (mismatch,) = report["frame_count_mismatches"]  # type: ignore[misc]
    assert mismatch["video"].endswith(first[0]) and mismatch["csv"] == mismatch["decoded"] + 1
    assert len(report["latency_cdf_ms"]) == 101  # type: ignore[arg-type]


def test_reflection_lists_the_services(client: SegmenterClient) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in reply.list_services_response.service}
    assert {"polypstream.v1.Segmenter", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    (described,) = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="polypstream.v1.Segmenter")])
    )
    assert described.file_descriptor_response.file_descriptor_proto  # what grpcurl needs to call it


def test_an_overlong_stream_id_is_refused_without_being_echoed_and_the_stream_goes_on(client: SegmenterClient) -> None:
    huge = "x" * (11 * 1024 * 1024)  # 11 MiB: echoed whole, the answer would outgrow the message limit
    good = list(frames(2, stream_id="s"))
    bad = encode_frame(square_image(box=SQUARE), huge, 0, FrameOptions(no_drop=True))
    answers = list(client.segment(iter([bad, good[1]])))
    assert [a.status for a in answers] == ["INVALID_FRAME", "OK"]
    refused = answers[0].result
    assert refused.error == f"stream_id is {len(huge)} characters long; at most 256 are allowed"
    assert refused.stream_id == "x" * 256 + "…"
    assert answers[1].result.stream_id == "s"


def test_watch_refuses_an_overlong_source_name_and_does_not_echo_it(server: RunningServer) -> None:
    with SegmenterClient(server.address) as c:
        with pytest.raises(grpc.RpcError) as err:
            list(c.stub.Watch(pb.WatchRequest(source="n" * 100_000)))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "source name is 100000 characters long; at most 256 are allowed"
        with pytest.raises(grpc.RpcError) as err:
            list(c.stub.Watch(pb.WatchRequest(source="n" * 256)))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_sources_hides_the_password_of_a_source_url(pipeline: Pipeline) -> None:
    hub = SourceHub("scope", "rtsp://viewer:S3CRET@camera.invalid/live", pipeline)  # never started
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    with serve_in_thread(pipeline, config, {"scope": hub}) as running, SegmenterClient(running.address) as c:
        (info,) = c.stub.ListSources(pb.ListSourcesRequest()).sources
        assert info.uri == "rtsp://***@camera.invalid/live"


def test_alerts_start_hold_and_end_through_a_real_server(client: SegmenterClient) -> None:
    # The square in frames 0-1, gone in 2-3, back in 4; a track alerts once seen in 2 of its
    # last 3 frames and is held 1 unseen frame.
    options = FrameOptions(no_drop=True, return_overlay=True, alert_min_seen=2, alert_window=3, alert_hold=1)
    empty = np.zeros((80, 96, 3), np.uint8)
    images = [square_image(box=SQUARE), square_image(box=SQUARE), empty, empty, square_image(box=SQUARE)]
    sent = [encode_frame(image, "s", i, options, jpeg_quality=100) for i, image in enumerate(images)]
    answers = [a.result for a in client.segment(iter(sent))]
    assert [[(p.track_id, p.alerting) for p in r.polyps] for r in answers] == [
        [(1, False)], [(1, True)], [], [], [(1, False)],  # back in its track, its alert to be earned again
    ]  # fmt: skip
    assert [[(p.track_id, (p.box.x, p.box.y)) for p in r.held] for r in answers] == [[], [], [(1, (16, 24))], [], []]
    assert [[(e.track_id, e.kind) for e in r.alert_events] for r in answers] == [
        [], [(1, pb.AlertEvent.KIND_START)], [], [(1, pb.AlertEvent.KIND_END)], [],
    ]  # fmt: skip
    # What is drawn is what is reported: the square is tinted (and boxed) only while it alerts.
    overlays = [cv2.imdecode(np.frombuffer(r.overlay_jpeg, np.uint8), cv2.IMREAD_COLOR) for r in answers]
    centre = (24 + 12, 16 + 16)
    assert overlays[0][centre].min() > 230  # detected, not yet alerting: left as it is (white)
    assert overlays[1][centre][0] < 200 and overlays[1][centre][1] > 230  # alerting: tinted green
    assert overlays[2][24, 16:48].max(axis=1).min() > 150  # held: its box is drawn on the empty frame


def test_frames_a_client_skipped_count_as_frames_of_the_stream_for_its_alerts(client: SegmenterClient) -> None:
    # Indexes 0, 2, 4 (every 2nd frame sent): 3 of 3 held 1 alerts in frame 2, the frame skipped
    # between two sightings counting as one (as it would at half the frame rate); the square gone
    # in frame 4 has been unseen 2 frames there (3 skipped, 4 sent): past its hold of 1, it ends.
    options = FrameOptions(no_drop=True, alert_min_seen=3, alert_window=3, alert_hold=1)
    images = [square_image(box=SQUARE), square_image(box=SQUARE), np.zeros((80, 96, 3), np.uint8)]
    sent = [encode_frame(image, "s", 2 * i, options, jpeg_quality=100) for i, image in enumerate(images)]
    answers = [a.result for a in client.segment(iter(sent))]
    assert [r.index for r in answers] == [0, 2, 4]
    assert [[(p.track_id, p.alerting) for p in r.polyps] for r in answers] == [[(1, False)], [(1, True)], []]
    assert [[(e.track_id, e.kind) for e in r.alert_events] for r in answers] == [
        [], [(1, pb.AlertEvent.KIND_START)], [(1, pb.AlertEvent.KIND_END)],
    ]  # fmt: skip
    assert [list(r.held) for r in answers] == [[], [], []]


def test_a_server_alerts_by_its_models_own_rule_and_a_part_set_replaces_that_part_alone(tmp_path: Path) -> None:
    # A model carrying "1,1,0" (raw reporting): its square alerts in its first frame. A stream
    # setting only N gets the model's M, and one that cannot fit it is refused naming the model's rule.
    from polypstream.config import ConfigError, EngineConfig
    from polypstream.metrics import Metrics
    from polypstream.runner import Runner
    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "raw.onnx", metadata={"polypstream.alert_rule": "1,1,0"})

    @contextlib.contextmanager
    def served(engine: EngineConfig) -> Iterator[SegmenterClient]:
        pipe = Pipeline(Runner(model, device="cpu", max_batch=2), engine, Metrics(CollectorRegistry()))
        pipe.start()
        try:
            config = ServerConfig(address="127.0.0.1:0", metrics_address="")
            with serve_in_thread(pipe, config) as running, SegmenterClient(running.address) as c:
                yield c
        finally:
            pipe.stop()

    def alerting(engine: EngineConfig, options: FrameOptions = FrameOptions(no_drop=True)) -> list[object]:
        with served(engine) as c:
            answers = list(c.segment(frames(3, options=options)))
        return [[p.alerting for p in a.result.polyps] if a.status == "OK" else a.result.error for a in answers]

    assert alerting(EngineConfig()) == [[True], [True], [True]]
    with served(EngineConfig(alert_hold=2)) as c:
        rule = c.model_info().alert_rule  # what a client can learn of it
    assert (rule.min_seen, rule.window, rule.hold) == (1, 1, 2)
    assert alerting(EngineConfig(alert_min_seen=2, alert_window=2)) == [[False], [True], [True]]
    with pytest.raises(ConfigError) as raised:  # serve --alert-min-seen 2 alone: stops at start, in one line
        Pipeline(Runner(model, device="cpu", max_batch=2), EngineConfig(alert_min_seen=2), Metrics(CollectorRegistry()))
    assert str(raised.value).endswith("the parts not set are the model's, 1 of 1 frames, held 0")
    refused = alerting(EngineConfig(), FrameOptions(no_drop=True, alert_min_seen=2))
    assert (
        refused
        == [
            "frame options: alert rule: need 1 <= min_seen (2) <= window (1) <= 64; "
            "the parts not set are the server's, 1 of 1 frames, held 0"
        ]
        * 3
    )


def test_a_streams_frame_rate_scales_the_servers_alert_rule_and_its_own_parts_count_its_frames(
    client: SegmenterClient,
) -> None:
    # The server's rule, 2 of 2 frames held 4 (a model without its own), counts 25 fps frames:
    # 2 of 2 held 2 at 10 fps, 3 of 3 held 8 at 50 fps. A square seen in four frames, then gone in four.
    def alerting(options: FrameOptions) -> list[tuple[list[bool], int]]:
        empty = np.zeros((80, 96, 3), np.uint8)
        images = [square_image(box=SQUARE)] * 4 + [empty] * 4
        sent = [encode_frame(image, "s", i, options, jpeg_quality=100) for i, image in enumerate(images)]
        return [([p.alerting for p in a.result.polyps], len(a.result.held)) for a in client.segment(iter(sent))]

    assert alerting(FrameOptions(no_drop=True)) == [([False], 0), *[([True], 0)] * 3, *[([], 1)] * 4]
    assert alerting(FrameOptions(no_drop=True, frame_rate=10.0)) == [
        ([False], 0),
        *[([True], 0)] * 3,
        *[([], 1)] * 2,
        ([], 0),
        ([], 0),
    ]
    assert alerting(FrameOptions(no_drop=True, frame_rate=50.0)) == [
        ([False], 0),
        ([False], 0),
        ([True], 0),
        ([True], 0),
        *[([], 1)] * 4,
    ]
    # N set by the stream counts its own frames; M and H are the server's, scaled: 2 of 3, held 8.
    assert alerting(FrameOptions(no_drop=True, frame_rate=50.0, alert_min_seen=2))[:2] == [([False], 0), ([True], 0)]
    rule = client.model_info().alert_rule
    assert (rule.min_seen, rule.window, rule.hold, rule.frame_rate) == (2, 2, 4, 25.0)
    (answer,) = client.segment(iter([encode_frame(square_image(box=SQUARE), "t", 0, FrameOptions(frame_rate=-30.0))]))
    assert answer.status == "INVALID_FRAME"
    assert (
        answer.result.error == "frame options: frame rate must be more than 0 and at most 1000 frames a second, got -30"
    )


def test_a_stream_without_alert_options_gets_the_servers_rule_and_a_bad_rule_is_refused(
    client: SegmenterClient,
) -> None:
    default = [a.result for a in client.segment(frames(3))]  # the server's default: seen in 2 of 2 frames
    assert [[p.alerting for p in r.polyps] for r in default] == [[False], [True], [True]]
    bad = encode_frame(
        square_image(box=SQUARE), "t", 0, FrameOptions(alert_min_seen=4, alert_window=2), jpeg_quality=100
    )
    (answer,) = client.segment(iter([bad]))
    assert answer.status == "INVALID_FRAME"
    assert answer.result.error == (
        "frame options: alert rule: need 1 <= min_seen (4) <= window (2) <= 64; "
        "the parts not set are the server's, 2 of 2 frames, held 4"
    )


def test_a_stream_goes_on_through_a_server_restart_and_every_frame_is_answered_once(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """A file stream whose server drains (SIGTERM, a rolling update) after frame 4 while the
    client makes frame 5; a new server comes up at the same address; the stream carries on."""
    config = ServerConfig(address=f"unix:{tmp_path / 'grpc.sock'}", metrics_address="")
    first = contextlib.ExitStack()
    running = first.enter_context(serve_in_thread(pipeline, config))
    go_on = threading.Event()

    def video() -> Iterator[CapturedFrame]:
        for i in range(12):
            if i == 5:
                assert go_on.wait(30)
            yield CapturedFrame(i, square_image(box=SQUARE), i / 25)

    said: list[str] = []
    with contextlib.ExitStack() as second, SegmenterClient(running.address) as client:
        stream = Stream(client, video(), "s", FrameOptions(no_drop=True), reconnect_s=30, report=said.append)
        answered: list[int] = []
        for frame, answer in stream:
            assert frame.index == answer.result.index and answer.status == "OK"
            answered.append(answer.result.index)
            if answer.result.index == 4:
                first.close()  # drains: every frame read was answered; then it stops
                second.enter_context(serve_in_thread(pipeline, config))
                go_on.set()
        assert answered == list(range(12))
        assert (stream.sent, stream.resent, stream.reconnects) == (12, 1, 1)  # frame 5 again, on the new server
        assert said[0].startswith("the stream's call ended (UNAVAILABLE: server shutting down: every frame it read")


def test_a_source_watch_goes_on_with_the_source_of_a_restarted_server(pipeline: Pipeline, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "long.avi", frames=250, fps=25.0)  # 10 s at its own pace
    config = ServerConfig(address=f"unix:{tmp_path / 'grpc.sock'}", metrics_address="")
    first = contextlib.ExitStack()
    running = first.enter_context(
        serve_in_thread(pipeline, config, {"scope": SourceHub("scope", str(clip), pipeline, realtime=True)})
    )
    short = write_clip(tmp_path / "short.avi", frames=6, fps=25.0)
    said: list[str] = []
    with contextlib.ExitStack() as second, SegmenterClient(running.address) as client:
        watch = SourceWatch(client, "scope", reconnect_s=30, report=said.append)
        received: list[int] = []
        for watched in watch:
            received.append(watched.result.index)
            if len(received) == 3:
                first.close()  # drains: the results of the frames read are sent, then the watch ends
                hub = SourceHub("scope", str(short), pipeline, realtime=True)
                second.enter_context(serve_in_thread(pipeline, config, {"scope": hub}))
        # the first server's frames (at least the 3 seen), then all of the new server's, from its frame 0
        before = received[: received.index(0, 1)]
        assert before == list(range(len(before))) and len(before) >= 3
        assert received[len(before) :] == list(range(6)) and hub.frames == 6
        assert watch.reconnects == 1 and len(said) == 2
        assert said[0].startswith("the watch ended (UNAVAILABLE: server shutting down: source 'scope' reads no more")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_replay_worker_that_dies_does_not_leave_the_others_waiting(pipeline: Pipeline, tmp_path: Path) -> None:
    write_videos(tmp_path, count=4)
    calls: list[int] = []

    class Breaking(SegmenterClient):  # the first stream hits a bug of the client's
        def segment(self, frames: Iterable[pb.Frame]) -> Iterator[Answer]:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug")
            return super().segment(frames)

    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    with serve_in_thread(pipeline, config) as running:
        report = replay(tmp_path, [running.address], streams=2, connect=Breaking)
    # the video of the worker that died is neither counted nor waited for: the other did the rest
    assert (report["videos"], report["videos_not_replayed"], report["frames"]) == (3, 1, 60)
