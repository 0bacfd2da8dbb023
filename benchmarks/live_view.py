"""The live view's cost to the stream it shows: one live client stream (allow_view) against a
`polypstream serve --ui` process, with no viewer, a reading viewer, a stalled viewer (connects,
never reads), and both.

    python -m benchmarks.live_view --seconds 20

Reports, per phase: the stream's frames/s served and drops, client and server latency p50/p99,
pictures/s that the reading viewer got, and whether the server closed the stalled viewer's
connection (after --send-timeout). The goal: a stalled viewer changes neither the frame rate
nor the latency of the stream it views.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.common import command_line, device_name, endoscopy_frames, jpeg, start_serve, write_result
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import Answer, SegmenterClient
from polypstream.stats import percentiles

PHASES = ("no viewer", "reading viewer", "stalled viewer", "reading and stalled viewers")


def live_stream(address: str, encoded: list[bytes], seconds: float, fps: float) -> list[Answer]:
    """One live stream (late frames may drop) that the view may show, for `seconds`."""

    def requests() -> Iterator[pb.Frame]:
        start = time.perf_counter()
        for i in range(int(seconds * fps)):
            delay = start + i / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            options = pb.FrameOptions(allow_view=True)
            yield pb.Frame(stream_id="scope", index=i, encoded=encoded[i % len(encoded)], options=options)

    with SegmenterClient(address) as client:
        return list(client.segment(requests()))


class ReadingViewer:
    """A page that keeps up: reads the event stream and counts the pictures."""

    def __init__(self, host: str, port: int) -> None:
        self.pictures = 0
        self.socket = socket.create_connection((host, port), timeout=30)
        self.socket.sendall(b"GET /events HTTP/1.1\r\nHost: view\r\n\r\n")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError), self.socket.makefile("rb") as lines:
            for line in lines:
                if line.startswith(b"event: picture"):
                    self.pictures += 1

    def close(self) -> None:
        self.socket.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.socket.close()


class StalledViewer:
    """A page that asked for the event stream and then never reads (a frozen tab, a dead link)."""

    def __init__(self, host: str, port: int) -> None:
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.socket.connect((host, port))
        self.socket.sendall(b"GET /events HTTP/1.1\r\nHost: view\r\n\r\n")

    def closed_by_server(self, within_s: float = 3.0) -> bool:
        """Read what is waiting for up to `within_s`: True if the server closed the connection."""
        deadline = time.monotonic() + within_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.socket.settimeout(left)
                if not self.socket.recv(1 << 20):
                    return True
        except TimeoutError:
            pass
        finally:
            self.socket.close()
        return False


def phase(args: argparse.Namespace, address: str, ui: tuple[str, int], encoded: list[bytes], which: str) -> dict:
    reading = ReadingViewer(*ui) if "reading" in which else None
    stalled = StalledViewer(*ui) if "stalled" in which else None
    started = time.perf_counter()
    answers = live_stream(address, encoded, args.seconds, args.fps)
    wall = time.perf_counter() - started
    report: dict[str, object] = {"phase": which, **summary(answers, wall)}
    if reading is not None:
        report["viewer_pictures_per_s"] = round(reading.pictures / wall, 1)
        reading.close()
    if stalled is not None:
        report["stalled_viewer_closed_by_server"] = stalled.closed_by_server()
    return report


def summary(answers: list[Answer], wall: float) -> dict[str, object]:
    statuses: dict[str, int] = {}
    for a in answers:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    ok = [a for a in answers if a.status == "OK"]
    return {
        "sent": len(answers),
        "statuses": statuses,
        "served_fps": round(len(ok) / wall, 2),
        "latency_ms": percentiles([a.latency_s * 1e3 for a in ok]),
        "server_ms": percentiles([a.result.timing.server_ms for a in ok]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--fps", type=float, default=25.0, help="the live stream's frame rate")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--send-timeout", type=float, default=10.0, help="serve --send-timeout")
    parser.add_argument("--model", default="fast")
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/<device>-live-view.json)")
    args = parser.parse_args()

    encoded = [jpeg(f) for f in endoscopy_frames(50, (args.width, args.height))]
    proc, at = start_serve("--model", args.model, "--ui", "127.0.0.1:0", "--send-timeout", str(args.send_timeout))
    try:
        address, url = at["grpc"], urlsplit(at["ui"])
        ui = (url.hostname or "127.0.0.1", url.port or 80)
        live_stream(address, encoded, 2.0, args.fps)  # warm-up
        phases = []
        for which in PHASES:
            phases.append(phase(args, address, ui, encoded, which))
            print(phases[-1])
            time.sleep(1.0)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    payload = {
        "benchmark": "live_view",
        "device": device_name(),
        "command": command_line("benchmarks.live_view", args),
        "frame": f"{args.width}x{args.height} JPEG",
        "fps": args.fps,
        "phases": phases,
    }
    print(f"wrote {write_result('live-view', payload, args.out)}")


if __name__ == "__main__":
    main()
