"""eval end to end on the fixtures (the metrics themselves: test_scores.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from polypstream.evaluate import evaluate
from polypstream.runner import Runner
from tests.conftest import KVASIR_FIXTURES


def drawn_dataset(folder: Path) -> Path:
    """Two 64x64 PNG images of white rectangles on black (what the tiny model segments
    exactly, at its own input size), with masks and boxes whose scores are known by hand."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    a, a_mask = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)
    a[10:30, 10:30] = 255  # predicted: 400 px, box (10, 10, 20, 20)
    a_mask[10:20, 10:30] = 255  # truth: its top half, 200 px, box (10, 10, 20, 10): IoU 0.5
    b, b_mask = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)
    b[40:50, 40:50] = 255
    b_mask[40:50, 40:50] = 255  # exact, and a second polyp in the truth that nothing found
    for name, image, mask in (("a", a, a_mask), ("b", b, b_mask)):
        cv2.imwrite(str(folder / "images" / f"{name}.png"), image)
        cv2.imwrite(str(folder / "masks" / f"{name}.png"), mask)
    boxes = {
        "a": [(10, 10, 30, 20)],
        "b": [(40, 40, 50, 50), (0, 0, 5, 5)],
    }
    (folder / "kavsir_bboxes.json").write_text(json.dumps({
        name: {"height": 64, "width": 64, "bbox": [
            {"label": "polyp", "xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1} for x0, y0, x1, y1 in rects
        ]} for name, rects in boxes.items()
    }))  # fmt: skip
    return folder


# a: Dice 2*200/600, IoU 200/400, precision 200/400, recall 1; b: all 1. Boxes: 2 of 2 found
# boxes are right, 2 of 3 polyps found.
DRAWN_SCORES = {
    "dice": (2 / 3 + 1) / 2, "iou": (0.5 + 1) / 2, "precision": (0.5 + 1) / 2, "recall": 1.0,
    "box_precision": 1.0, "box_recall": 2 / 3, "images": 2,
}  # fmt: skip


def test_eval_scores_hand_made_images_exactly(tiny_model: Path, tmp_path: Path) -> None:
    scores = evaluate(Runner(tiny_model, device="cpu", max_batch=1), drawn_dataset(tmp_path / "drawn"))
    assert scores == pytest.approx(DRAWN_SCORES)


def test_eval_cli_prints_json(tiny_model: Path, tmp_path: Path) -> None:
    command = ["eval", "--data", str(drawn_dataset(tmp_path / "drawn")), "--model", str(tiny_model), "--json"]
    done = subprocess.run([sys.executable, "-m", "polypstream", *command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert {key: scores[key] for key in DRAWN_SCORES} == pytest.approx(DRAWN_SCORES)
    assert (scores["model"], scores["interrupted"]) == ("tiny-brightness", False)


def test_box_metrics_are_not_measured_without_ground_truth_boxes(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "no-boxes"
    shutil.copytree(KVASIR_FIXTURES, data, ignore=shutil.ignore_patterns("kavsir_bboxes.json"))
    command = ["eval", "--data", str(data), "--model", str(tiny_model)]
    done = subprocess.run([sys.executable, "-m", "polypstream", *command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "  box_precision  not measured (no ground-truth boxes in the data)" in done.stdout.splitlines()
    assert "  box_recall     not measured (no ground-truth boxes in the data)" in done.stdout.splitlines()
    scores = evaluate(Runner(tiny_model, device="cpu", max_batch=3), data)
    assert (scores["box_precision"], scores["box_recall"]) == (None, None)
