"""replay's tally and report on hand-made video outcomes: every frame accounted for, exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from polypstream.replay import STAGES, Tally, VideoOutcome, find_videos


def outcome(
    stream_id: str,
    sent: int,
    answered: dict[str, int],
    latencies_ms: list[float],
    *,
    error: str = "",
    expected_frames: int | None = None,
    dice: list[float] | None = None,
) -> VideoOutcome:
    stages = {stage: [float(k + 1)] * sum(answered.values()) for k, stage in enumerate(STAGES)}
    return VideoOutcome(stream_id, sent, answered, latencies_ms, stages, dice or [], error, expected_frames)


def tally_of_three_videos() -> Tally:
    tally = Tally()
    # a clean video; one with a late and an invalid frame and a CSV that says one frame more;
    # one whose stream broke with 2 of its 5 frames unanswered
    tally.add(outcome("a", 4, {"OK": 4}, [10.0, 20.0, 30.0, 40.0], dice=[0.5, 1.0]), "s1:1")
    tally.add(outcome("b", 3, {"OK": 1, "DROPPED_LATE": 1, "INVALID_FRAME": 1}, [50.0], expected_frames=4), "s2:2")
    tally.add(
        outcome("c", 5, {"OK": 2, "FAILED": 1}, [60.0, 70.0], error="c: server went away", expected_frames=5), "s1:1"
    )
    return tally


def test_every_frame_is_accounted_for_by_status_server_and_video() -> None:
    report = tally_of_three_videos().report(
        4.0, interrupted=False, videos_found=4, streams=2, servers=["s1:1", "s2:2"], metadata_csv=True
    )
    assert (report["videos_found"], report["videos"], report["videos_not_replayed"]) == (4, 3, 1)
    assert (report["frames"], report["dropped"], report["invalid"], report["failed"]) == (12, 1, 1, 1)
    assert (report["errors"], report["failed_videos"]) == (2, 1)  # c's 2 frames never answered
    assert report["error_messages"] == ["c: server went away"]
    assert report["accounting"] == {"sent": 12, "answered": 10, "ok": 7, "errors": 2, "all_accounted": True}
    assert report["frames_per_server"] == {"s1:1": 7, "s2:2": 3}  # answered frames
    assert report["frame_count_mismatches"] == [{"video": "b", "csv": 4, "decoded": 3}]
    assert (report["fps"], report["wall_s"]) == (1.8, 4.0)  # 7 served in 4 s, to one decimal
    # 10, 20 … 70 ms (7 answers with a latency), linear between ranks: p90 at rank 5.4 → 64
    assert report["latency_ms"] == {"p50": 40.0, "p90": 64.0, "p99": 69.4, "max": 70.0}
    stage_p50 = {stage: v["p50"] for stage, v in report["server_stages_ms"].items()}  # type: ignore[attr-defined]
    assert stage_p50 == {stage.removesuffix("_ms"): float(k + 1) for k, stage in enumerate(STAGES)}
    assert (report["dice"], report["dice_frames"]) == (0.75, 2)
    assert len(report["latency_cdf_ms"]) == 101  # type: ignore[arg-type]
    assert report["latency_cdf_ms"][0] == 10.0 and report["latency_cdf_ms"][-1] == 70.0  # type: ignore[index]


def test_a_video_with_unanswered_frames_and_no_error_says_how_many() -> None:
    tally = Tally()
    tally.add(outcome("d", 6, {"OK": 4}, [1.0] * 4), "s")
    report = tally.report(1.0, interrupted=False, videos_found=1, streams=1, servers=["s"], metadata_csv=False)
    assert (report["errors"], report["failed_videos"]) == (2, 1)
    assert report["error_messages"] == ["d: 2 frames unanswered"]
    assert report["frame_count_mismatches"] == []  # no CSV
    assert (report["dice"], report["dice_frames"]) == (None, 0)


def test_more_answers_than_frames_sent_are_not_accounted_for() -> None:
    # A server that answered a frame twice: the frames sent and answered do not add up, and the
    # report says so rather than netting the extra answer against an unanswered frame.
    tally = Tally()
    tally.add(outcome("e", 3, {"OK": 4}, [1.0] * 4), "s")
    tally.add(outcome("f", 3, {"OK": 2}, [1.0] * 2), "s")
    report = tally.report(1.0, interrupted=False, videos_found=2, streams=1, servers=["s"], metadata_csv=False)
    assert report["accounting"] == {"sent": 6, "answered": 6, "ok": 6, "errors": 1, "all_accounted": False}
    assert report["error_messages"] == ["e: answers outnumber the frames sent by 1", "f: 1 frames unanswered"]
    assert report["failed_videos"] == 2


def test_an_interrupted_replay_does_not_count_the_videos_it_did_not_reach_as_not_replayed() -> None:
    report = tally_of_three_videos().report(
        0.0, interrupted=True, videos_found=374, streams=2, servers=["s1:1"], metadata_csv=False
    )
    assert (report["interrupted"], report["videos"], report["videos_not_replayed"]) == (True, 3, 0)
    assert report["fps"] is None  # no time measured


def test_at_most_twenty_error_messages_are_reported_and_all_are_counted() -> None:
    tally = Tally()
    for k in range(25):
        tally.add(outcome(f"v{k}", 1, {}, [], error=f"v{k}: could not open"), "s")
    report = tally.report(1.0, interrupted=False, videos_found=25, streams=1, servers=["s"], metadata_csv=False)
    assert report["failed_videos"] == 25 and report["errors"] == 25
    assert report["error_messages"] == [f"v{k}: could not open" for k in range(20)]


def test_videos_are_found_under_a_folder_by_their_suffix_sorted_by_path(tmp_path: Path) -> None:
    for name in ("b/2.AVI", "a/1.mp4", "a/notes.txt", "c.mkv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_videos(tmp_path)] == ["a/1.mp4", "b/2.AVI", "c.mkv"]
    assert find_videos(tmp_path / "c.mkv") == [tmp_path / "c.mkv"]  # a file is itself
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        find_videos(tmp_path / "missing")
