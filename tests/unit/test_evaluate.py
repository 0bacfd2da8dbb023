"""eval end to end on the fixtures (the metrics themselves: test_scores.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polypstream.evaluate import evaluate
from polypstream.runner import Runner
from tests.conftest import KVASIR_FIXTURES, drawn_dataset

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
