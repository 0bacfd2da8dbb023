"""A live stream over a link slower than its video: how old its results are when they arrive.

One `polypstream serve` (its own process) behind a TCP proxy that passes the client's bytes at
`--mbits` megabits a second (the answers back at full speed: they are small); through it, one
client streams 1920×1080 frames at 25 fps as a live camera makes them (`client.Stream`, as
`polypstream stream` of a URL does), with and without `keep_up`. A frame's *age* is the time
from when the camera made it to when its result is back; without keep_up, frames wait in the
source's and the network's buffers and every result comes later than the one before.

    python -m benchmarks.slow_link --mbits 0 40 20 10 --seconds 15
    python -m benchmarks.slow_link --mbits 0 --delay-ms 75 --seconds 15      # a 150 ms round trip

`--mbits 0`: no limit. Reports, per link and mode, the frames made, sent, skipped and answered,
the age p50/p90/p99/max, and the age of the last result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import command_line, device_name, endoscopy_frames, jpeg, start_serve, write_result
from polypstream.capture import CapturedFrame, paced
from polypstream.client import SegmenterClient, Stream
from polypstream.frames import FrameOptions
from polypstream.stats import percentiles

FPS = 25.0
SIZE = (1920, 1080)
CHUNK = 16384


class Link:
    """A TCP proxy on 127.0.0.1 (its own thread and event loop) to `upstream`, passing the
    client's bytes at `bytes_per_s` (0: unlimited) and the server's at full speed, each way
    `delay_s` late (a round trip of twice that)."""

    def __init__(self, upstream: str, bytes_per_s: float, delay_s: float = 0.0) -> None:
        self.upstream, self.rate, self.delay_s = upstream, bytes_per_s, delay_s
        self.address = ""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, args=(ready,), name="slow-link", daemon=True)
        self._thread.start()
        ready.wait(30)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
            ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.upstream.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        # the link closing cancels it: it ends quietly (Python 3.11's streams report a cancelled handler)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(self._pipe(reader, up_writer, self.rate), self._pipe(up_reader, writer, 0.0))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: float) -> None:
        """Bytes read at `rate` (0: as they come), each chunk written `delay_s` after it was read."""
        loop = asyncio.get_running_loop()
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while (item := await due.get())[1]:
                await asyncio.sleep(max(0.0, item[0] - loop.time()))
                writer.write(item[1])
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await reader.read(CHUNK):
                await due.put((loop.time() + self.delay_s, data))
                if rate:
                    await asyncio.sleep(len(data) / rate)
        except ConnectionError:
            pass
        finally:
            await due.put((0.0, b""))
            with contextlib.suppress(ConnectionError):
                await delivering
            writer.close()

    def close(self) -> None:
        """Stop listening, end the connections' tasks, and the loop."""

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


def run(address: str, frames: list[np.ndarray], seconds: float, keep_up: bool) -> dict[str, object]:
    """Stream `seconds` of 25 fps video made as a camera makes it; the age of every result."""
    count = int(seconds * FPS)

    def video() -> Iterator[np.ndarray]:
        for i in range(count):
            yield frames[i % len(frames)]

    started = time.monotonic()
    source: Iterator[CapturedFrame] = paced(video(), FPS, realtime=True)  # frame i is made at i / FPS
    ages_ms: list[float] = []
    with SegmenterClient(address) as client:
        client.wait_ready(30)
        stream = Stream(client, source, "live", FrameOptions(frame_rate=FPS), keep_up=keep_up)
        for _, answer in stream:
            ages_ms.append((time.monotonic() - started - answer.result.index / FPS) * 1e3)
    return {
        "keep_up": keep_up,
        "frames": count,
        "sent": stream.sent,
        "skipped": stream.skipped,
        "answered": len(ages_ms),
        "age_ms": percentiles(ages_ms, 1),
        "last_age_ms": round(ages_ms[-1], 1) if ages_ms else None,
        "wall_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--mbits", type=float, nargs="+", default=[0.0, 40.0, 20.0, 10.0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="each way: a round trip of twice this")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    frames = [cv2.resize(f, SIZE) for f in endoscopy_frames(24)]
    frame_kb = round(float(np.mean([len(jpeg(f)) for f in frames])) / 1024, 1)
    needed = round(frame_kb * 1024 * 8 * FPS / 1e6, 1)
    print(f"JPEG frames of {frame_kb} KB: {needed} Mbit/s at {FPS:g} fps", flush=True)
    proc, at = start_serve("--model", args.model)
    runs = []
    try:
        for mbits in args.mbits:
            link = Link(at["grpc"], mbits * 1e6 / 8, args.delay_ms / 1e3)
            try:
                for keep_up in (False, True):
                    measured = run(link.address, frames, args.seconds, keep_up)
                    report = {"mbits": mbits, "rtt_ms": 2 * args.delay_ms, **measured}
                    print(report, flush=True)
                    runs.append(report)
            finally:
                link.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    payload: dict[str, object] = {
        "benchmark": "slow_link",
        "device": device_name(),
        "model": args.model,
        "fps": FPS,
        "frame_size": list(SIZE),
        "frame_kb": frame_kb,
        "mbits_needed": needed,
        "runs": runs,
        "command": command_line("benchmarks.slow_link", args),
    }
    delay = f"-rtt-{2 * args.delay_ms:g}ms" if args.delay_ms else ""
    out = write_result(f"slow-link-{args.model}{delay}", payload, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
