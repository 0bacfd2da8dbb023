"""The Kvasir-SEG layout reader on the fixture images."""

from __future__ import annotations

from pathlib import Path

import pytest

from polypstream.dataset import DatasetError, load_split, read_image, read_mask
from tests.conftest import KVASIR_FIXTURES


def test_split_lists_images_masks_and_boxes() -> None:
    samples = load_split(KVASIR_FIXTURES, KVASIR_FIXTURES / "test.txt")
    assert len(samples) == 4
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in samples)
    two = next(s for s in samples if s.image_id == "ck2bxknhjvs1x0794iogrq49k")
    assert len(two.boxes) == 2


def test_mask_is_binarised_and_matches_its_image() -> None:
    sample = load_split(KVASIR_FIXTURES)[0]
    assert sample.mask_path is not None
    mask = read_mask(sample.mask_path)
    assert mask.dtype == bool and mask.shape == read_image(sample.image_path).shape[:2]
    assert 0 < mask.mean() < 1


def test_layout_errors_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no images/ folder"):
        load_split(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "split.txt").write_text("missing-id\n")
    with pytest.raises(DatasetError, match="'missing-id' listed in the split is missing"):
        load_split(tmp_path, tmp_path / "split.txt")
