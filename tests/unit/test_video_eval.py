"""Video metrics on hand-made tracks and ground truth: exact values."""

from __future__ import annotations

import pytest

from polypstream.alerts import AlertRule
from polypstream.frames import Polyp
from polypstream.video_eval import VideoTally, choose_rule, score_video, sweep_rules, truth_polyps

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


def test_the_first_row_sets_the_sensitivity_floor_and_is_the_answer_when_no_rule_qualifies() -> None:
    raw, other, lossy = AlertRule(1, 1, 0), AlertRule(2, 2, 4), AlertRule(3, 3, 4)
    # The floor is 2 points under the first row (0.9 here), not under any other row's.
    rows = [(raw, tally(45, 40.0, 100)), (other, tally(40, 40.0, 50)), (lossy, tally(44, 40.0, 10))]
    assert choose_rule(rows) == lossy  # 0.88 >= 0.88; against the second row's 0.8 it would be too
    assert choose_rule([(raw, tally(45, 40.0, 100)), (other, tally(43, 40.0, 1))]) == raw  # 0.86 < 0.88
    # Nothing qualifies, the first row not either (its delay past the limit): the first row's rule.
    assert choose_rule([(raw, tally(45, 250.0, 100)), (other, tally(45, 260.0, 5))]) == raw


def test_a_median_delay_just_past_200_ms_does_not_qualify() -> None:
    raw, late = AlertRule(1, 1, 0), AlertRule(4, 4, 4)
    assert choose_rule([(raw, tally(45, 40.0, 100)), (late, tally(45, 200.5, 1))]) == raw
    assert choose_rule([(raw, tally(45, 40.0, 100)), (late, tally(45, 200.0, 1))]) == late


def test_the_sweep_is_raw_reporting_then_the_37_rules_it_is_documented_as() -> None:
    rules = sweep_rules()
    assert rules[0] == AlertRule(1, 1, 0) and len(rules) == 37 and len(set(rules)) == 37
    # N sightings of 2, 3, 4, 5, 6 or 8; a window of N or N + 2; a hold of 0, 2 or 4 (README, "Clinical alerts").
    assert AlertRule(2, 2, 0) in rules and AlertRule(2, 4, 4) in rules and AlertRule(8, 10, 2) in rules
    assert {r.min_seen for r in rules[1:]} == {2, 3, 4, 5, 6, 8}
    assert {r.hold for r in rules[1:]} == {0, 2, 4}
    assert {r.window - r.min_seen for r in rules[1:]} == {0, 2}


def test_tallies_add_up_field_by_field_and_an_empty_one_reports_nothing_found() -> None:
    empty = VideoTally()
    assert (empty.per_polyp_sensitivity(), empty.fp_per_minute(), empty.median_delay_ms()) == (0.0, 0.0, float("inf"))
    assert empty.report() == {
        "frames": 0, "minutes": 0.0, "polyps": 0, "polyps_found": 0,
        "per_frame_sensitivity": None, "per_frame_precision": None, "per_polyp_sensitivity": None,
        "first_detection_frames": {"median": None, "p90": None, "max": None},
        "first_detection_ms": {"median": None, "p90": None, "max": None},
        "activations": 0, "fp_activations": 0, "fp_per_minute": None,
    }  # fmt: skip
    total = VideoTally(frames=10, seconds=4.0, polyps=2, polyps_found=1, delays_frames=[3], delays_ms=[120.0])
    total.merge(VideoTally(frames=5, seconds=2.0, polyps=3, polyps_found=3, delays_frames=[1], delays_ms=[40.0],
                           activations=4, fp_activations=3, truth_boxes=7, truth_boxes_found=5))  # fmt: skip
    assert (total.frames, total.seconds, total.polyps, total.polyps_found) == (15, 6.0, 5, 4)
    assert (total.delays_frames, total.delays_ms, total.activations, total.fp_activations) == (
        [3, 1],
        [120.0, 40.0],
        4,
        3,
    )
    assert (total.truth_boxes, total.truth_boxes_found) == (7, 5)
    assert total.per_polyp_sensitivity() == 0.8 and total.fp_per_minute() == 30.0  # 3 in a tenth of a minute


def test_times_at_30_fps_are_reported_to_a_tenth_of_a_millisecond() -> None:
    # 7 frames at 30 fps; a polyp from frame 0, alerted (raw) in frame 1: 33.3 ms, not 33 or 33.33.
    truth = [[A]] * 7
    predicted = [[], *[[tracked(1, A)]] * 6]
    report = score_video(predicted, truth, fps=30.0, rule=AlertRule(1, 1, 0)).report()
    assert report["first_detection_ms"] == {"median": 33.3, "p90": 33.3, "max": 33.3}
    assert report["minutes"] == 0.004  # 7 / 30 s = 0.00389 min
    # One false alert (elsewhere, in frames 2-3) in 0.00389 minutes: 257.143 a minute.
    predicted[2] = [*predicted[2], tracked(2, ELSEWHERE)]
    predicted[3] = [*predicted[3], tracked(2, ELSEWHERE)]
    assert score_video(predicted, truth, fps=30.0, rule=AlertRule(1, 1, 0)).report()["fp_per_minute"] == 257.143


def test_an_alert_still_on_when_the_video_ends_counts_as_false_only_if_it_never_touched_a_polyp() -> None:
    truth = [[A], [A], [A]]
    on_polyp = [[], [tracked(1, A)], [tracked(1, A)]]
    elsewhere = [[], [tracked(1, ELSEWHERE)], [tracked(1, ELSEWHERE)]]
    assert score_video(on_polyp, truth, fps=25.0, rule=AlertRule(1, 1, 0)).report()["fp_activations"] == 0
    assert score_video(elsewhere, truth, fps=25.0, rule=AlertRule(1, 1, 0)).report()["fp_activations"] == 1


def test_predictions_and_truth_of_different_lengths_are_refused() -> None:
    for frames in (2, 4):
        with pytest.raises(ValueError, match=f"{frames} frames of predictions for 3 frames of ground truth"):
            score_video([[]] * frames, [[A]] * 3, fps=25.0, rule=AlertRule(1, 1, 0))


def test_a_true_box_continues_the_polyp_whose_centre_is_within_one_and_a_half_box_sides() -> None:
    # Reach is the centres' distance over the longer side of the larger box: a 10x20 box and a
    # 4x4 one, centres 30 px apart (1.5 sides of 20): the same polyp; 31 px apart: another.
    tall = (100, 100, 10, 20)  # centre (105, 110)
    for dx, dy, same in ((30, 0, True), (31, 0, False), (0, 30, True), (0, 31, False), (18, 24, True)):
        small = (105 + dx - 2, 110 + dy - 2, 4, 4)  # centre (105 + dx, 110 + dy)
        assert truth_polyps([[tall], [small]]) == [[1], [1 if same else 2]], (dx, dy)
    # A box is measured from its centre, in both directions: a 20x20 box 30 px right of a 10x10 one.
    assert truth_polyps([[(0, 5, 10, 10)], [(25, 0, 20, 20)]]) == [[1], [1]]  # centres (5, 10) and (35, 10)
    assert truth_polyps([[(5, 0, 10, 10)], [(0, 25, 20, 20)]]) == [[1], [1]]  # centres (10, 5) and (10, 35)
    assert truth_polyps([[(0, 5, 10, 10)], [(26, 0, 20, 20)]]) == [[1], [2]]  # 31 px


def test_a_polyp_keeps_its_id_over_a_gap_of_five_frames_and_not_six() -> None:
    assert truth_polyps([[A], *[[]] * 5, [A]]) == [[1], *[[]] * 5, [1]]
    assert truth_polyps([[A], *[[]] * 6, [A]]) == [[1], *[[]] * 6, [2]]


def test_each_true_box_continues_one_polyp_the_nearest_first() -> None:
    # Two polyps, then one box between them, nearer the second: it continues the second alone.
    assert truth_polyps([[(0, 0, 10, 10), (20, 0, 10, 10)], [(12, 0, 10, 10)]]) == [[1, 2], [2]]
    # Two boxes near one polyp: the nearer continues it, the other is a new polyp.
    assert truth_polyps([[(10, 0, 10, 10)], [(0, 0, 10, 10), (12, 0, 10, 10)]]) == [[1], [2, 1]]


def test_reach_is_measured_between_exact_centres_over_the_longest_side_of_either_box() -> None:
    # Each pair is exactly 1.5 sides apart (the same polyp), the side being the longest of the
    # four, whichever box and direction it is in; boxes of odd sides have centres on half pixels.
    at_the_limit = [
        ((0, 0, 20, 4), (8, 30, 4, 4)),  # the earlier box's width: centres (10, 2) and (10, 32)
        ((0, 0, 4, 20), (0, 38, 4, 4)),  # its height: (2, 10) and (2, 40)
        ((8, 0, 4, 4), (0, 30, 20, 4)),  # the later box's width: (10, 2) and (10, 32)
        ((0, 8, 4, 4), (30, 0, 4, 20)),  # its height: (2, 10) and (32, 10)
        ((0, 0, 11, 20), (30, 0, 11, 20)),  # odd widths: (5.5, 10) and (35.5, 10)
        ((30, 0, 11, 20), (0, 0, 11, 20)),
        ((0, 0, 20, 11), (0, 30, 20, 11)),  # odd heights: (10, 5.5) and (10, 35.5)
        ((0, 30, 20, 11), (0, 0, 20, 11)),
    ]
    for earlier, later in at_the_limit:
        assert truth_polyps([[earlier], [later]]) == [[1], [1]], (earlier, later)
    # Boxes of no size (none comes from a mask, but a sidecar may hold them) count as 1 px.
    assert truth_polyps([[(0, 0, 0, 0)], [(1, 0, 0, 0)], [(3, 0, 0, 0)]]) == [[1], [1], [2]]


def test_videos_longer_than_256_frames_are_scored() -> None:
    report = score_video([[]] * 300, [[]] * 300, fps=25.0, rule=AlertRule(1, 1, 0)).report()
    assert (report["frames"], report["minutes"]) == (300, 0.2)
