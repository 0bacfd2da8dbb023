"""What `stream` and `watch` write and say: summaries, JSON lines, the overlay video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.cli import OverlayVideo, StreamSummary, replay_problems
from polypstream.client import Answer, Watched


def result(index: int, server_ms: float = 10.0, polyps: int = 0) -> pb.FrameResult:
    found = [pb.Polyp(box=pb.Box(x=1, y=2, width=3, height=4), score=0.5, area=12, track_id=1)] * polyps
    return pb.FrameResult(
        stream_id="scope", index=index, status=pb.FRAME_STATUS_OK, polyps=found, timing=pb.Timing(server_ms=server_ms)
    )


def test_a_watch_counts_the_frames_of_the_source_that_have_no_result_between_its_first_and_last() -> None:
    summary = StreamSummary(source="scope")
    for index, server_ms in ((7, 10.0), (8, 20.0), (11, 30.0), (12, 40.0), (20, 50.0)):
        summary.add(Watched(result(index, server_ms)))
    summary.wall_s = 2.0
    assert summary.missed == 2 + 7  # 9 and 10, then 13 to 19; none before the first (the watch began there)
    assert summary.line() == (
        "5 frames of source 'scope' (OK 5); polyps in 0 frames, 0 detections, 0 tracks, 0 alerts (shown in 0 "
        "frames); server p50 30.0 ms, p99 49.6 ms; 2.5 frames/s; 9 frames of the source between them have no "
        "result here (skipped by a live source under load, or lost while this watcher read too slowly)"
    )
    assert summary.as_dict()["missed"] == 9 and summary.as_dict()["source"] == "scope"


def test_a_watch_with_every_frame_says_nothing_missed_and_a_stream_never_counts_gaps() -> None:
    watched, streamed = StreamSummary(source="scope"), StreamSummary()
    for index in (3, 4, 5):
        watched.add(Watched(result(index, polyps=1)))
    for index in (0, 5, 9):  # a client numbers its own frames as it likes
        streamed.add(Answer(result(index), 0.02))
    assert watched.missed == 0 and "have no result" not in watched.line()
    assert watched.line().startswith("3 frames of source 'scope' (OK 3); polyps in 3 frames, 3 detections, 1 tracks")
    assert streamed.missed == 0 and "missed" not in streamed.as_dict()
    assert streamed.line().startswith("3 frames (OK 3);") and "latency p50 20.0 ms" in streamed.line()


def test_a_frame_dropped_during_an_alert_counts_as_one_showing_it() -> None:
    summary = StreamSummary()
    alerting = pb.Polyp(box=pb.Box(x=1, y=2, width=3, height=4), score=0.9, area=12, track_id=1, alerting=True)
    summary.add(Answer(pb.FrameResult(index=0, status=pb.FRAME_STATUS_OK, polyps=[alerting]), 0.01))
    summary.add(Answer(pb.FrameResult(index=1, status=pb.FRAME_STATUS_DROPPED_LATE, held=[alerting]), 0.01))
    summary.add(Answer(pb.FrameResult(index=2, status=pb.FRAME_STATUS_DROPPED_LATE), 0.01))
    assert (summary.frames_alerting, summary.frames_with_polyps, summary.detections) == (2, 1, 1)
    assert "(DROPPED_LATE 2, OK 1)" in summary.line() and "(shown in 2 frames)" in summary.line()


def test_a_watched_result_has_no_round_trip_in_its_json_line() -> None:
    r = result(4, polyps=1)
    streamed, watched = Answer(r, 0.0123).to_json(), Watched(r).to_json()
    assert streamed["latency_ms"] == 12.3
    assert "latency_ms" not in watched
    assert {k: v for k, v in streamed.items() if k != "latency_ms"} == watched
    assert list(streamed)[:5] == ["stream_id", "index", "status", "polyps", "latency_ms"]  # the README's order


def test_the_overlay_video_draws_the_alerts_a_dropped_frame_says_are_on(tmp_path: Path) -> None:
    frame = np.zeros((80, 96, 3), np.uint8)
    video = OverlayVideo(tmp_path / "o.avi", 25.0)  # Motion JPEG: close to what was written
    held = [pb.Polyp(box=pb.Box(x=20, y=10, width=40, height=30), score=0.9, area=1200, track_id=3, alerting=True)]
    video.write(b"", frame)  # dropped, nothing on: the frame as sent
    video.write(b"", frame, held)  # dropped during an alert: the frame with the alert's box
    video.close()
    capture = cv2.VideoCapture(str(tmp_path / "o.avi"))
    pictures = [capture.read()[1] for _ in range(2)]
    assert pictures[0].max() < 30  # black, give or take JPEG
    edge = pictures[1][10:40, 20].max(axis=1)  # the box's left edge, top to bottom
    assert (edge > 100).mean() > 0.9 and pictures[1][45:80, 70:96].max() < 30  # drawn there, nowhere else


def test_a_replays_problems_are_said_a_line_each() -> None:
    clean = {"failed_videos": 0, "error_messages": [], "servers_lost": [], "videos_not_replayed": 0}
    assert replay_problems(clean, 30) == []
    lost = clean | {"servers_lost": ["a:1"]}
    assert replay_problems(lost, 30) == [
        "no server answered within 30 s (--reconnect) at a:1: the other servers replayed its videos"
    ]
    stranded = clean | {"failed_videos": 1, "error_messages": ["v.avi: cannot open"], "servers_lost": ["a:1", "b:2"]}
    assert replay_problems(stranded | {"videos_not_replayed": 4}, 2.5) == [
        "1 videos failed, e.g. v.avi: cannot open",
        "4 videos not replayed: no server answered within 2.5 s (--reconnect) at a:1, b:2",
    ]


def test_a_streams_summary_says_what_the_stops_of_its_live_source_cost() -> None:
    summary = StreamSummary()
    for index in (0, 1, 2):
        summary.add(Answer(result(index), 0.02))
    summary.wall_s = 1.0
    summary.source_gaps_s = [2.25, 4.5]
    assert summary.line() == (
        "3 frames (OK 3); polyps in 0 frames, 0 detections, 0 tracks, 0 alerts (shown in 0 frames); latency p50 "
        "20.0 ms, p99 20.0 ms (server p50 10.0 ms, p99 10.0 ms); 3.0 frames/s; the source stopped and came back "
        "2 times (6.8 s without frames)"
    )
    summary.source_gaps_s, summary.source_lost = [4.5], "the source stopped delivering frames after frame 2"
    assert summary.line().endswith("; the source stopped and came back 1 time (4.5 s without frames)")
    d = summary.as_dict()
    assert (d["source_reopens"], d["source_gap_s"], d["source_lost"]) == (
        1,
        4.5,
        "the source stopped delivering frames after frame 2",
    )


def test_a_stream_whose_source_never_stopped_says_nothing_of_it() -> None:
    summary = StreamSummary()
    summary.add(Answer(result(0), 0.02))
    d = summary.as_dict()
    assert (d["source_reopens"], d["source_gap_s"], d["source_lost"]) == (0, 0, None)
    assert "source" not in summary.line()
    assert "source_reopens" not in StreamSummary(source="scope").as_dict()  # a watch sends no frames of its own


def test_a_live_streams_summary_counts_the_frames_it_skipped_to_keep_up() -> None:
    summary = StreamSummary()
    summary.add(Answer(result(0), 0.02))
    summary.wall_s, summary.skipped = 1.0, 97
    assert summary.line().endswith(
        "; 97 frames of the source skipped: they aged out unsent, the call taking frames more slowly than the "
        "source made them (a slow link or server)"
    )
    assert summary.as_dict()["skipped"] == 97
