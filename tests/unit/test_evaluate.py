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

from polypstream.dataset import DatasetError
from polypstream.evaluate import evaluate, read_as_served
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


def test_images_a_client_would_not_send_are_read_in_full(tmp_path: Path) -> None:
    # BMP: not a client format, so decoded in full, whatever the model's size; JPEG: as served.
    image = np.zeros((48, 64, 3), np.uint8)
    image[8:24, 16:48] = 255
    cv2.imwrite(str(tmp_path / "a.bmp"), image)
    decoded, size = read_as_served(tmp_path / "a.bmp", (16, 16))
    assert size == (64, 48) and decoded.shape == (48, 64, 3) and np.array_equal(decoded, image)
    cv2.imwrite(str(tmp_path / "a.jpg"), image)
    reduced, jpeg_size = read_as_served(tmp_path / "a.jpg", (16, 16))
    assert jpeg_size == (64, 48) and reduced.shape == (24, 32, 3)  # at 1/2: the smallest that covers 16x16


def test_an_image_that_cannot_be_read_is_a_dataset_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 20)
    with pytest.raises(DatasetError, match=r"broken\.jpg: truncated JPEG"):
        read_as_served(tmp_path / "broken.jpg", (16, 16))


def test_eval_scores_non_square_images_in_formats_a_client_would_not_send(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "bmp"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    image, mask = np.zeros((64, 96, 3), np.uint8), np.zeros((64, 96), np.uint8)
    image[10:30, 20:60] = 255  # predicted: 800 px
    mask[10:30, 20:40] = 255  # truth: its left half
    cv2.imwrite(str(data / "images" / "x.bmp"), image)
    cv2.imwrite(str(data / "masks" / "x.png"), mask)
    scores = evaluate(Runner(tiny_model, device="cpu", max_batch=1), data)
    assert (scores["dice"], scores["precision"], scores["recall"]) == pytest.approx((800 / 1200, 0.5, 1.0), abs=0.01)
