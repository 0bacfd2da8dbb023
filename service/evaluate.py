"""Segmentation and box metrics of a model on a Kvasir-SEG-layout folder, at the original
image resolution, through the same decoding, runner and post-processing the service uses
for a client's JPEG frames. The metrics themselves are defined in `scores`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .capture import InvalidFrameError, decode_encoded
from .config import MIN_AREA_FRACTION
from .dataset import DatasetError, load_split, read_image, read_mask
from .postprocess import locate_polyps, probability_to_mask
from .runner import Runner
from .scores import SplitScores

CLIENT_SUFFIXES = (".jpg", ".jpeg", ".png")  # what a client sends as encoded frames


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
    runner: Runner,
    data_dir: Path,
    split_file: Path | None = None,
    *,
    min_area_fraction: float = MIN_AREA_FRACTION,
    tally: SplitScores | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float | int | None]:
    """Mean per-image mask metrics and pooled box precision/recall over a split (None for the
    box metrics when the data has no ground-truth boxes: they were not measured).

    Images are scored into `tally` as they are done, so a caller that is interrupted still
    has the scores of the images done so far; `progress(done, total)` follows each batch."""
    samples = [s for s in load_split(data_dir, split_file) if s.mask_path is not None]
    if not samples:
        raise DatasetError(f"{data_dir}: no images with masks to evaluate")
    tally = SplitScores() if tally is None else tally
    for start in range(0, len(samples), runner.max_batch):
        chunk = samples[start : start + runner.max_batch]
        decoded = [read_as_served(s.image_path, runner.input_size) for s in chunk]
        probs = runner.run([runner.preprocess(image) for image, _ in decoded])
        for sample, (_, (width, height)), prob in zip(chunk, decoded, probs, strict=True):
            assert sample.mask_path is not None
            pred = probability_to_mask(prob, width, height, runner.contract.threshold)[0]
            found = locate_polyps(
                prob,
                width,
                height,
                runner.contract.threshold,
                min_area_fraction=min_area_fraction,
                min_score=runner.contract.min_region_score,
            )
            tally.add(pred, read_mask(sample.mask_path), [p.box for p in found], sample.boxes_xywh())
        if progress is not None:
            progress(len(tally.images), len(samples))
    return tally.as_dict()
