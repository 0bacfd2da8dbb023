"""Server-side sources: reconnect with backoff, latest-frame-wins skipping, fan-out bounds."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from polypstream import sources as sources_module
from polypstream.batcher import BatcherStoppedError, QueueFullError
from polypstream.capture import CapturedFrame, SourceError, redact_uri
from polypstream.frames import FrameOptions, Result, Status
from polypstream.pipeline import Pipeline
from polypstream.sources import SourceHub, Subscription
from tests.conftest import wait_for


class FlakyFeed:
    """Stands in for VideoSource: fails to open, then plays 3 frames and stops, twice."""

    opens = 0
    frame_rate = 0.0  # not said

    def __init__(self, uri: str, *, realtime: bool = False) -> None:
        FlakyFeed.opens += 1
        if FlakyFeed.opens == 1:
            raise SourceError(f"{uri}: connection refused")

    def __iter__(self) -> Iterator[CapturedFrame]:
        for i in range(3):
            yield CapturedFrame(i, np.zeros((32, 32, 3), np.uint8), i / 25)
            time.sleep(0.01)

    def close(self) -> None:
        pass


def test_a_live_source_that_fails_or_stops_is_reopened_with_backoff(
    pipeline: Pipeline, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    FlakyFeed.opens = 0
    monkeypatch.setattr(sources_module, "open_source", FlakyFeed)
    hub = SourceHub("scope", "rtsp://camera.invalid/live", pipeline)
    hub.backoff_s = 0.01
    hub.start()
    wait_for(lambda: hub.frames >= 6)  # played after the failed open, stopped, came back
    hub.stop()
    assert hub.reconnects >= 2
    assert registry.get_sample_value("polypstream_source_reconnects_total", {"source": "scope"}) == hub.reconnects
    assert hub.state == "ended"


def test_a_live_source_stopped_by_the_server_ends_without_a_reconnect_or_a_warning(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class EndlessFeed(FlakyFeed):
        def __init__(self, uri: str, *, realtime: bool = False) -> None:
            pass

        def __iter__(self) -> Iterator[CapturedFrame]:
            for i in range(100_000):
                yield CapturedFrame(i, np.zeros((32, 32, 3), np.uint8), i / 25)
                time.sleep(0.01)

    monkeypatch.setattr(sources_module, "open_source", EndlessFeed)
    hub = SourceHub("scope", "rtsp://camera.invalid/live", pipeline)
    hub.start()
    wait_for(lambda: hub.frames >= 3)
    with caplog.at_level(logging.WARNING, logger="polypstream.sources"):
        hub.stop_reading()  # the server shutting down
        wait_for(lambda: hub.state == "ended")
    assert hub.reconnects == 0 and caplog.records == []  # before: "source scope stopped; reconnecting in 0.5 s"
    hub.stop()


def test_a_file_source_that_cannot_open_fails_once(pipeline: Pipeline, tmp_path: Path) -> None:
    hub = SourceHub("file", str(tmp_path / "missing.avi"), pipeline)
    hub.start()
    wait_for(lambda: hub.state == "failed")
    assert "no such file" in hub.error and hub.reconnects == 0


def test_a_slow_subscriber_loses_its_oldest_results_only() -> None:
    async def scenario() -> Subscription:
        sub = Subscription(asyncio.get_running_loop(), FrameOptions())
        for i in range(70):
            sub.offer(Result(stream_id="s", index=i, status=Status.OK))
        return sub

    sub = asyncio.run(scenario())
    assert sub.dropped == 6 and sub.queue.qsize() == 64
    kept = [sub.queue.get_nowait() for _ in range(64)]
    assert [r.index for r in kept if r is not None] == list(range(6, 70))  # the newest 64, in order


def test_the_end_of_a_source_reaches_a_subscriber_whose_queue_is_full() -> None:
    async def scenario() -> list[Result | None]:
        sub = Subscription(asyncio.get_running_loop(), FrameOptions())
        for i in range(64):
            sub.offer(Result(stream_id="s", index=i, status=Status.OK))
        sub.offer(None)  # end of the source: a full queue gives up its oldest result, not this
        return [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]

    queued = asyncio.run(scenario())
    assert queued[-1] is None and [r.index for r in queued[:-1] if r is not None] == list(range(1, 64))


class FastLiveFeed:
    """A live feed delivering 40 frames much faster than the pipeline below takes them."""

    frame_rate = 0.0

    def __init__(self, uri: str, *, realtime: bool = False) -> None:
        self.uri = uri

    def __iter__(self) -> Iterator[CapturedFrame]:
        for i in range(40):
            yield CapturedFrame(i, np.zeros((32, 32, 3), np.uint8), i / 25)
            time.sleep(0.002)

    def close(self) -> None:
        pass


def test_a_live_source_that_is_behind_keeps_the_freshest_frames_and_counts_the_rest(
    pipeline: Pipeline,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    slow_inference: Callable[[float], None],
) -> None:
    slow_inference(0.02)
    monkeypatch.setattr(sources_module, "open_source", FastLiveFeed)
    hub = SourceHub("scope", "rtsp://camera.invalid/live", pipeline, inflight=1)
    hub.max_backoff_s = hub.backoff_s = 60  # no reconnect within the test
    hub.start()
    wait_for(lambda: hub.frames + hub.skipped == 40)  # every frame read was submitted or skipped
    hub.stop()
    assert hub.skipped > 0 and hub.read == 40
    assert (
        registry.get_sample_value("polypstream_dropped_frames_total", {"reason": "live_skip", "source": "scope"})
        == hub.skipped
    )


def test_a_source_makes_the_frame_resolution_mask_if_any_watcher_wants_it(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = SourceHub("scope", "rtsp://camera.invalid/live", pipeline)
    monkeypatch.setattr(hub, "start", lambda: None)  # the subscriptions only: nothing is played
    loop = asyncio.new_event_loop()
    try:
        hub.subscribe(loop, FrameOptions(return_mask=True, mask_at_model_resolution=True))
        assert hub._wanted_options(25.0).mask_at_model_resolution
        hub.subscribe(loop, FrameOptions(return_overlay=True))  # wants no mask: changes nothing
        assert hub._wanted_options(25.0).mask_at_model_resolution
        hub.subscribe(loop, FrameOptions(return_mask=True))  # wants the frame's resolution
        wanted = hub._wanted_options(25.0)
        assert wanted.return_mask and wanted.return_overlay and not wanted.mask_at_model_resolution
    finally:
        loop.close()


def test_a_live_source_never_logs_or_reports_its_password(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    FlakyFeed.opens = 0
    monkeypatch.setattr(sources_module, "open_source", FlakyFeed)
    hub = SourceHub("scope", "rtsp://viewer:S3CRET@camera.invalid/live", pipeline)
    hub.backoff_s = 0.01
    with caplog.at_level("WARNING", logger="polypstream.sources"):
        hub.start()
        wait_for(lambda: hub.reconnects >= 2)  # a failed open and a stop: both logged
        hub.stop()
    assert hub.shown_uri == "rtsp://***@camera.invalid/live"
    assert "rtsp://***@camera.invalid/live: connection refused" in caplog.text
    assert "S3CRET" not in caplog.text + hub.error


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("rtsp://viewer:S3CRET@10.0.0.5:554/live?ch=1", "rtsp://***@10.0.0.5:554/live?ch=1"),
        ("http://token@host/a.ts", "http://***@host/a.ts"),
        ("rtsp://a:b@c@host/x", "rtsp://***@host/x"),  # '@' inside the password
        ("rtsp://host/path@not-user-info", "rtsp://host/path@not-user-info"),
        ("https://host/x?next=a@b", "https://host/x?next=a@b"),
        ("videos/clip@2x.avi", "videos/clip@2x.avi"),
        ("0", "0"),
    ],
)
def test_redact_uri_hides_user_info_only(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown


class RecordedStop:
    """Stands in for the hub's stop event: records each backoff wait, stops after `waits`."""

    def __init__(self, waits: int) -> None:
        self.waits: list[float] = []
        self.left = waits

    def is_set(self) -> bool:
        return self.left <= 0

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.left -= 1
        return self.left <= 0

    def set(self) -> None:
        self.left = 0


class OneFrameFeed:
    """Opens, plays one frame, ends (records what it was opened with)."""

    opened: list[tuple[str, bool]] = []  # noqa: RUF012
    closed = 0
    frame_rate = 0.0

    def __init__(self, uri: str, *, realtime: bool = False) -> None:
        OneFrameFeed.opened.append((uri, realtime))

    def __iter__(self) -> Iterator[CapturedFrame]:
        yield CapturedFrame(0, np.zeros((32, 32, 3), np.uint8), 0.0)

    def close(self) -> None:
        OneFrameFeed.closed += 1


def test_reconnecting_waits_double_each_time_up_to_the_cap(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(uri: str, *, realtime: bool = False) -> None:
        raise SourceError(f"{uri}: connection refused")

    monkeypatch.setattr(sources_module, "open_source", refuse)
    hub = SourceHub("scope", "rtsp://camera.invalid/live", pipeline)
    hub._stop = RecordedStop(8)  # type: ignore[assignment]
    hub._run()
    assert hub._stop.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]  # type: ignore[attr-defined]
    assert (hub.reconnects, hub.state) == (7, "ended")


def test_a_source_that_delivered_frames_retries_from_the_first_wait_again(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources_module, "open_source", OneFrameFeed)
    hub = SourceHub("scope", "rtsp://camera.invalid/live", pipeline)
    hub._stop = RecordedStop(3)  # type: ignore[assignment]
    hub._run()
    assert hub._stop.waits == [0.5, 0.5, 0.5]  # type: ignore[attr-defined]


def test_live_sources_are_opened_without_pacing_and_files_with_it_when_realtime(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    OneFrameFeed.opened, OneFrameFeed.closed = [], 0
    monkeypatch.setattr(sources_module, "open_source", OneFrameFeed)
    SourceHub("live", "rtsp://camera.invalid/live", pipeline, realtime=True).open()
    SourceHub("file", "clip.avi", pipeline, realtime=True).open()
    SourceHub("fast", "clip.avi", pipeline, realtime=False).open()
    assert OneFrameFeed.opened == [
        ("rtsp://camera.invalid/live", False), ("clip.avi", True), ("clip.avi", False),
    ]  # fmt: skip


def test_opening_again_closes_the_source_opened_before(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    OneFrameFeed.opened, OneFrameFeed.closed = [], 0
    monkeypatch.setattr(sources_module, "open_source", OneFrameFeed)
    hub = SourceHub("file", "clip.avi", pipeline)
    hub.open()
    assert OneFrameFeed.closed == 0
    hub.open()
    assert OneFrameFeed.closed == 1
    hub.stop()  # the one opened and never played is closed too
    assert OneFrameFeed.closed == 2


def test_pumping_says_whether_any_frame_came(pipeline: Pipeline) -> None:
    hub = SourceHub("file", "clip.avi", pipeline)
    pipeline.open_stream("file")
    assert hub._pump(OneFrameFeed("clip.avi")) is True
    assert hub._pump(EmptyFeed("clip.avi")) is False


def test_a_sources_frames_carry_its_frame_rate_for_the_alert_rule(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FiftyFpsFeed(OneFrameFeed):
        frame_rate = 50.0

    hub = SourceHub("file", "clip.avi", pipeline)
    submitted: list[float] = []
    monkeypatch.setattr(pipeline, "submit", lambda frame, *args, **kwargs: submitted.append(frame.options.frame_rate))
    hub._pump(FiftyFpsFeed("clip.avi"))
    hub._pump(OneFrameFeed("clip.avi"))
    assert submitted == [50.0, 0.0]
    # The operator's word wins (`serve --source-frame-rate`): a card that says 50, or none, at 25.
    said = SourceHub("card", "clip.avi", pipeline, frame_rate=25.0)
    said._pump(FiftyFpsFeed("clip.avi"))
    said._pump(OneFrameFeed("clip.avi"))
    none = SourceHub("card", "clip.avi", pipeline, frame_rate=0.0)
    none._pump(FiftyFpsFeed("clip.avi"))
    assert submitted[2:] == [25.0, 25.0, 0.0]
    assert (said.frame_rate, none.frame_rate) == (25.0, 0.0)  # what ListSources says


class EmptyFeed(OneFrameFeed):
    def __iter__(self) -> Iterator[CapturedFrame]:
        return iter(())


def test_the_frames_a_source_asks_for_follow_its_watchers(pipeline: Pipeline) -> None:
    live = SourceHub("live", "rtsp://camera.invalid/live", pipeline)
    file = SourceHub("file", "clip.avi", pipeline)
    # live: late frames may drop; the server's own sources may be shown by its live view
    assert live._wanted_options(25.0) == FrameOptions(no_drop=False, allow_view=True, frame_rate=25.0)
    assert file._wanted_options(25.0) == FrameOptions(no_drop=True, allow_view=True, frame_rate=25.0)
    loop = asyncio.new_event_loop()
    try:
        file._subscribers = {
            Subscription(loop, FrameOptions(return_mask=True, mask_at_model_resolution=True)),
            Subscription(loop, FrameOptions(return_overlay=True)),
        }
        assert file._wanted_options(25.0) == FrameOptions(
            return_mask=True,
            return_overlay=True,
            no_drop=True,
            mask_at_model_resolution=True,
            allow_view=True,
            frame_rate=25.0,
        )
        file._subscribers.add(Subscription(loop, FrameOptions(return_mask=True)))  # one wants the frame's size
        assert file._wanted_options(25.0).mask_at_model_resolution is False
    finally:
        loop.close()


def test_results_are_published_in_the_order_their_frames_were_submitted(pipeline: Pipeline) -> None:
    hub = SourceHub("file", "clip.avi", pipeline, inflight=3)
    published: list[int | None] = []
    hub._publish = lambda item: published.append(None if item is None else item.index)  # type: ignore[method-assign]
    for _ in range(3):
        assert hub._take_slot()
    hub._submitted.extend([0, 1, 2])
    for index in (1, 2, 0):  # drawn out of order
        hub._on_result(Result(stream_id="file", index=index, status=Status.OK))
        if index == 1:
            assert published == []  # frame 0 first
    assert published == [0, 1, 2]
    assert all(hub._slots.acquire(blocking=False) for _ in range(3))  # every slot given back


def test_a_subscriber_to_an_ended_source_gets_its_end_at_once(pipeline: Pipeline, registry: CollectorRegistry) -> None:
    hub = SourceHub("file", "clip.avi", pipeline)
    hub.state = "ended"

    async def scenario() -> Subscription:
        return hub.subscribe(asyncio.get_running_loop(), FrameOptions())

    subscription = asyncio.run(scenario())
    assert subscription.queue.get_nowait() is None and hub.subscriber_count == 0
    assert registry.get_sample_value("polypstream_subscribers") == 0


def test_a_subscriber_leaving_counts_the_results_it_lost(pipeline: Pipeline, registry: CollectorRegistry) -> None:
    hub = SourceHub("file", "clip.avi", pipeline)
    hub.state = "running"
    hub.start = lambda: None  # type: ignore[method-assign]

    async def scenario() -> Subscription:
        subscription = hub.subscribe(asyncio.get_running_loop(), FrameOptions())
        assert hub.subscriber_count == 1
        for i in range(66):
            subscription.offer(Result(stream_id="file", index=i, status=Status.OK))
        return subscription

    subscription = asyncio.run(scenario())
    hub.unsubscribe(subscription)
    assert hub.subscriber_count == 0
    assert (
        registry.get_sample_value("polypstream_dropped_frames_total", {"reason": "slow_subscriber", "source": "file"})
        == 2
    )


class FiveFrameFeed(OneFrameFeed):
    def __iter__(self) -> Iterator[CapturedFrame]:
        for i in range(5):
            yield CapturedFrame(i, np.zeros((32, 32, 3), np.uint8), i / 25)


def test_a_file_plays_once_and_ends_only_after_every_frame_was_answered(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    OneFrameFeed.opened = []
    monkeypatch.setattr(sources_module, "open_source", FiveFrameFeed)
    hub = SourceHub("file", "clip.avi", pipeline)
    assert (hub.inflight, hub.realtime) == (4, True)  # the defaults
    hub._stop = RecordedStop(3)  # type: ignore[assignment]
    published: list[int | None] = []
    hub._publish = lambda item: published.append(None if item is None else item.index)  # type: ignore[method-assign]
    hub._run()
    assert published == [0, 1, 2, 3, 4, None]  # the end after the last answer
    assert (len(OneFrameFeed.opened), hub._stop.waits, hub.state) == (1, [], "ended")  # type: ignore[attr-defined]


def test_a_file_waits_for_a_free_slot_and_gives_up_when_stopped(pipeline: Pipeline) -> None:
    hub = SourceHub("file", "clip.avi", pipeline, inflight=1)
    assert hub._take_slot()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(hub._take_slot()))
    waiter.start()
    time.sleep(0.2)
    assert got == []  # no free slot: it waits
    hub._slots.release()
    waiter.join(5)
    assert got == [True]
    hub._stop.set()
    assert hub._take_slot() is False  # stopped while waiting for a slot


@pytest.mark.parametrize(("error", "stops"), [(QueueFullError("full"), False), (BatcherStoppedError("down"), True)])
def test_a_frame_the_pipeline_does_not_accept_gives_its_slot_back(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, error: Exception, stops: bool
) -> None:
    hub = SourceHub("file", "clip.avi", pipeline, inflight=2)

    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(pipeline, "submit", refuse)
    hub._pump(OneFrameFeed("clip.avi"))
    assert (hub.frames, list(hub._submitted), hub._stop.is_set()) == (0, [], stops)
    assert hub._slots.acquire(blocking=False) and hub._slots.acquire(blocking=False)  # both slots free


def test_a_source_thread_does_not_keep_the_process_alive(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_module, "open_source", OneFrameFeed)
    hub = SourceHub("file", "clip.avi", pipeline)
    hub.start()
    assert hub._thread is not None and hub._thread.daemon
    hub.stop()


def test_a_hub_says_its_stated_rate_before_its_source_opens_and_whether_it_was_told_to_stop(pipeline: Pipeline) -> None:
    stated = SourceHub("card", "rtsp://camera.invalid/live", pipeline, frame_rate=50.0)
    unstated = SourceHub("scope", "rtsp://camera.invalid/live", pipeline)
    assert (stated.frame_rate, unstated.frame_rate) == (50.0, 0.0)  # what ListSources says meanwhile
    assert unstated.stopped is False
    unstated.stop_reading()  # the server draining: returns at once, nothing was started
    assert unstated.stopped is True and unstated.state == "idle"
