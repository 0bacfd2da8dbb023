"""Metrics on hand-made masks (exact values) and eval end to end on the fixtures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from polypstream.evaluate import evaluate
from polypstream.runner import Runner
from polypstream.scores import mask_scores, match_boxes
from tests.conftest import KVASIR_FIXTURES


def test_mask_scores_exact_values() -> None:
    pred = np.zeros((10, 10), bool)
    truth = np.zeros((10, 10), bool)
    pred[0:4, 0:5] = True  # 20 px
    truth[2:6, 0:5] = True  # 20 px, overlap rows 2-3: 10 px
    s = mask_scores(pred, truth)
    assert s.dice == pytest.approx(20 / 40)
    assert s.iou == pytest.approx(10 / 30)
    assert s.precision == pytest.approx(10 / 20)
    assert s.recall == pytest.approx(10 / 20)


def test_mask_scores_empty_cases() -> None:
    empty = np.zeros((4, 4), bool)
    full = np.ones((4, 4), bool)
    assert mask_scores(empty, empty) == mask_scores(full, full)
    assert mask_scores(empty, empty).dice == 1.0
    missed = mask_scores(empty, full)  # nothing predicted on a polyp
    assert (missed.dice, missed.iou, missed.precision, missed.recall) == (0.0, 0.0, 0.0, 0.0)
    false_alarm = mask_scores(full, empty)
    assert (false_alarm.dice, false_alarm.precision, false_alarm.recall) == (0.0, 0.0, 0.0)


def test_box_matching_is_one_to_one_at_iou_half() -> None:
    truth = [(0, 0, 10, 10), (50, 50, 10, 10)]
    assert match_boxes([(0, 0, 10, 10), (1, 1, 10, 10)], truth) == 1  # two predictions, one polyp
    assert match_boxes([(0, 0, 10, 20)], truth) == 1  # IoU exactly 0.5 counts
    assert match_boxes([(0, 0, 10, 21)], truth) == 0
    assert match_boxes([], truth) == 0


def test_eval_on_fixtures_with_the_tiny_model(tiny_model: Path) -> None:
    scores = evaluate(Runner(tiny_model, device="cpu", max_batch=3), KVASIR_FIXTURES, KVASIR_FIXTURES / "test.txt")
    assert scores["images"] == 4
    for key in ("dice", "iou", "precision", "recall", "box_precision", "box_recall"):
        assert 0.0 <= scores[key] <= 1.0


def test_eval_cli_prints_json(tiny_model: Path) -> None:
    command = ["eval", "--data", str(KVASIR_FIXTURES), "--model", str(tiny_model), "--json"]
    done = subprocess.run([sys.executable, "-m", "polypstream", *command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert {"dice", "iou", "precision", "recall", "box_precision", "box_recall", "images"} <= set(scores)
    assert scores["images"] == 4


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
