"""A live stream for tests: FFmpeg serving a clip over HTTP (MPEG-TS) on loopback, one client
per FFmpeg process (tests that use it skip where the `ffmpeg` program is absent)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_stream(clip: Path, port: int) -> subprocess.Popen[bytes]:
    """FFmpeg looping `clip` at its own rate as an HTTP MPEG-TS stream (one client)."""
    return subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c:v", "mpeg4",
         "-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{port}/live.ts"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def listening(port: int) -> bool:
    """Whether a TCP socket listens on the port, read from /proc (connecting to FFmpeg's
    one-client server to find out would use up its one client)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                    return True
    return False
