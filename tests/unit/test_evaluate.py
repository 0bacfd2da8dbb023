"""eval end to end on the fixtures (the metrics themselves: test_scores.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from polypstream.evaluate import evaluate
from polypstream.runner import Runner
from tests.conftest import KVASIR_FIXTURES


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
