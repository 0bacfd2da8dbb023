"""Mask and box scores on hand-made masks and boxes: exact values, each rule pinned."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polypstream import scores
from polypstream.scores import Box, SplitScores, box_iou, greedy_match, mask_scores, match_boxes


def masks(pred_px: int, truth_px: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 10×10 masks of `pred_px` and `truth_px` pixels sharing `overlap` (row-major runs)."""
    pred, truth = np.zeros(100, bool), np.zeros(100, bool)
    pred[:pred_px] = True
    truth[pred_px - overlap : pred_px - overlap + truth_px] = True
    return pred.reshape(10, 10), truth.reshape(10, 10)


def test_mask_scores_exact_values_with_every_metric_different() -> None:
    pred, truth = masks(20, 30, 10)
    s = mask_scores(pred, truth)
    assert (s.dice, s.iou, s.precision, s.recall) == (20 / 50, 10 / 40, 10 / 20, 10 / 30)


def test_mask_scores_when_one_or_both_masks_are_empty() -> None:
    empty, full = np.zeros((4, 4), bool), np.ones((4, 4), bool)
    both = mask_scores(empty, empty)
    assert (both.dice, both.iou, both.precision, both.recall) == (1.0, 1.0, 1.0, 1.0)
    missed = mask_scores(empty, full)  # nothing predicted on a polyp
    assert (missed.dice, missed.iou, missed.precision, missed.recall) == (0.0, 0.0, 0.0, 0.0)
    false_alarm = mask_scores(full, empty)  # a polyp predicted where there is none
    assert (false_alarm.dice, false_alarm.iou, false_alarm.precision, false_alarm.recall) == (0.0, 0.0, 0.0, 0.0)
    exact = mask_scores(full, full)
    assert (exact.dice, exact.iou, exact.precision, exact.recall) == (1.0, 1.0, 1.0, 1.0)


def test_mask_scores_refuses_masks_of_different_shapes() -> None:
    with pytest.raises(ValueError, match=r"mask shapes differ: \(4, 4\) vs \(4, 5\)"):
        mask_scores(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match=r"mask shapes differ: \(5, 4\) vs \(4, 4\)"):
        mask_scores(np.zeros((5, 4), bool), np.zeros((4, 4), bool))


def test_mask_scores_are_values_not_state() -> None:
    scores = mask_scores(np.ones((2, 2), bool), np.ones((2, 2), bool))
    with pytest.raises(dataclasses.FrozenInstanceError):
        scores.dice = 0.0  # type: ignore[misc]


def test_box_iou_exact_values() -> None:
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == 50 / 150  # overlap in x only
    assert box_iou((0, 0, 10, 10), (0, 5, 10, 10)) == 50 / 150  # overlap in y only
    assert box_iou((2, 3, 10, 10), (4, 6, 4, 2)) == 8 / 100  # one inside the other
    assert box_iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching edges share no pixel
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # empty boxes: no union, no overlap
    assert box_iou((5, 5, 1, 1), (5, 5, 1, 1)) == 1.0  # one pixel each, the same pixel
    # apart by a pixel in one direction, overlapping in the other: no overlap, never negative
    assert box_iou((0, 0, 10, 10), (11, 0, 10, 10)) == 0.0
    assert box_iou((0, 0, 10, 10), (0, 11, 10, 10)) == 0.0
    assert box_iou((0, 0, 10, 10), (0, 20, 10, 10)) == 0.0
    # every coordinate different: x, y, width and height each used as themselves
    assert box_iou((2, 3, 12, 10), (4, 6, 4, 2)) == 8 / 120
    assert box_iou((3, 2, 10, 12), (6, 4, 2, 4)) == 8 / 120
    assert box_iou((1, 2, 6, 9), (4, 5, 8, 3)) == 9 / (54 + 24 - 9)


def test_greedy_match_takes_the_best_pair_first_and_each_box_once() -> None:
    a = (0, 0, 10, 10)
    good, better = (3, 0, 10, 10), (1, 0, 10, 10)  # IoU 70/130 and 90/110 with `a`
    assert greedy_match([a], [good, better], 0.3) == {0: 1}
    assert greedy_match([good, better], [a], 0.3) == {1: 0}
    # Two boxes on two truths: each truth once, even where one box is the best for both.
    assert greedy_match([a, (40, 40, 10, 10)], [better, (41, 40, 10, 10)], 0.3) == {0: 0, 1: 1}
    assert greedy_match([a, better], [a], 0.3) == {0: 0}


def test_greedy_match_threshold_is_inclusive() -> None:
    truth = [(0, 0, 10, 10)]
    assert greedy_match([(0, 0, 10, 20)], truth, 0.5) == {0: 0}  # IoU exactly 0.5
    assert greedy_match([(0, 0, 10, 21)], truth, 0.5) == {}
    assert greedy_match([], truth, 0.5) == {} and greedy_match(truth, [], 0.5) == {}


def test_many_pairs_are_matched_as_few_are_ties_included(monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 tracks 20 px apart; 5 regions, each moved a pixel from tracks 1, 3, 5, 6 and 7 (40 pairs)
    tracks = [(20 * k, 0, 10, 10) for k in range(8)]
    regions = [(20 * k + 1, 0, 10, 10) for k in (7, 1, 6, 3, 5)]
    ties = [(0, 0, 10, 10)] * 7, [(0, 0, 10, 10)] * 5  # 35 pairs, every IoU 1
    for numpy_from in (scores.NUMPY_PAIRS, 10_000):  # the numpy path, then the plain one
        monkeypatch.setattr(scores, "NUMPY_PAIRS", numpy_from)
        assert greedy_match(tracks, regions, 0.3) == {7: 0, 1: 1, 6: 2, 3: 3, 5: 4}
        assert greedy_match(regions, tracks, 0.3) == {0: 7, 1: 1, 2: 6, 3: 3, 4: 5}
        # equal IoUs: the higher index in first goes first, then the higher in second
        assert greedy_match(*ties, 0.3) == {6: 4, 5: 3, 4: 2, 3: 1, 2: 0}
        assert greedy_match(tracks, regions, 0.9) == {}  # 81/119 each: under the threshold
        # one-pixel boxes on the same pixel: IoU 1 (a union of one pixel still counts)
        dots = [(3 * k, 50, 1, 1) for k in range(6)]
        assert greedy_match(dots, dots[::-1], 1.0) == {k: 5 - k for k in range(6)}


def test_the_ious_are_worked_out_in_numpy_only_past_the_pair_count(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its fixed cost is repaid only on many pairs (a noisy model's tracks and regions)
    calls: list[int] = []
    real = scores._pairs_numpy

    def counted(first: list[Box], second: list[Box], threshold: float) -> list[tuple[int, int]]:
        calls.append(len(first) * len(second))
        return real(first, second, threshold)

    monkeypatch.setattr(scores, "_pairs_numpy", counted)
    box = (0, 0, 10, 10)
    for first, second in ((4, 8), (8, 4), (1, 32), (33, 1), (3, 11), (1, 1)):
        greedy_match([box] * first, [box] * second, 0.3)
    assert calls == [33, 33]  # 32 pairs and fewer stay in plain Python


boxes = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(0, 30), st.integers(0, 30)), max_size=12)


@given(first=boxes, second=boxes, threshold=st.sampled_from([0.0, 0.3, 0.5, 1.0]))
@settings(max_examples=300, deadline=None)
def test_the_numpy_path_matches_as_the_plain_one_does(
    first: list[tuple[int, int, int, int]], second: list[tuple[int, int, int, int]], threshold: float
) -> None:
    plain = [(box_iou(a, b), i, j) for i, a in enumerate(first) for j, b in enumerate(second)]
    expected = [(i, j) for iou, i, j in sorted(plain, reverse=True) if iou >= threshold]
    assert scores._pairs_numpy(first, second, threshold) == expected


def test_match_boxes_counts_one_to_one_matches_at_iou_half_by_default() -> None:
    truth = [(0, 0, 10, 10), (50, 50, 10, 10)]
    assert match_boxes([(0, 0, 10, 10), (1, 1, 10, 10)], truth) == 1  # two predictions, one polyp
    assert match_boxes([(0, 0, 10, 10), (50, 50, 10, 10)], truth) == 2
    assert match_boxes([(0, 0, 10, 20)], truth) == 1  # IoU exactly 0.5 counts
    assert match_boxes([(0, 0, 10, 21)], truth) == 0
    assert match_boxes([(0, 0, 10, 21)], truth, threshold=0.4) == 1


def test_split_scores_average_masks_per_image_and_pool_boxes() -> None:
    tally = SplitScores()
    assert tally.as_dict() == {
        "dice": None, "iou": None, "precision": None, "recall": None,
        "box_precision": None, "box_recall": None, "images": 0,
    }  # fmt: skip
    pred, truth = masks(20, 30, 10)
    tally.add(pred, truth, [(0, 0, 10, 10), (30, 30, 5, 5)], [(0, 0, 10, 10)])  # 1 of 2 boxes right
    tally.add(truth, truth, [], [(0, 0, 10, 10), (50, 50, 5, 5)])  # both polyps missed
    assert tally.as_dict() == {
        "dice": (0.4 + 1.0) / 2,
        "iou": (0.25 + 1.0) / 2,
        "precision": (0.5 + 1.0) / 2,
        "recall": (1 / 3 + 1.0) / 2,
        "box_precision": 1 / 2,  # pooled: 1 true positive of 2 predicted boxes
        "box_recall": 1 / 3,  # of 3 polyps
        "images": 2,
    }


def test_split_scores_box_metrics_without_predictions_or_without_truth() -> None:
    nothing_found = SplitScores()
    full = np.ones((4, 4), bool)
    nothing_found.add(full, full, [], [(0, 0, 4, 4)])
    assert (nothing_found.as_dict()["box_precision"], nothing_found.as_dict()["box_recall"]) == (0.0, 0.0)
    no_truth = SplitScores()
    no_truth.add(full, full, [(0, 0, 4, 4)], [])
    assert (no_truth.as_dict()["box_precision"], no_truth.as_dict()["box_recall"]) == (None, None)  # not measured
