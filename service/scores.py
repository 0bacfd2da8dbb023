"""Scores of masks and boxes: per-image mask metrics, box IoU and one-to-one greedy matching.

Needs only numpy, so clients (replay) and the tracker use it without loading a model runtime.

Per image: Dice 2|P∩G|/(|P|+|G|), IoU |P∩G|/|P∪G|, precision |P∩G|/|P|, recall |P∩G|/|G|;
each is 1 when both masks are empty, and 0 when exactly one is (for precision: P empty
and G not; for recall: G empty and P not). Reported as means over images, as in the
Kvasir-SEG papers. Boxes: predicted boxes matched one-to-one (greedy, highest IoU first)
to ground-truth boxes at IoU ≥ 0.5; precision and recall are pooled over all images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

BOX_IOU = 0.5
Box = tuple[int, int, int, int]  # x, y, width, height in pixels


@dataclass(frozen=True)
class MaskScores:
    dice: float
    iou: float
    precision: float
    recall: float


def _ratio(numerator: int, denominator: int, *, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


def mask_scores(pred: np.ndarray, truth: np.ndarray) -> MaskScores:
    """Dice, IoU, precision and recall of two boolean masks of the same shape."""
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    inter = int(np.count_nonzero(pred & truth))
    p, t = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    both_empty = p == 0 and t == 0
    return MaskScores(
        dice=_ratio(2 * inter, p + t, both_empty=both_empty),
        iou=_ratio(inter, p + t - inter, both_empty=both_empty),
        precision=_ratio(inter, p, both_empty=t == 0),
        recall=_ratio(inter, t, both_empty=p == 0),
    )


def box_iou(a: Box, b: Box) -> float:
    """IoU of two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


# Past this many (first, second) pairs the IoUs are worked out in numpy: its fixed cost (about
# 25 µs) is repaid from about 25 pairs on (a noisy model's 20 tracks × 5 regions: 101 → 33 µs).
NUMPY_PAIRS = 32


def greedy_match(first: Sequence[Box], second: Sequence[Box], threshold: float) -> dict[int, int]:
    """One-to-one matches {index in first: index in second}, the pair of highest IoU first
    (ties: the higher index in first, then in second), of pairs with IoU ≥ threshold (the
    tracker's and the box metrics' rule)."""
    if len(first) * len(second) > NUMPY_PAIRS:
        return _take_greedily(_pairs_numpy(first, second, threshold))
    pairs = sorted(((box_iou(a, b), i, j) for i, a in enumerate(first) for j, b in enumerate(second)), reverse=True)
    return _take_greedily([(i, j) for iou, i, j in pairs if iou >= threshold])


def _pairs_numpy(first: Sequence[Box], second: Sequence[Box], threshold: float) -> list[tuple[int, int]]:
    """greedy_match's candidate pairs (i, j), IoU ≥ threshold, in its order, worked out in numpy
    (the same IoUs: quotients of the same integers)."""
    if not first or not second:
        return []
    ax, ay, aw, ah = np.array(first, dtype=np.int64).T[:, :, None]
    bx, by, bw, bh = np.array(second, dtype=np.int64).T[:, None, :]
    ix = np.clip(np.minimum(ax + aw, bx + bw) - np.maximum(ax, bx), 0, None)
    iy = np.clip(np.minimum(ay + ah, by + bh) - np.maximum(ay, by), 0, None)
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
    i, j = np.nonzero(iou >= threshold)
    best_first = np.lexsort((j, i, iou[i, j]))[::-1]
    return list(zip(i[best_first].tolist(), j[best_first].tolist(), strict=True))


def _take_greedily(pairs: list[tuple[int, int]]) -> dict[int, int]:
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for i, j in pairs:
        if i not in matched and j not in taken:
            matched[i] = j
            taken.add(j)
    return matched


def match_boxes(predicted: Sequence[Box], truth: Sequence[Box], threshold: float = BOX_IOU) -> int:
    """True positives: one-to-one greedy matches of (x, y, w, h) boxes at IoU ≥ threshold."""
    return len(greedy_match(predicted, truth, threshold))


@dataclass
class SplitScores:
    """Scores of a set of images, added one image at a time (so a partial set has scores too)."""

    images: list[MaskScores] = field(default_factory=list)
    true_positives: int = 0
    predicted: int = 0
    truths: int = 0

    def add(self, pred: np.ndarray, truth: np.ndarray, boxes: Sequence[Box], truth_boxes: Sequence[Box]) -> None:
        self.images.append(mask_scores(pred, truth))
        self.true_positives += match_boxes(boxes, truth_boxes)
        self.predicted += len(boxes)
        self.truths += len(truth_boxes)

    def as_dict(self) -> dict[str, float | int | None]:
        """Mean mask metrics and pooled box precision/recall (None when the data had no
        ground-truth boxes: not measured; None for everything before the first image)."""

        def mean(values: list[float]) -> float | None:
            return float(np.mean(values)) if values else None

        measured_boxes = self.truths > 0
        return {
            "dice": mean([s.dice for s in self.images]),
            "iou": mean([s.iou for s in self.images]),
            "precision": mean([s.precision for s in self.images]),
            "recall": mean([s.recall for s in self.images]),
            "box_precision": (self.true_positives / self.predicted if self.predicted else 0.0)
            if measured_boxes
            else None,
            "box_recall": self.true_positives / self.truths if measured_boxes else None,
            "images": len(self.images),
        }
