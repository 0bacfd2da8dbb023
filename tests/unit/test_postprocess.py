"""Post-processing on hand-made masks: exact boxes, scores, tracking, overlay."""

from __future__ import annotations

import numpy as np
import pytest

from polypstream.frames import Polyp
from polypstream.postprocess import (
    IouTracker,
    connected_regions,
    draw_overlay,
    find_polyps,
    locate_polyps,
    probability_to_mask,
)


def test_boxes_are_exact_for_known_regions() -> None:
    mask = np.zeros((50, 60), bool)
    mask[5:15, 10:30] = True  # 20 wide, 10 high at (10, 5)
    mask[30:41, 40:43] = True  # 3 wide, 11 high at (40, 30)
    prob = np.where(mask, 0.9, 0.1).astype(np.float32)
    polyps = find_polyps(mask, prob)
    assert [(p.box, p.area) for p in polyps] == [((10, 5, 20, 10), 200), ((40, 30, 3, 11), 33)]
    assert polyps[0].score == pytest.approx(0.9)


def test_score_is_mean_probability_inside_region() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True
    prob = np.zeros((10, 10), np.float32)
    prob[2:4, 2:4] = [[0.6, 0.8], [0.7, 0.9]]
    assert find_polyps(mask, prob)[0].score == pytest.approx(0.75)


def test_diagonal_pixels_are_one_region_and_small_regions_are_dropped() -> None:
    mask = np.zeros((10, 10), bool)
    mask[1, 1] = mask[2, 2] = True  # 8-connected: one region of 2
    mask[7, 7] = True  # one pixel alone
    prob = mask.astype(np.float32)
    assert [p.box for p in find_polyps(mask, prob)] == [(1, 1, 2, 2), (7, 7, 1, 1)]
    assert [p.box for p in find_polyps(mask, prob, min_area=2)] == [(1, 1, 2, 2)]


def test_regions_under_the_score_floor_are_not_polyps() -> None:
    # 0.75 and 0.875 are exact in float32 and float64: the floor's comparison is what is tested
    mask = np.zeros((10, 10), bool)
    mask[0:2, 0:2] = mask[6:9, 6:9] = True
    prob = np.where(mask, 0.75, 0.0).astype(np.float32)
    prob[6:9, 6:9] = 0.875
    assert [p.box for p in find_polyps(mask, prob, min_score=0.8)] == [(6, 6, 3, 3)]
    assert [p.box for p in find_polyps(mask, prob, min_score=0.75)] == [(6, 6, 3, 3), (0, 0, 2, 2)]  # inclusive
    assert find_polyps(mask, prob, min_score=0.9) == []


def test_empty_mask_has_no_polyps() -> None:
    mask = np.zeros((8, 8), bool)
    assert find_polyps(mask, mask.astype(np.float32)) == []


def test_polyps_found_at_model_resolution_are_reported_in_frame_pixels() -> None:
    # Given a 40×20 model map with one region of 10×5 model pixels at (8, 4), for a 400×100 frame
    prob = np.zeros((20, 40), np.float32)
    prob[4:9, 8:18] = 0.8
    [polyp] = locate_polyps(prob, 400, 100, 0.5)
    # then its box and area are scaled by 10 across and 5 down; the score is the model's
    assert polyp.box == (80, 20, 100, 25)
    assert polyp.area == 50 * 50
    assert polyp.score == pytest.approx(0.8)


def test_located_boxes_stay_inside_the_frame_and_keep_the_rules() -> None:
    prob = np.zeros((16, 16), np.float32)
    prob[10:16, 13:16] = 0.9  # touches the bottom-right corner
    prob[0, 0] = 0.9  # one model pixel: 1/256 of the frame, kept only without the noise rule
    prob[0:3, 4:7] = 0.6  # under a 0.7 score floor
    polyps = locate_polyps(prob, 50, 30, 0.5, min_area_fraction=0.01, min_score=0.7)
    assert [p.box for p in polyps] == [(41, 19, 9, 11)]
    assert len(locate_polyps(prob, 50, 30, 0.5, min_area_fraction=0.0)) == 3
    # at the model's own size nothing is scaled: boxes and areas in model pixels
    unscaled = locate_polyps(prob, 16, 16, 0.5, min_area_fraction=0.0)
    assert [(p.box, p.area) for p in unscaled] == [((13, 10, 3, 6), 18), ((4, 0, 3, 3), 9), ((0, 0, 1, 1), 1)]


def test_probability_is_resized_to_the_frame_before_thresholding() -> None:
    prob = np.zeros((4, 4), np.float32)
    prob[:2, :2] = 1.0
    mask, full = probability_to_mask(prob, 8, 8, 0.5)
    assert mask.shape == full.shape == (8, 8)
    assert mask[:3, :3].all() and not mask[5:, :].any() and not mask[:, 5:].any()


def polyp(x: int, y: int, w: int = 10, h: int = 10) -> Polyp:
    return Polyp(box=(x, y, w, h), score=0.9, area=w * h)


def test_tracker_keeps_ids_for_moving_polyps_and_numbers_new_ones() -> None:
    tracker = IouTracker(iou_threshold=0.3, max_missed=1)
    first = tracker.update([polyp(0, 0), polyp(50, 50)])
    assert [p.track_id for p in first] == [1, 2]
    moved = tracker.update([polyp(52, 51), polyp(1, 1), polyp(100, 0)])
    assert [p.track_id for p in moved] == [2, 1, 3]


def test_tracker_survives_short_gaps_and_forgets_long_ones() -> None:
    tracker = IouTracker(iou_threshold=0.3, max_missed=1)
    tracker.update([polyp(0, 0)])
    tracker.update([])  # missed once: kept
    assert tracker.update([polyp(0, 0)])[0].track_id == 1
    tracker.update([])
    tracker.update([])  # missed twice: forgotten
    assert tracker.update([polyp(0, 0)])[0].track_id == 2


def test_overlay_marks_mask_and_box_without_touching_the_input() -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:20, 10:20] = True
    out = draw_overlay(image, mask, [Polyp((10, 10, 10, 10), 0.9, 100, 1)])
    assert out.shape == image.shape and not image.any()
    assert out[15, 15, 1] > 0  # tinted green inside the mask
    assert out[30, 30].sum() == 0  # untouched far away


def test_a_polyp_moving_steadily_keeps_its_id_as_its_track_follows_it() -> None:
    # 2 px a frame: IoU 0.67 with the previous frame's box, but under 0.3 with the first one
    # from frame 4 on; a track that kept its first box would lose the polyp there.
    tracker = IouTracker(iou_threshold=0.3, max_missed=5)
    ids = [tracker.update([polyp(2 * k, 0)])[0].track_id for k in range(20)]
    assert ids == [1] * 20


def test_two_polyps_never_share_a_track_id() -> None:
    tracker = IouTracker(iou_threshold=0.3, max_missed=5)
    assert [p.track_id for p in tracker.update([polyp(0, 0)])] == [1]
    # both overlap the one track: the closer takes its id, the other is a new polyp
    split = tracker.update([polyp(0, 3), polyp(1, 0)])
    assert [p.track_id for p in split] == [2, 1]
    assert [p.track_id for p in tracker.update([polyp(0, 3), polyp(1, 0)])] == [2, 1]


def test_a_regions_score_counts_its_own_pixels_only() -> None:
    # An L-shaped region (0.75) whose box also holds background (0.25, under the threshold)
    # and a separate blob (1.0): the L's score is 0.75, whatever else lies inside its box.
    prob = np.full((10, 10), 0.25, np.float32)
    prob[0:6, 0] = prob[5, 0:6] = 0.75  # the L: 11 pixels, box (0, 0, 6, 6)
    prob[1:3, 3:5] = 1.0  # the blob, inside the L's box
    polyps = find_polyps(prob > 0.5, prob)
    assert [(p.box, p.area, p.score) for p in polyps] == [((0, 0, 6, 6), 11, 0.75), ((3, 1, 2, 2), 4, 1.0)]


def test_the_threshold_is_exclusive_at_the_models_and_the_frames_resolution() -> None:
    prob = np.zeros((4, 4), np.float32)
    prob[0:2, 0:2] = 0.5  # exactly the threshold: not polyp
    prob[2:4, 2:4] = 0.75
    assert [p.box for p in locate_polyps(prob, 4, 4, 0.5, min_area_fraction=0.0)] == [(2, 2, 2, 2)]
    mask, _ = probability_to_mask(prob, 4, 4, 0.5)
    assert mask.sum() == 4 and mask[2:, 2:].all()


def test_a_probability_map_larger_than_the_frame_is_scaled_down() -> None:
    prob = np.zeros((8, 8), np.float32)
    prob[4:8, 4:8] = 1.0
    mask, full = probability_to_mask(prob, 4, 4, 0.5)
    assert mask.shape == full.shape == (4, 4) and mask[2:, 2:].all() and mask.sum() == 4


def test_boxes_of_a_map_finer_than_the_frame_stay_inside_it_and_at_least_a_pixel() -> None:
    # A 16x16 map for an 8x8 frame (scale 0.5): one-pixel regions at (3, 3) and (15, 15).
    # (3, 3) spans frame x 1.5..2.0, rounded to 2..2: a box must still be one pixel wide.
    # (15, 15) spans 7.5..8.0, rounded to 8..8: clamped into the frame at 7.
    prob = np.zeros((16, 16), np.float32)
    prob[3, 3] = prob[15, 15] = 1.0
    polyps = locate_polyps(prob, 8, 8, 0.5, min_area_fraction=0.0)
    assert [(p.box, p.area) for p in polyps] == [((2, 2, 1, 1), 1), ((7, 7, 1, 1), 1)]


def test_the_default_tracker_keeps_a_track_five_frames_unseen_and_forgets_it_on_the_sixth() -> None:
    # The README's rule: a track survives 5 frames unseen. Counted from when it was first
    # seen, and again from each frame it was seen in.
    tracker = IouTracker()
    assert tracker.update([polyp(0, 0)])[0].track_id == 1
    for _ in range(5):
        tracker.update([])
    assert tracker.update([polyp(0, 0)])[0].track_id == 1  # seen again after 5 unseen frames
    for _ in range(5):
        tracker.update([])
    assert tracker.update([polyp(0, 0)])[0].track_id == 1  # and again: the count restarted when seen
    for _ in range(6):
        tracker.update([])
    assert tracker.update([polyp(0, 0)])[0].track_id == 2  # 6 unseen: a new polyp


def test_a_track_seen_once_is_forgotten_after_six_unseen_frames() -> None:
    tracker = IouTracker()
    tracker.update([polyp(0, 0)])
    for _ in range(6):
        tracker.update([])
    assert tracker.update([polyp(0, 0)])[0].track_id == 2


def test_the_default_tracker_matches_boxes_overlapping_by_iou_point_three() -> None:
    tracker = IouTracker()
    tracker.update([polyp(0, 0, 10, 10)])
    assert tracker.update([polyp(0, 0, 10, 33)])[0].track_id == 1  # IoU 100/330 = 0.303
    tracker = IouTracker()
    tracker.update([polyp(0, 0, 10, 10)])
    assert tracker.update([polyp(0, 0, 10, 34)])[0].track_id == 2  # IoU 100/340 = 0.294


def test_connected_regions_gives_each_region_s_box_and_area() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:5, 3:9] = True  # 3 x 6
    mask[10, 20] = True  # one pixel
    mask[11, 21] = True  # touching it diagonally: the same 8-connected region
    count, labels, stats = connected_regions(mask)
    assert count == 3  # the background and two regions
    assert sorted(tuple(int(v) for v in row) for row in stats[1:]) == [(3, 2, 6, 3, 18), (20, 10, 2, 2, 2)]
    assert labels.dtype == np.uint16 and labels[3, 4] != labels[10, 20] == labels[11, 21] != 0


def test_connected_regions_uses_32_bit_labels_where_16_could_overflow() -> None:
    # The most regions a mask can have: single pixels every other row and column
    def checkerboard(size: int) -> np.ndarray:
        mask = np.zeros((size, size), dtype=bool)
        mask[::2, ::2] = True
        return mask

    count, labels, _ = connected_regions(checkerboard(510))  # 255² regions: 16 bits hold them
    assert (count, labels.dtype) == (255 * 255 + 1, np.uint16)
    count, labels, _ = connected_regions(checkerboard(512))  # 256² regions and the background: 16 bits do not
    assert (count, labels.dtype) == (256 * 256 + 1, np.int32)
    assert int(labels.max()) == 256 * 256
