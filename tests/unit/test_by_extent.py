"""models.training.by_extent: a polyp's extent and the Dice per group of extents."""

from __future__ import annotations

import numpy as np
import pytest

from models.training.by_extent import by_group, extent


def test_extent_is_the_larger_side_of_the_masks_box_over_the_images_side() -> None:
    mask = np.zeros((10, 20), bool)
    mask[2:7, 3:5] = True  # 2 columns of 20, 5 rows of 10
    assert extent(mask) == 0.5
    mask[:, 0] = True  # now 5 columns (0..4) and all 10 rows
    assert extent(mask) == 1.0
    assert extent(np.zeros((4, 4), bool)) == 0.0


def test_by_group_sorts_by_extent_and_averages_each_models_dice_per_group() -> None:
    extents = [0.9, 0.1, 0.5, 0.3, 0.7]
    dice = {"a": [0.2, 1.0, 0.6, 0.8, 0.4], "b": [0.0, 0.5, 0.5, 0.5, 1.0]}
    rows = by_group(extents, dice, 2)
    # sorted: 0.1, 0.3, 0.5 | 0.7, 0.9 (array_split puts the extra image first)
    assert rows == [
        {"extent_from": 0.1, "extent_to": 0.5, "images": 3, "a": pytest.approx(0.8), "b": pytest.approx(0.5)},
        {"extent_from": 0.7, "extent_to": 0.9, "images": 2, "a": pytest.approx(0.3), "b": pytest.approx(0.5)},
    ]
    assert by_group(extents, dice, 1)[0]["images"] == 5
    assert len(by_group(extents[:2], {"a": dice["a"][:2]}, 4)) == 2  # no empty groups
