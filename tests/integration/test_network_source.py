"""The network path against a real stream: an FFmpeg process serves a clip over HTTP
(MPEG-TS) on loopback; the server reads it, and keeps going after that FFmpeg is killed and
restarted. Needs the `ffmpeg` program (CI installs it; skipped where it is absent)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import SegmenterClient
from polypstream.config import ServerConfig
from polypstream.pipeline import Pipeline
from polypstream.server import serve_in_thread
from polypstream.sources import SourceHub
from tests.conftest import wait_for, write_clip
from tests.ffmpeg_stream import free_port, listening, serve_stream

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_clip(tmp_path / "clip.avi", frames=20, fps=20)


def test_a_live_http_stream_survives_its_ffmpeg_being_killed_and_restarted(
    pipeline: Pipeline, registry: CollectorRegistry, clip: Path
) -> None:
    port = free_port()
    ffmpeg = serve_stream(clip, port)
    hub = SourceHub("scope", f"http://127.0.0.1:{port}/live.ts", pipeline)
    hub.backoff_s = 0.2
    seen: list[int] = []
    try:
        wait_for(lambda: listening(port), what="FFmpeg listening")
        # Opened at start, as `serve` does: FFmpeg serves one client (-listen 1), so frames
        # only flow if the capture thread plays this very connection instead of opening another.
        hub.open()
        with serve_in_thread(
            pipeline, ServerConfig(address="127.0.0.1:0", metrics_address=""), {"scope": hub}
        ) as running:
            hub.start()  # live sources run whether or not anyone watches

            def watch() -> None:
                with SegmenterClient(running.address) as client:
                    for result in client.stub.Watch(pb.WatchRequest(source="scope")):
                        seen.append(result.index)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            wait_for(lambda: len(seen) >= 10)
            ffmpeg.kill()  # the stream dies...
            ffmpeg.wait()
            wait_for(lambda: hub.state == "reconnecting")
            before = len(seen)
            ffmpeg = serve_stream(clip, port)  # ...and comes back
            wait_for(lambda: len(seen) >= before + 10)
            assert hub.reconnects >= 1
            assert (
                registry.get_sample_value("polypstream_source_reconnects_total", {"source": "scope"}) == hub.reconnects
            )
            assert seen == sorted(seen) and len(set(seen)) == len(seen)  # one rising sequence across the gap
            hub.stop()
            watcher.join(10)
    finally:
        ffmpeg.kill()
        ffmpeg.wait()


def test_a_stream_url_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    from polypstream.capture import SourceError, VideoSource

    started = time.monotonic()
    with pytest.raises(SourceError, match=r"http://127\.0\.0\.1:\d+/none\.ts: cannot open"):
        VideoSource(f"http://127.0.0.1:{free_port()}/none.ts", timeout_s=2)
    assert time.monotonic() - started < 15  # not a hang
