"""The live view's web server (`serve --ui`): one page, and its streams as Server-Sent Events.

Why Server-Sent Events: one connection per page carries every stream (a browser opens at most
six HTTP/1.1 connections to one host, so one MJPEG connection per stream would stall a page of
more than five); each picture arrives together with the boxes drawn on it; EventSource
reconnects by itself and sends the page's cookie. A picture costs a third more as base64 than
as raw JPEG, which a monitor tile on a local network affords.

Latest picture wins: each connection has its own thread, which sends each stream's newest
picture when the previous one is sent (view.py); a connection that cannot take its data for
`send_timeout_s` is closed. Security as on the gRPC port: with a token, the page asks for it
and keeps it as an HttpOnly cookie (API callers may send `Authorization: Bearer`); with TLS
files, the page is served over TLS (client certificates required when a client CA is given).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import Counter

from .config import TlsFiles
from .threads import name_os_thread
from .view import ViewHub

logger = logging.getLogger(__name__)

COOKIE = "polypstream_view"
SEND_BUFFER_BYTES = 256 * 1024  # per connection (Linux doubles it): a few pictures, several at 1080p
STATE_INTERVAL_S = 0.5  # how often a page gets the streams' rates, latencies and drops
ASSETS = {"/app.js": "text/javascript", "/style.css": "text/css"}
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}
WRONG_TOKEN = '<p class="error" role="alert">Wrong token.</p>'


def cookie_value(header: str, name: str) -> str | None:
    """The value of the cookie `name` in a Cookie header, or None. A browser sends this page the
    cookies of every application on its host, whatever their port, and some names break
    http.cookies (`a@b=1` raises CookieError for the whole header): each `name=value` pair is
    read on its own, so another application's cookie cannot sign a viewer out."""
    for pair in header.split(";"):
        key, equals, value = pair.strip().partition("=")
        if equals and key.strip() == name:
            return value.strip()
    return None


def _static(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


class LiveView:
    """The page's HTTP(S) server on `address` (HOST:PORT; port 0 picks one), on its own threads."""

    def __init__(
        self,
        hub: ViewHub,
        address: str,
        *,
        token: str | None = None,
        tls: TlsFiles | None = None,
        send_timeout_s: float = 10.0,
        max_connections: int = 64,
        rejected: Counter | None = None,
    ) -> None:
        self.hub = hub
        self.token = token
        # What the cookie holds: derived from the token, so no session state and no token on disk.
        self.cookie = hmac.new(token.encode(), b"polypstream live view", hashlib.sha256).hexdigest() if token else ""
        self.send_timeout_s = send_timeout_s
        self.rejected = rejected
        self.pages = {name: _static(name) for name in ("index.html", "login.html")}
        self.assets = {path: _static(path.lstrip("/")) for path in ASSETS}
        self.tls_context = _tls_context(tls) if tls is not None else None
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][0]
        self.httpd = _Server((host, int(port)), family, self, max_connections)
        self.port: int = self.httpd.server_address[1]
        scheme = "https" if self.tls_context is not None else "http"
        self.url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}/"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="polypstream-ui", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        name_os_thread()
        self.httpd.serve_forever()

    def stop(self) -> None:
        """Stop accepting, end every page's stream, close the socket."""
        self.hub.close()
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.httpd.server_close()


def _tls_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca is not None:
        context.load_verify_locations(tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once (more are closed at once);
    TLS handshakes run on the connection's thread, so a slow one holds up nobody."""

    daemon_threads = True
    block_on_close = False  # a connection stuck sending ends by its own timeout

    def __init__(self, address: tuple[str, int], family: int, live: LiveView, max_connections: int) -> None:
        self.address_family = family  # read when the socket is made, in the base class's __init__
        self.live = live
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            logger.warning("live view: %s refused, all connections in use", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            context = self.live.tls_context
            if context is not None:
                request.settimeout(self.live.send_timeout_s)
                try:
                    request = context.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    logger.debug("live view: TLS handshake with %s failed: %s", client_address[0], exc)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A viewer that goes away mid-answer is normal: not worth more than a debug line.
        logger.debug("live view: connection from %s ended: %r", client_address[0], sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "polypstream"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.live.send_timeout_s)
        # A bounded kernel buffer: a viewer that stops reading is found stalled within a few
        # pictures (no more are drawn for it), not after megabytes of them.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("live view: %s %s", self.address_string(), format % args)

    @property
    def live(self) -> LiveView:
        return self.server.live

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ASSETS:
            self._send(200, ASSETS[path], self.live.assets[path])
        elif path == "/":
            self._send(
                200, "text/html; charset=utf-8", self.live.pages["index.html" if self._allowed() else "login.html"]
            )
        elif not self._allowed():
            self._send(401, "text/plain; charset=utf-8", b"missing or wrong token: open / to sign in\n")
        elif path == "/api/state":
            self._send(200, "application/json", json.dumps(self.live.hub.snapshot()).encode())
        elif path == "/events":
            self._events()
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/login":
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= 4096:
            self._send(413, "text/plain; charset=utf-8", b"too long\n")
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        given = form.get("token", [""])[0]
        live = self.live
        if live.token is None or hmac.compare_digest(given.encode(), live.token.encode()):
            secure = "; Secure" if live.tls_context is not None else ""
            self._send(303, "text/plain; charset=utf-8", b"signed in\n", {
                "Location": "/",
                "Set-Cookie": f"{COOKIE}={live.cookie}; HttpOnly; SameSite=Strict; Path=/{secure}",
            })  # fmt: skip
            return
        if live.rejected is not None:
            live.rejected.labels("ui").inc()
        page = live.pages["login.html"].replace(b"<!--message-->", WRONG_TOKEN.encode())
        self._send(401, "text/html; charset=utf-8", page)

    def _allowed(self) -> bool:
        live = self.live
        if live.token is None:
            return True
        expected = f"Bearer {live.token}".encode()
        if hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected):
            return True
        given = cookie_value(self.headers.get("Cookie", ""), COOKIE)
        return given is not None and hmac.compare_digest(given.encode(), live.cookie.encode())

    def _start(self, code: int, headers: dict[str, str]) -> None:
        """The status line and headers: HEADERS on every answer, then `headers`."""
        self.send_response(code)
        for name, value in {**HEADERS, **headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, code: int, kind: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self._start(code, {**(extra or {}), "Content-Type": kind, "Content-Length": str(len(body))})
        self.wfile.write(body)

    def _events(self) -> None:
        """The page's stream: 'state' every STATE_INTERVAL_S, 'picture' as each stream's newest
        picture is drawn, until the viewer leaves, stalls past the send timeout, or the server stops."""
        self._start(200, {"Content-Type": "text/event-stream"})
        hub = self.live.hub
        viewer = hub.join()
        try:
            next_state = 0.0
            while True:
                now = time.monotonic()
                if now >= next_state:
                    self._event("state", hub.snapshot())
                    next_state = now + STATE_INTERVAL_S
                pictures = hub.next_pictures(viewer, max(0.0, next_state - time.monotonic()))
                if pictures is None:
                    return
                for picture in pictures:
                    self._event("picture", picture.to_json())
        except OSError as exc:  # gone, or not taking data (timeout): the connection ends
            logger.debug("live view: %s stopped: %s", self.address_string(), exc)
        finally:
            hub.leave(viewer)

    def _event(self, name: str, data: object) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())
