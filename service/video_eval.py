"""Video evaluation: what a CADe study reports, per polyp and per minute, for a model and an alert rule.

Ground truth is per-frame polyp boxes. Ground-truth *polyps* are the boxes linked across frames
by nearness (see `truth_polyps`; a polyp unseen for up to 5 frames keeps its identity). What
counts is what a monitor shows: the boxes of alerting polyps and of held alerts (alerts.py),
matched one-to-one to ground-truth boxes at IoU >= 0.5 (BOX_IOU).

- per-frame sensitivity: ground-truth boxes matched by a shown box / ground-truth boxes;
- per-frame precision: shown boxes matched / shown boxes;
- per-polyp sensitivity: ground-truth polyps matched in at least one frame / polyps;
- first-detection delay of a detected polyp: frames (and ms) from its first ground-truth frame
  to the first frame it is matched;
- false-positive activation: an alert (its start to its end) none of whose shown boxes
  overlaps (IoU > 0) any ground-truth box of the same frame; also per minute of video.

Pure: no model, no files (readers and the model run are in video_sources.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .alerts import RAW, AlertRule, Alerts
from .frames import Polyp
from .scores import BOX_IOU, Box, box_iou, greedy_match

TRUTH_LINK_REACH = 1.5
TRUTH_LINK_GAP = 5


@dataclass
class VideoTally:
    """Counts over one or more videos; `add` more videos, then `report`."""

    frames: int = 0
    seconds: float = 0.0
    truth_boxes: int = 0
    truth_boxes_found: int = 0
    shown_boxes: int = 0
    shown_boxes_right: int = 0
    polyps: int = 0
    polyps_found: int = 0
    delays_frames: list[int] = field(default_factory=list)
    delays_ms: list[float] = field(default_factory=list)
    activations: int = 0
    fp_activations: int = 0

    def merge(self, other: VideoTally) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(other, name)
            setattr(self, name, getattr(self, name) + value)

    def per_polyp_sensitivity(self) -> float:
        return self.polyps_found / self.polyps if self.polyps else 0.0

    def median_delay_ms(self) -> float:
        return float(np.median(self.delays_ms)) if self.delays_ms else float("inf")

    def fp_per_minute(self) -> float:
        return self.fp_activations / (self.seconds / 60) if self.seconds else 0.0

    def report(self) -> dict[str, object]:
        minutes = self.seconds / 60

        def share(part: int, whole: int) -> float | None:
            return round(part / whole, 4) if whole else None

        def summary(values: Sequence[float]) -> dict[str, float | None]:
            if not values:
                return {"median": None, "p90": None, "max": None}
            a = np.asarray(values, dtype=float)
            return {
                "median": round(float(np.median(a)), 1),
                "p90": round(float(np.percentile(a, 90)), 1),
                "max": round(float(a.max()), 1),
            }

        return {
            "frames": self.frames,
            "minutes": round(minutes, 3),
            "polyps": self.polyps,
            "polyps_found": self.polyps_found,
            "per_frame_sensitivity": share(self.truth_boxes_found, self.truth_boxes),
            "per_frame_precision": share(self.shown_boxes_right, self.shown_boxes),
            "per_polyp_sensitivity": share(self.polyps_found, self.polyps),
            "first_detection_frames": summary(self.delays_frames),
            "first_detection_ms": summary(self.delays_ms),
            "activations": self.activations,
            "fp_activations": self.fp_activations,
            "fp_per_minute": round(self.fp_activations / minutes, 3) if minutes else None,
        }


def truth_polyps(truth: Sequence[Sequence[Box]]) -> list[list[int]]:
    """Per frame, the ground-truth polyp id of each of its boxes: a box continues the polyp
    whose last box (seen within TRUTH_LINK_GAP frames) is nearest, if their centres are within
    TRUTH_LINK_REACH times the larger box's longer side (an endoscope moves a polyp tens of
    pixels a frame, so boxes of one polyp need not overlap), nearest pairs first."""
    last: dict[int, tuple[Box, int]] = {}  # polyp id -> (last box, frame)
    ids: list[list[int]] = []
    next_id = 1
    for index, boxes in enumerate(truth):
        live = {pid: box for pid, (box, seen) in last.items() if index - seen <= TRUTH_LINK_GAP + 1}
        pairs = sorted((_reach(previous, box), pid, j) for pid, previous in live.items() for j, box in enumerate(boxes))
        taken_ids: set[int] = set()
        assigned: dict[int, int] = {}
        for reach, pid, j in pairs:
            if reach > TRUTH_LINK_REACH:
                break
            if pid not in taken_ids and j not in assigned:
                taken_ids.add(pid)
                assigned[j] = pid
        frame_ids = []
        for j, box in enumerate(boxes):
            if j not in assigned:
                assigned[j], next_id = next_id, next_id + 1
            last[assigned[j]] = (box, index)
            frame_ids.append(assigned[j])
        ids.append(frame_ids)
    return ids


def _reach(a: Box, b: Box) -> float:
    """Distance between the boxes' centres, in units of the larger box's longer side."""
    dx = (a[0] + a[2] / 2) - (b[0] + b[2] / 2)
    dy = (a[1] + a[3] / 2) - (b[1] + b[3] / 2)
    return float(np.hypot(dx, dy)) / max(a[2], a[3], b[2], b[3], 1)


def score_video(
    tracked: Sequence[Sequence[Polyp] | None],
    truth: Sequence[Sequence[Box]],
    fps: float,
    rule: AlertRule,
    *,
    by_index: bool = True,
) -> VideoTally:
    """The tally of one video: its model's tracked polyps per frame under `rule`, against its
    ground-truth boxes per frame (the same number of frames). A frame of None was not looked
    at (skipped or dropped): it has no answer to score, and the rule counts it as time passing
    (`Alerts.update` with the frame's index), or, with `by_index` false, not at all (as the
    service did before 2026-11-28: its rule counted only the frames it looked at)."""
    if len(tracked) != len(truth):
        raise ValueError(f"{len(tracked)} frames of predictions for {len(truth)} frames of ground truth")
    tally = VideoTally(frames=len(truth), seconds=len(truth) / fps)
    polyp_ids = truth_polyps(truth)
    first_seen: dict[int, int] = {}
    first_found: dict[int, int] = {}
    alerts = Alerts(rule)
    open_alerts: dict[int, bool] = {}  # track id -> whether its alert has overlapped a true box yet
    for index, (polyps, boxes, ids) in enumerate(zip(tracked, truth, polyp_ids, strict=True)):
        for polyp_id in ids:
            first_seen.setdefault(polyp_id, index)
        if polyps is None:
            continue
        frame = alerts.update(polyps, index if by_index else None)
        for event in frame.events:
            if event.kind == "start":
                open_alerts[event.track_id] = False
                tally.activations += 1
            elif not open_alerts.pop(event.track_id):
                tally.fp_activations += 1
        shown = frame.shown
        for polyp in shown:
            if polyp.track_id in open_alerts and any(box_iou(polyp.box, box) > 0 for box in boxes):
                open_alerts[polyp.track_id] = True
        matches = greedy_match([p.box for p in shown], list(boxes), BOX_IOU)
        tally.truth_boxes += len(boxes)
        tally.truth_boxes_found += len(matches)
        tally.shown_boxes += len(shown)
        tally.shown_boxes_right += len(matches)
        for truth_index in matches.values():
            first_found.setdefault(ids[truth_index], index)
    tally.fp_activations += sum(not overlapped for overlapped in open_alerts.values())  # still open at the end
    tally.polyps, tally.polyps_found = len(first_seen), len(first_found)
    for polyp_id, found_at in first_found.items():
        frames = found_at - first_seen[polyp_id]
        tally.delays_frames.append(frames)
        tally.delays_ms.append(frames * 1000 / fps)
    return tally


def sweep_rules() -> list[AlertRule]:
    """The alert rules a sweep compares: raw reporting, then N of M frames held H."""
    rules = [RAW]
    for min_seen in (2, 3, 4, 5, 6, 8):
        for window in (min_seen, min_seen + 2):
            for hold in (0, 2, 4):
                rules.append(AlertRule(min_seen, window, hold))
    return rules


def choose_rule(rows: Sequence[tuple[AlertRule, VideoTally]], max_delay_ms: float = 200.0) -> AlertRule:
    """The rule fixed before looking at any result: among the rules that lose at most 2 points
    of per-polyp sensitivity against raw reporting (the first row) and keep the median
    first-detection delay within `max_delay_ms`, the one with the fewest false-positive
    activations per minute; ties go to the shorter delay, then to the smaller N."""
    floor = rows[0][1].per_polyp_sensitivity() - 0.02
    eligible = [
        (rule, tally)
        for rule, tally in rows
        if tally.per_polyp_sensitivity() >= floor and tally.median_delay_ms() <= max_delay_ms
    ]
    if not eligible:
        return rows[0][0]
    best = min(eligible, key=lambda row: (row[1].fp_per_minute(), row[1].median_delay_ms(), row[0].min_seen))
    return best[0]
