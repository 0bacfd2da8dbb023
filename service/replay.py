"""Replay a folder of videos through one or more servers and account for every frame.

Videos are found recursively in a stable (sorted) order, so the HyperKvasir
`labeled-videos/` layout works as it comes. When the folder has HyperKvasir's metadata CSV,
each video's decoded frame count is checked against it; when it has ground truth (a
`polypstream corpus` stand-in), the masks come back and the temporal Dice is measured.
K worker streams run at once; worker k talks to server k mod N, and each takes the next
video when it finishes one, so load spreads over the servers. Frames are sent as fast as
they are answered (no-drop, back-pressure), and every frame sent is accounted for:
answered (by status) or counted as an error. A server that goes away mid-video (a restart) is
sought again for up to `reconnect_s` and the video goes on, its unanswered frames sent again
(client.Stream); a worker whose server does not come back puts its video back for the other
workers and stops, and the videos no worker took are reported as not replayed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
import numpy as np

from .capture import CapturedFrame, SourceError, VideoSource
from .client import SERVER_GONE, Answer, SegmenterClient, Stream
from .corpus import GroundTruth, read_metadata
from .frames import FRAME_STAGES, FrameOptions
from .scores import mask_scores
from .stats import cdf, percentiles

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".mpg", ".mpeg", ".m4v", ".webm")
STAGES = tuple(f"{stage}_ms" for stage in FRAME_STAGES)  # the timings a FrameResult carries, in ms


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
    dice: list[float] = field(default_factory=list)  # per frame with ground truth
    count_mismatches: list[dict[str, object]] = field(default_factory=list)  # CSV says n frames, video has m
    servers_lost: list[str] = field(default_factory=list)  # gone for longer than the reconnect window
    reconnects: int = 0  # new calls after a server went away mid-video

    def add(self, video: VideoOutcome, server: str) -> None:
        """Merge one video's outcome (call under the replay's lock)."""
        self.videos += 1
        self.sent += video.sent
        for status, count in video.answered.items():
            self.statuses[status] = self.statuses.get(status, 0) + count
        missing = video.sent - sum(video.answered.values())  # below 0: more answers than frames sent
        self.errors += max(0, missing)
        if video.error or missing:
            self.failed_videos += 1
            what = f"{missing} frames unanswered" if missing > 0 else f"answers outnumber the frames sent by {-missing}"
            self.error_messages.append(video.error or f"{video.stream_id}: {what}")
        self.latencies_ms.extend(video.latencies_ms)
        for stage in STAGES:
            self.stages_ms[stage].extend(video.stages_ms[stage])
        self.dice.extend(video.dice)
        if video.expected_frames is not None and video.expected_frames != video.sent:
            self.count_mismatches.append(
                {"video": video.stream_id, "csv": video.expected_frames, "decoded": video.sent}
            )
        self.per_server[server] = self.per_server.get(server, 0) + sum(video.answered.values())

    def report(
        self,
        wall_s: float,
        *,
        interrupted: bool,
        videos_found: int,
        streams: int,
        servers: list[str],
        metadata_csv: bool,
    ) -> dict[str, object]:
        """The replay's report: every frame accounted for, latencies, per-stage times, Dice."""
        answered = sum(self.statuses.values())
        ok = self.statuses.get("OK", 0)
        return {
            "interrupted": interrupted,
            "videos_found": videos_found,
            "videos": self.videos,
            # no worker took them: every server was lost (not counted while interrupted)
            "videos_not_replayed": 0 if interrupted else videos_found - self.videos,
            "servers_lost": self.servers_lost,
            "reconnects": self.reconnects,
            "frames": self.sent,
            "fps": round(ok / wall_s, 1) if wall_s else None,
            "wall_s": round(wall_s, 2),
            "streams": streams,
            "servers": servers,
            "latency_ms": percentiles(self.latencies_ms),
            "server_stages_ms": {s.removesuffix("_ms"): percentiles(v) for s, v in self.stages_ms.items()},
            "dropped": self.statuses.get("DROPPED_LATE", 0),
            "invalid": self.statuses.get("INVALID_FRAME", 0),
            "failed": self.statuses.get("FAILED", 0),
            "errors": self.errors,
            "failed_videos": self.failed_videos,
            "error_messages": self.error_messages[:20],
            "accounting": {
                "sent": self.sent,
                "answered": answered,
                "ok": ok,
                "errors": self.errors,
                "all_accounted": self.sent == answered + self.errors,
            },
            "frames_per_server": self.per_server,
            "metadata_csv": metadata_csv,
            "frame_count_mismatches": self.count_mismatches,
            "dice": round(float(np.mean(self.dice)), 4) if self.dice else None,
            "dice_frames": len(self.dice),
            "latency_cdf_ms": cdf(self.latencies_ms),
        }


@dataclass(frozen=True)
class VideoContext:
    """What the corpus knows of one video: its CSV frame count and its ground truth."""

    expected_frames: int | None = None
    truth: Callable[[int], np.ndarray | None] | None = None


@dataclass
class VideoOutcome:
    """What happened to one video's frames."""

    stream_id: str
    sent: int
    answered: dict[str, int]
    latencies_ms: list[float]
    stages_ms: dict[str, list[float]]
    dice: list[float]
    error: str
    expected_frames: int | None


def _frame_dice(answer: Answer, truth_of: Callable[[int], np.ndarray | None] | None) -> float | None:
    """Dice of the returned mask against the frame's ground truth, when both exist."""
    truth = truth_of(answer.result.index) if truth_of is not None else None
    if truth is None or not answer.result.mask_png:
        return None
    predicted = cv2.imdecode(np.frombuffer(answer.result.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if predicted is None:
        return None
    return mask_scores(predicted > 127, truth).dice


def _replay_video(
    client: SegmenterClient,
    path: Path,
    root: Path,
    tally: Tally,
    lock: threading.Lock,
    context: VideoContext,
    stop: threading.Event,
    reconnect_s: float,
    tell: Callable[[str], None],
) -> bool:
    """Stream one video and merge its outcome into `tally`; True when its server was lost (no
    server answered within `reconnect_s` of a call ending with its server gone): then nothing
    of the video is merged (it is to be replayed whole by another worker)."""
    stream_id = str(path.relative_to(root)) if path != root else path.name
    dice: list[float] = []
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
        return False

    def frames() -> Iterator[CapturedFrame]:
        for captured in source:
            if stop.is_set():  # interrupted: what was sent is still answered
                return
            yield captured

    options = FrameOptions(no_drop=True, return_mask=context.truth is not None, frame_rate=source.frame_rate)
    lost = False
    stream = Stream(
        client,
        frames(),
        stream_id,
        options,
        reconnect_s=reconnect_s,
        stop=stop,
        report=lambda w: tell(f"{stream_id}: {w}"),
    )
    try:
        for _, answer in stream:
            answered[answer.status] = answered.get(answer.status, 0) + 1
            if answer.status == "OK":
                latencies.append(answer.latency_s * 1e3)
                for stage in STAGES:
                    stages[stage].append(getattr(answer.result.timing, stage))
                score = _frame_dice(answer, context.truth)
                if score is not None:
                    dice.append(score)
    except grpc.RpcError as exc:
        error = f"{stream_id}: {exc.code().name}: {exc.details()}"
        lost = exc.code() in SERVER_GONE
    expected = None if stop.is_set() else context.expected_frames  # cut short: its count proves nothing
    outcome = VideoOutcome(stream_id, stream.sent, answered, latencies, stages, dice, error, expected)
    with lock:
        if lost:
            if client.address not in tally.servers_lost:
                tally.servers_lost.append(client.address)
            return True
        tally.add(outcome, client.address)
        tally.reconnects += stream.reconnects
    return False


class _Videos:
    """The videos left to replay, shared by the workers: a worker that takes none while another
    still replays one waits, since that one may come back (its server lost)."""

    def __init__(self, videos: list[Path]) -> None:
        self._left = list(reversed(videos))  # taken from the end: in sorted order
        self._busy = 0
        self._changed = threading.Condition()

    def take(self, stop: threading.Event) -> Path | None:
        """The next video, or None when none is left (or `stop` is set)."""
        with self._changed:
            while not stop.is_set():
                if self._left:
                    self._busy += 1
                    return self._left.pop()
                if not self._busy:
                    return None
                self._changed.wait(0.1)
            return None

    def done(self, video: Path, *, again: bool) -> None:
        """`video` is replayed, or (`again`) is to be replayed by another worker."""
        with self._changed:
            self._busy -= 1
            if again:
                self._left.append(video)
            self._changed.notify_all()


def replay(
    root: Path,
    servers: list[str],
    *,
    streams: int = 4,
    connect: Callable[[str], SegmenterClient] = SegmenterClient,
    progress: Callable[[Tally, int], None] | None = None,
    reconnect_s: float = 0.0,
    tell: Callable[[str], None] = lambda words: None,
) -> dict[str, object]:
    """Run every video under `root` through `servers` with `streams` concurrent streams; a
    server that goes away is sought again for up to `reconnect_s` (see the module's doc), and
    `tell` is told when a video's call ends and when it goes on.

    Ctrl-C (KeyboardInterrupt) stops it cleanly: no new frame is sent, every frame sent is
    still answered and counted, and the report (with `interrupted: true`) covers that much."""
    videos = find_videos(root)
    if not videos:
        raise FileNotFoundError(f"{root}: no videos ({', '.join(VIDEO_SUFFIXES)})")
    if not servers:
        raise ValueError("replay needs at least one server address")
    metadata = read_metadata(root)
    truth = GroundTruth(root)

    def context(video: Path) -> VideoContext:
        row = metadata.get(video.name)
        return VideoContext(
            expected_frames=int(row["number-of-frames"]) if row else None,
            truth=truth.frames(video) if truth.available() else None,
        )

    todo = _Videos(videos)
    tally, lock = Tally(), threading.Lock()
    stop = threading.Event()

    workers = max(1, streams)
    finished = [threading.Event() for _ in range(workers)]

    def worker(k: int) -> None:
        try:
            with connect(servers[k % len(servers)]) as client:
                while (video := todo.take(stop)) is not None:
                    lost = False
                    try:
                        lost = _replay_video(client, video, root, tally, lock, context(video), stop, reconnect_s, tell)
                    finally:  # whatever happened: a worker waiting for it to come back must not wait forever
                        todo.done(video, again=lost)  # its server gone: another worker replays it, and the rest
                    if lost:
                        return
                    if progress is not None:
                        with lock:  # one progress line at a time, whole (workers finish videos together)
                            progress(tally, len(videos))
        finally:
            finished[k].set()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,), name=f"replay-{k}") for k in range(workers)]
    for thread in threads:
        thread.start()
    _wait_until_interrupted(finished, stop)
    for thread in threads:
        thread.join()
    return tally.report(
        time.perf_counter() - started,
        interrupted=stop.is_set(),
        videos_found=len(videos),
        streams=streams,
        servers=servers,
        metadata_csv=bool(metadata),
    )


def _wait_until_interrupted(finished: list[threading.Event], stop: threading.Event) -> None:
    """Wait for every worker to finish; on Ctrl-C set `stop`, then wait for them to wind down.

    Waits on events, not Thread.join: a join interrupted by Ctrl-C can leave the thread marked
    as stopped while it still runs (CPython gh-90882), and the report would miss its frames."""
    try:
        for done in finished:
            while not done.wait(0.1):  # timed, so that Ctrl-C reaches this thread
                pass
    except KeyboardInterrupt:
        stop.set()
    for done in finished:
        done.wait()
