"""Kvasir-SEG layout reader: images/, masks/, kavsir_bboxes.json and split files.

Used by `polypstream eval`, the corpus builder and the training code, so the
one rule for reading a mask (JPEG grey values, binarised at > 127) lives here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

MASK_THRESHOLD = 127
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """The folder is not in the Kvasir-SEG layout, or a file in it is unreadable."""


@dataclass(frozen=True)
class Sample:
    """One image of the data set, with its mask path and ground-truth boxes (x0, y0, x1, y1)."""

    image_id: str
    image_path: Path
    mask_path: Path | None
    boxes: tuple[tuple[int, int, int, int], ...] = ()

    def boxes_xywh(self) -> list[tuple[int, int, int, int]]:
        """The ground-truth boxes as (x, y, width, height), the service's box convention."""
        return [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in self.boxes]


def _find_image(folder: Path, image_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_boxes(data_dir: Path) -> dict[str, tuple[tuple[int, int, int, int], ...]]:
    """Ground-truth boxes per image id from `kavsir_bboxes.json` (empty when absent)."""
    path = data_dir / "kavsir_bboxes.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    boxes: dict[str, tuple[tuple[int, int, int, int], ...]] = {}
    for image_id, entry in raw.items():
        boxes[image_id] = tuple(
            (int(b["xmin"]), int(b["ymin"]), int(b["xmax"]), int(b["ymax"])) for b in entry.get("bbox", [])
        )
    return boxes


def load_split(data_dir: Path, split_file: Path | None = None) -> list[Sample]:
    """Samples of `data_dir` listed in `split_file` (one id per line), or all images, sorted."""
    images_dir = data_dir / "images"
    masks_dir = data_dir / "masks"
    if not images_dir.is_dir():
        raise DatasetError(f"{data_dir}: no images/ folder (expected the Kvasir-SEG layout)")
    if split_file is not None:
        if not split_file.is_file():
            raise DatasetError(f"{split_file}: split file not found")
        ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    else:
        ids = sorted(p.stem for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not ids:
        raise DatasetError(f"{data_dir}: no images found")
    boxes = load_boxes(data_dir)
    samples = []
    for image_id in ids:
        image_path = _find_image(images_dir, image_id)
        if image_path is None:
            raise DatasetError(f"{images_dir}: image '{image_id}' listed in the split is missing")
        mask_path = _find_image(masks_dir, image_id) if masks_dir.is_dir() else None
        samples.append(Sample(image_id, image_path, mask_path, boxes.get(image_id, ())))
    return samples


def read_image(path: Path) -> np.ndarray:
    """HWC uint8 BGR image; raises DatasetError when the file cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: cannot decode image")
    return image


def read_mask(path: Path) -> np.ndarray:
    """HW bool mask; Kvasir-SEG masks are JPEG, so grey values are binarised at > 127."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"{path}: cannot decode mask")
    return mask > MASK_THRESHOLD
