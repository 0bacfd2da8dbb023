"""Segmentation and box metrics of a model on a Kvasir-SEG-layout folder, at the original
image resolution, through the same decoding, runner and post-processing the service uses
for a client's JPEG frames.

Per image: Dice 2|P∩G|/(|P|+|G|), IoU |P∩G|/|P∪G|, precision |P∩G|/|P|, recall |P∩G|/|G|;
each is 1 when both masks are empty, and 0 when exactly one is (for precision: P empty
and G not; for recall: G empty and P not). Reported as means over images, as in the
Kvasir-SEG papers. Boxes: predicted regions matched one-to-one (greedy, highest IoU first)
to ground-truth boxes at IoU ≥ 0.5; precision and recall are pooled over all images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .capture import InvalidFrameError, decode_encoded
from .dataset import DatasetError, load_split, read_image, read_mask
from .postprocess import MIN_AREA_FRACTION, box_iou, locate_polyps, probability_to_mask
from .runner import Runner

BOX_IOU = 0.5
CLIENT_SUFFIXES = (".jpg", ".jpeg", ".png")  # what a client sends as encoded frames


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


def match_boxes(
    predicted: list[tuple[int, int, int, int]], truth: list[tuple[int, int, int, int]], threshold: float = BOX_IOU
) -> int:
    """True positives: one-to-one greedy matches of (x, y, w, h) boxes at IoU ≥ threshold."""
    pairs = sorted(((box_iou(p, t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth)), reverse=True)
    used_p: set[int] = set()
    used_t: set[int] = set()
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    return len(used_p)


def read_as_served(path: Path, model_size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """An image decoded as the server decodes a client frame of it (a JPEG at the smallest
    DCT scale that covers the model input), and its own (width, height); other formats in full."""
    if path.suffix.lower() in CLIENT_SUFFIXES:
        try:
            return decode_encoded(path.read_bytes(), min_size=model_size)
        except InvalidFrameError as exc:
            raise DatasetError(f"{path}: {exc}") from exc
    image = read_image(path)
    return image, (image.shape[1], image.shape[0])


def evaluate(
    runner: Runner, data_dir: Path, split_file: Path | None = None, *, min_area_fraction: float = MIN_AREA_FRACTION
) -> dict[str, float | int | None]:
    """Mean per-image mask metrics and pooled box precision/recall over a split (None for the
    box metrics when the data has no ground-truth boxes: they were not measured)."""
    samples = [s for s in load_split(data_dir, split_file) if s.mask_path is not None]
    if not samples:
        raise ValueError(f"{data_dir}: no images with masks to evaluate")
    scores: list[MaskScores] = []
    tp = n_pred = n_truth = 0
    for start in range(0, len(samples), runner.max_batch):
        chunk = samples[start : start + runner.max_batch]
        decoded = [read_as_served(s.image_path, runner.input_size) for s in chunk]
        probs = runner.run([runner.preprocess(image) for image, _ in decoded])
        for sample, (_, (width, height)), prob in zip(chunk, decoded, probs, strict=True):
            assert sample.mask_path is not None
            pred = probability_to_mask(prob, width, height, runner.contract.threshold)[0]
            scores.append(mask_scores(pred, read_mask(sample.mask_path)))
            found = locate_polyps(
                prob,
                width,
                height,
                runner.contract.threshold,
                min_area_fraction=min_area_fraction,
                min_score=runner.contract.min_region_score,
            )
            boxes = [p.box for p in found]
            truth = sample.boxes_xywh()
            tp += match_boxes(boxes, truth)
            n_pred += len(boxes)
            n_truth += len(truth)
    return {
        "dice": float(np.mean([s.dice for s in scores])),
        "iou": float(np.mean([s.iou for s in scores])),
        "precision": float(np.mean([s.precision for s in scores])),
        "recall": float(np.mean([s.recall for s in scores])),
        "box_precision": (tp / n_pred if n_pred else 0.0) if n_truth else None,
        "box_recall": tp / n_truth if n_truth else None,
        "images": len(scores),
    }
