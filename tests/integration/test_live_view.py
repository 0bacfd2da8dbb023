"""The live view (`serve --ui`) over HTTP, beside a real in-process gRPC server."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import SegmenterClient, encode_frame
from polypstream.config import ServerConfig, TlsFiles
from polypstream.frames import FrameOptions
from polypstream.pipeline import Pipeline
from polypstream.server import RunningServer, serve_in_thread
from polypstream.ui import LiveView
from polypstream.view import ViewHub
from tests.conftest import square_image, wait_for

TOKEN = "view-token-for-tests"


@contextmanager
def live_view(pipeline: Pipeline, **kwargs: object) -> Iterator[tuple[RunningServer, LiveView]]:
    config = ServerConfig(address="127.0.0.1:0", metrics_address="")
    hub = ViewHub({"name": "tiny", "version": "1", "provider": "CPUExecutionProvider"})
    pipeline.view = hub
    with serve_in_thread(pipeline, config) as running:
        live = LiveView(hub, "127.0.0.1:0", rejected=pipeline.metrics.unauthenticated, **kwargs)  # type: ignore[arg-type]
        live.start()
        try:
            yield running, live
        finally:
            live.stop()


def get(live: LiveView, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), body


def listed(live: LiveView) -> list[str]:
    status, _, body = get(live, "/api/state")
    assert status == 200
    return [s["name"] for s in json.loads(body)["streams"]]


class HeldStream:
    """A client stream that sends `first` frames, then waits until released to send one more."""

    def __init__(
        self, address: str, stream_id: str, options: FrameOptions, first: int = 3, image: np.ndarray | None = None
    ) -> None:
        self.release = threading.Event()
        picture = square_image() if image is None else image
        self.answered = 0
        self.client = SegmenterClient(address)

        def frames() -> Iterator[pb.Frame]:
            for i in range(first):
                yield encode_frame(picture, stream_id, i, options)
            self.release.wait(30)
            yield encode_frame(picture, stream_id, first, options)

        def run() -> None:
            for _ in self.client.segment(frames()):
                self.answered += 1

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.release.set()
        self.thread.join(30)
        self.client.close()


def test_a_client_stream_is_shown_only_if_its_frames_allow_it(pipeline: Pipeline) -> None:
    with live_view(pipeline) as (running, live):
        hidden = HeldStream(running.address, "private-scope", FrameOptions())
        shown = HeldStream(running.address, "shared-scope", FrameOptions(allow_view=True))
        wait_for(lambda: hidden.answered == 3 and shown.answered == 3, what="both streams answered")
        assert listed(live) == ["shared-scope"]
        for stream in (hidden, shown):
            stream.finish()
        wait_for(lambda: listed(live) == [], what="the ended stream leaving the view")


def open_events(live: LiveView) -> http.client.HTTPResponse:
    """The page's event stream, as a browser's EventSource opens it."""
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=20)
    connection.request("GET", "/events")
    return connection.getresponse()


def read_events(response: http.client.HTTPResponse, wanted: str, timeout_s: float = 20.0) -> dict[str, object]:
    """The data of the next event named `wanted` on a text/event-stream response."""
    deadline = time.monotonic() + timeout_s
    name = ""
    while time.monotonic() < deadline:
        line = response.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: ") and name == wanted:
            return json.loads(line[len("data: ") :])  # type: ignore[no-any-return]
    raise AssertionError(f"no '{wanted}' event within {timeout_s:g} s")


def test_the_page_stream_carries_state_and_pictures_with_their_polyps(pipeline: Pipeline) -> None:
    with live_view(pipeline) as (running, live):
        response = open_events(live)
        assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
        state = read_events(response, "state")
        assert state["model"] == {"name": "tiny", "version": "1", "provider": "CPUExecutionProvider"}
        stream = HeldStream(running.address, "scope", FrameOptions(allow_view=True), first=6)
        picture = read_events(response, "picture")
        image = cv2.imdecode(np.frombuffer(base64.b64decode(str(picture["jpeg"])), np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (80, 96, 3)
        (polyp,) = picture["polyps"]  # type: ignore[misc]
        assert polyp["track_id"] == 1
        assert np.allclose(polyp["box"], (16, 24, 32, 24), atol=2)  # the white square
        stream.finish()
        response.close()


def test_a_viewed_client_stream_is_decoded_large_enough_for_the_view(pipeline: Pipeline) -> None:
    with live_view(pipeline) as (running, _):
        hub = pipeline.view
        assert hub is not None
        viewer = hub.join()
        image = square_image(1280, 720, (320, 180, 320, 240))
        stream = HeldStream(running.address, "scope", FrameOptions(allow_view=True), first=4, image=image)
        wait_for(lambda: stream.answered == 4, what="the frames answered")
        pictures = hub.next_pictures(viewer, 10.0)
        stream.finish()
        assert pictures
        drawn = cv2.imdecode(np.frombuffer(pictures[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
        # Not the 1/8 scale the 64x64 model needs (160x90): the smallest covering 640x360, 1/2
        assert drawn.shape == (360, 640, 3)


def test_stopping_the_view_ends_open_page_streams(pipeline: Pipeline) -> None:
    with live_view(pipeline) as (_, live):
        response = open_events(live)
        read_events(response, "state")
        started = time.monotonic()
        live.stop()
        assert time.monotonic() - started < 5  # not held until the viewer leaves
        assert response.read().strip() == b""  # the stream ended (after the last event's blank line)


def test_the_page_and_its_data_need_the_token(pipeline: Pipeline, registry: CollectorRegistry) -> None:
    with live_view(pipeline, token=TOKEN) as (_, live):
        status, _, page = get(live, "/")
        assert status == 200 and b'action="/login"' in page and b"Wrong token" not in page
        for path in ("/api/state", "/events"):
            assert get(live, path)[0] == 401
        assert get(live, "/api/state", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert get(live, "/api/state", {"Cookie": "polypstream_view=guess"})[0] == 401

        def sign_in(token: str) -> http.client.HTTPResponse:
            connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
            form = f"token={token}"
            connection.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
            return connection.getresponse()

        refused = sign_in("wrong")
        assert refused.status == 401 and b"Wrong token." in refused.read()
        assert registry.get_sample_value("polypstream_unauthenticated_requests_total", {"method": "ui"}) == 1
        accepted = sign_in(TOKEN)
        assert (accepted.status, accepted.getheader("Location")) == (303, "/")
        cookie = accepted.getheader("Set-Cookie") or ""
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        status, _, body = get(live, "/api/state", {"Cookie": cookie.split(";")[0]})
        assert status == 200 and json.loads(body)["streams"] == []
        status, _, page = get(live, "/", {"Cookie": cookie.split(";")[0]})
        assert b'src="/app.js"' in page


def test_the_sign_in_cookie_is_found_among_any_other_applications_cookies(pipeline: Pipeline) -> None:
    # A browser sends the page every cookie of its host, whatever the port: one whose name
    # http.cookies refuses (`a@b`) must not sign the viewer out, nor a cookie of another name in.
    with live_view(pipeline, token=TOKEN) as (_, live):
        mine = f"polypstream_view={live.cookie}"
        for header in (mine, f"a@b=1; {mine}", f"_xsrf=2|ab; {mine}; theme=dark", f' {mine} ;x(y)="z"'):
            assert get(live, "/api/state", {"Cookie": header})[0] == 200, header
        for header in ("a@b=1", f"a@b={live.cookie}", f"polypstream_view_old={live.cookie}", "polypstream_view",
                       f"polypstream_view={live.cookie}x", f"x=polypstream_view={live.cookie}"):  # fmt: skip
            assert get(live, "/api/state", {"Cookie": header})[0] == 401, header


def test_the_pages_routes_answer_what_they_are(pipeline: Pipeline) -> None:
    with live_view(pipeline) as (_, live):
        for asset in ("/app.js", "/style.css"):
            assert get(live, asset)[0] == 200
        for path in ("/nothing", "/zzz", "/a", "/api"):
            assert get(live, path)[0] == 404, path
        for path in ("/a", "/zzz", "/login/x"):
            connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
            connection.request("POST", path, "token=x")
            assert connection.getresponse().status == 404, path


def test_a_sign_in_form_is_read_up_to_4096_bytes_and_its_first_token_counts(pipeline: Pipeline) -> None:
    def post(body: bytes) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
        connection.request("POST", "/login", body)  # with its Content-Length
        return connection.getresponse().status

    with live_view(pipeline, token=TOKEN) as (_, live):
        padding = "&x=" + "y" * (4096 - len(f"token={TOKEN}") - 3)
        assert post(f"token={TOKEN}{padding}".encode()) == 303  # 4096 bytes
        assert post(f"token={TOKEN}{padding}y".encode()) == 413  # 4097
        assert post(b"") == 401  # no token given
        assert post(f"token={TOKEN}&token=wrong".encode()) == 303
        assert post(f"token=wrong&token={TOKEN}".encode()) == 401
        # No Content-Length, or a negative one: nothing is read (not until the client gives up).
        for length, status in ((b"", b"401"), (b"Content-Length: -1\r\n", b"413")):
            with socket.create_connection(("127.0.0.1", live.port), timeout=10) as raw:
                raw.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\n" + length + b"\r\n")
                assert raw.recv(64).startswith(b"HTTP/1.0 " + status + b" ")


def test_with_tls_files_the_page_is_served_over_tls_only(pipeline: Pipeline, pki: dict[str, Path]) -> None:
    tls = TlsFiles(pki["server_cert"], pki["server_key"])
    with live_view(pipeline, tls=tls, token=TOKEN) as (_, live):
        assert live.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=pki["ca"])
        connection = http.client.HTTPSConnection("127.0.0.1", live.port, timeout=10, context=context)
        connection.request("POST", "/login", f"token={TOKEN}", {"Content-Type": "application/x-www-form-urlencoded"})
        response = connection.getresponse()
        assert response.status == 303 and "; Secure" in (response.getheader("Set-Cookie") or "")
        plain = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/")
            plain.getresponse()


def test_responses_forbid_framing_sniffing_and_caching(pipeline: Pipeline) -> None:
    with live_view(pipeline) as (_, live):
        _, headers, _ = get(live, "/")
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store"
        assert get(live, "/../etc/passwd")[0] == 404


def test_a_viewer_that_stops_reading_is_closed_and_no_more_is_drawn_for_it(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[int] = []
    draw = pipeline._draw_view
    monkeypatch.setattr(pipeline, "_draw_view", lambda frame, *rest: (drawn.append(frame.index), draw(frame, *rest)))
    with live_view(pipeline, send_timeout_s=1.0) as (running, live):
        hub = pipeline.view
        assert hub is not None
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        stalled.connect(("127.0.0.1", live.port))
        stalled.sendall(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
        wait_for(lambda: hub.viewers == 1, what="the viewer joining")
        # Noise, decoded at full size (an overlay is asked for): each picture is a few hundred
        # kB, so two or three fill the connection's buffers. Frames go on until the server has
        # given up on the viewer (at most 400), then 20 more.
        noise = np.random.default_rng(0).integers(0, 256, (720, 960, 3), np.uint8)
        options = FrameOptions(allow_view=True, return_overlay=True)
        closed_after: list[int] = []

        def frames() -> Iterator[pb.Frame]:
            for i in range(400):
                if hub.viewers == 0 and not closed_after:
                    closed_after.append(i)
                if closed_after and i >= closed_after[0] + 20:
                    return
                yield encode_frame(noise, "scope", i, options)
                time.sleep(0.01)

        with SegmenterClient(running.address) as client:
            answers = list(client.segment(frames()))
        assert {a.status for a in answers} == {"OK"}  # the stream it viewed: every frame served
        assert closed_after, "the server did not close a viewer that stopped reading"
        # What it had been sent is there to read, then the connection's end
        stalled.settimeout(15)
        deadline = time.monotonic() + 15
        while stalled.recv(1 << 20):
            assert time.monotonic() < deadline, "the stalled viewer's connection was not ended"
        stalled.close()
    # Drawn until its buffers filled and it was found stalled (a few pictures), then never again
    # (frames still in flight when it was closed may have been claimed before)
    assert 1 <= len(drawn) < 12
    assert max(drawn) < closed_after[0] + 16  # server.ServerConfig.inflight_per_stream
