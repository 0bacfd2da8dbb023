"""Video metrics on hand-made tracks and ground truth: exact values."""

from __future__ import annotations

from polypstream.alerts import AlertRule
from polypstream.frames import Polyp
from polypstream.video_eval import VideoTally, choose_rule, score_video, truth_polyps

A, B, ELSEWHERE = (0, 0, 10, 10), (50, 50, 10, 10), (100, 100, 10, 10)


def tracked(track_id: int, box: tuple[int, int, int, int]) -> Polyp:
    return Polyp(box=box, score=0.9, area=100, track_id=track_id)


# 12 frames at 10 fps. Truth: polyp A in frames 0-9, polyp B in 5-9. Predicted: track 1 on A in
# frames 2-9, track 2 on nothing (a false alarm) in 3-5, track 3 on B in 8-9.
TRUTH = [[A] if i < 5 else [A, B] if i < 10 else [] for i in range(12)]
PREDICTED = [
    [tracked(1, A)] * (2 <= i <= 9) + [tracked(2, ELSEWHERE)] * (3 <= i <= 5) + [tracked(3, B)] * (8 <= i <= 9)
    for i in range(12)
]


def test_alerts_seen_in_two_of_two_frames_scored_by_hand() -> None:
    # Track 1 alerts in frames 3-9, track 2 in 4-5 (never on a polyp: a false activation),
    # track 3 in frame 9 (still alerting when the video ends).
    report = score_video(PREDICTED, TRUTH, fps=10.0, rule=AlertRule(2, 2, 0)).report()
    assert report == {
        "frames": 12, "minutes": 0.02, "polyps": 2, "polyps_found": 2,
        "per_frame_sensitivity": round(8 / 15, 4),  # A in frames 3-9, B in 9, of 10 + 5 true boxes
        "per_frame_precision": round(8 / 10, 4),  # 10 boxes shown, 8 on a polyp
        "per_polyp_sensitivity": 1.0,
        "first_detection_frames": {"median": 3.5, "p90": 3.9, "max": 4.0},  # A: 3 frames, B: 4
        "first_detection_ms": {"median": 350.0, "p90": 390.0, "max": 400.0},
        "activations": 3, "fp_activations": 1, "fp_per_minute": 50.0,
    }  # fmt: skip


def test_raw_reporting_scored_by_hand() -> None:
    report = score_video(PREDICTED, TRUTH, fps=10.0, rule=AlertRule(1, 1, 0)).report()
    assert (report["per_frame_sensitivity"], report["per_frame_precision"]) == (round(10 / 15, 4), round(10 / 13, 4))
    assert report["first_detection_frames"] == {"median": 2.5, "p90": 2.9, "max": 3.0}  # A: 2, B: 3
    assert (report["activations"], report["fp_activations"]) == (3, 1)


def test_frames_not_looked_at_have_no_answer_to_score_and_count_as_time_for_the_rule() -> None:
    # Every other frame looked at (0, 2, ..., 10). 4 of 4, held 0: track 1 (on A in 2, 4, 6, 8) has
    # frames 2-6 seen by frame 6, the skipped ones between two sightings counted: it alerts in 6
    # and 8 and ends in 10. Counting only the frames looked at, it needs 2, 4, 6 and 8: it alerts in 8.
    looked = [frame if i % 2 == 0 else None for i, frame in enumerate(PREDICTED)]
    by_index = score_video(looked, TRUTH, fps=10.0, rule=AlertRule(4, 4, 0)).report()
    assert (by_index["frames"], by_index["polyps"], by_index["polyps_found"]) == (12, 2, 1)
    assert by_index["per_frame_sensitivity"] == round(2 / 7, 4)  # of the true boxes of frames looked at: 1+1+1+2+2+0
    assert by_index["per_frame_precision"] == 1.0
    assert by_index["first_detection_frames"] == {"median": 6.0, "p90": 6.0, "max": 6.0}  # A from frame 0 (not scored)
    assert (by_index["activations"], by_index["fp_activations"]) == (1, 0)
    counted = score_video(looked, TRUTH, fps=10.0, rule=AlertRule(4, 4, 0), by_index=False).report()
    assert counted["first_detection_frames"]["median"] == 8.0  # type: ignore[index]
    assert counted["per_frame_sensitivity"] == round(1 / 7, 4)


def test_an_alert_that_touches_a_polyp_once_is_not_a_false_one() -> None:
    truth = [[A], [], []]
    predicted = [[tracked(1, (5, 5, 10, 10))], [tracked(1, ELSEWHERE)], []]  # overlaps A in frame 0 only
    report = score_video(predicted, truth, fps=25.0, rule=AlertRule(1, 1, 0)).report()
    assert (report["activations"], report["fp_activations"]) == (1, 0)  # one alert, on a polyp in its first frame


def test_true_boxes_are_linked_into_polyps_across_short_gaps() -> None:
    moving = [(2 * i, 0, 10, 10) for i in range(4)]
    truth = [[moving[0]], [moving[1], B], [], [moving[2]], [moving[3], B]] + [[]] * 6 + [[B]]
    assert truth_polyps(truth) == [[1], [1, 2], [], [1], [1, 2]] + [[]] * 6 + [[3]]  # B back after 7 frames: new


def tally(polyps_found: int, delay_ms: float, fp: int) -> VideoTally:
    return VideoTally(
        frames=1500, seconds=60.0, polyps=50, polyps_found=polyps_found, delays_ms=[delay_ms], fp_activations=fp
    )


def test_the_default_rule_is_chosen_by_the_rule_fixed_in_advance() -> None:
    raw, quick, slow, lossy, quiet = (
        AlertRule(1, 1, 0), AlertRule(2, 3, 2), AlertRule(6, 8, 2), AlertRule(3, 5, 2), AlertRule(4, 6, 2),
    )  # fmt: skip
    rows = [
        (raw, tally(45, 40.0, 100)),
        (quick, tally(45, 120.0, 30)),
        (slow, tally(45, 280.0, 2)),  # fewest false alarms, but too slow (> 200 ms)
        (lossy, tally(43, 160.0, 5)),  # loses 4 points of per-polyp sensitivity
        (quiet, tally(44, 200.0, 10)),  # loses 2 points (allowed), at the limit of the delay
    ]
    assert choose_rule(rows) == quiet
    assert choose_rule([(raw, tally(45, 40.0, 100)), (slow, tally(45, 280.0, 2))]) == raw  # nothing else qualifies
    tied = [(raw, tally(45, 40.0, 100)), (slow, tally(45, 160.0, 5)), (quick, tally(45, 120.0, 5))]
    assert choose_rule(tied) == quick  # as few false alarms: the shorter delay
