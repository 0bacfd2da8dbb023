"""Replay a folder of videos through one or more servers and account for every frame.

Videos are found recursively in a stable (sorted) order, so the HyperKvasir
`labeled-videos/` layout works as it comes. K worker streams run at once; worker k talks
to server k mod N, and each takes the next video when it finishes one, so load spreads
over the servers. Frames are sent as fast as they are answered (no-drop, back-pressure),
and every frame sent is accounted for: answered (by status) or counted as an error.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from service.capture import CapturedFrame, SourceError, VideoSource
from service.client import SegmenterClient
from service.frames import FrameOptions

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".mpg", ".mpeg", ".m4v", ".webm")
STAGES = ("decode_ms", "queue_ms", "inference_ms", "postprocess_ms", "server_ms")


def find_videos(root: Path) -> list[Path]:
    """Every video under `root` (or `root` itself if it is a file), sorted by path."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


@dataclass
class Tally:
    """What happened to the frames of one replay; merged across workers under a lock."""

    videos: int = 0
    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # frames sent on a stream that broke before answering them
    failed_videos: int = 0  # videos that could not be opened or whose stream broke
    error_messages: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    stages_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    per_server: dict[str, int] = field(default_factory=dict)


def percentiles(values_ms: list[float]) -> dict[str, float | None]:
    """p50, p90, p99 and max of a list of milliseconds (None when empty)."""
    if not values_ms:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(values_ms)
    summary: dict[str, float | None] = {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (50, 90, 99)}
    summary["max"] = round(float(a.max()), 3)
    return summary


def _replay_video(client: SegmenterClient, path: Path, root: Path, tally: Tally, lock: threading.Lock) -> None:
    stream_id = str(path.relative_to(root)) if path != root else path.name
    sent = 0
    answered: dict[str, int] = {}
    latencies: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    error = ""
    try:
        source = VideoSource(str(path))  # opened here: a bad file is this video's error, not gRPC's
    except SourceError as exc:
        with lock:
            tally.videos += 1
            tally.failed_videos += 1
            tally.error_messages.append(f"{stream_id}: {exc}")
        return

    def frames() -> Iterator[CapturedFrame]:
        nonlocal sent
        for captured in source:
            sent += 1
            yield captured

    try:
        for answer in client.segment_video(frames(), stream_id, FrameOptions(no_drop=True)):
            answered[answer.status] = answered.get(answer.status, 0) + 1
            if answer.status == "OK":
                latencies.append(answer.latency_s * 1e3)
                for stage in STAGES:
                    stages[stage].append(getattr(answer.result.timing, stage))
    except grpc.RpcError as exc:
        error = f"{stream_id}: {exc.code().name}: {exc.details()}"
    with lock:
        tally.videos += 1
        tally.sent += sent
        for status, count in answered.items():
            tally.statuses[status] = tally.statuses.get(status, 0) + count
        missing = sent - sum(answered.values())
        tally.errors += missing
        if error or missing:
            tally.failed_videos += 1
            tally.error_messages.append(error or f"{stream_id}: {missing} frames unanswered")
        tally.latencies_ms.extend(latencies)
        for stage in STAGES:
            tally.stages_ms[stage].extend(stages[stage])
        tally.per_server[client.address] = tally.per_server.get(client.address, 0) + sum(answered.values())


def replay(
    root: Path,
    servers: list[str],
    *,
    streams: int = 4,
    connect: Callable[[str], SegmenterClient] = SegmenterClient,
    progress: Callable[[Tally, int], None] | None = None,
) -> dict[str, object]:
    """Run every video under `root` through `servers` with `streams` concurrent streams."""
    videos = find_videos(root)
    if not videos:
        raise FileNotFoundError(f"{root}: no videos ({', '.join(VIDEO_SUFFIXES)})")
    if not servers:
        raise ValueError("replay needs at least one server address")
    todo: queue.SimpleQueue[Path] = queue.SimpleQueue()
    for video in videos:
        todo.put(video)
    tally, lock = Tally(), threading.Lock()

    def worker(k: int) -> None:
        with connect(servers[k % len(servers)]) as client:
            while True:
                try:
                    video = todo.get_nowait()
                except queue.Empty:
                    return
                _replay_video(client, video, root, tally, lock)
                if progress is not None:
                    progress(tally, len(videos))

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,), name=f"replay-{k}") for k in range(max(1, streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    answered = sum(tally.statuses.values())
    ok = tally.statuses.get("OK", 0)
    return {
        "videos": tally.videos,
        "frames": tally.sent,
        "fps": round(ok / wall, 1) if wall else None,
        "wall_s": round(wall, 2),
        "streams": streams,
        "servers": servers,
        "latency_ms": percentiles(tally.latencies_ms),
        "server_stages_ms": {s.removesuffix("_ms"): percentiles(v) for s, v in tally.stages_ms.items()},
        "dropped": tally.statuses.get("DROPPED_LATE", 0),
        "invalid": tally.statuses.get("INVALID_FRAME", 0),
        "failed": tally.statuses.get("FAILED", 0),
        "errors": tally.errors,
        "failed_videos": tally.failed_videos,
        "error_messages": tally.error_messages[:20],
        "accounting": {
            "sent": tally.sent,
            "answered": answered,
            "ok": ok,
            "errors": tally.errors,
            "all_accounted": tally.sent == answered + tally.errors,
        },
        "frames_per_server": tally.per_server,
    }
