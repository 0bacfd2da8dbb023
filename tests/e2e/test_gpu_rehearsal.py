"""The training commands, rehearsed on the CPU with tiny budgets: the accurate model's GPU run
(models/training/gpu_run.py: same command, same code path, same outputs) and the CPU recipe
(models/training/train.py). Needs torch (CI installs the CPU build)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from polypstream.runner import Runner, read_checksums
from tests.conftest import KVASIR_FIXTURES

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[2]


def module(*args: str) -> None:
    """`python -m ARGS` from the repository root; it must succeed."""
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def fixture_train_split(tmp_path: Path) -> Path:
    """A Kvasir-SEG layout folder of the fixture images, all of them in train.txt."""
    data = tmp_path / "kvasir"
    for folder in ("images", "masks"):
        shutil.copytree(KVASIR_FIXTURES / folder, data / folder)
    (data / "train.txt").write_text("\n".join(p.stem for p in sorted((data / "images").iterdir())) + "\n")
    return data


def test_the_gpu_run_trains_exports_checks_tunes_and_writes_everything_to_one_folder(tmp_path: Path) -> None:
    data = fixture_train_split(tmp_path)
    cache, out = tmp_path / "cache.npz", tmp_path / "out"
    module("models.training.cache", "--data", str(data), "--out", str(cache), "--size", "32", "--splits", "train")
    module(
        "models.training.gpu_run", "--cache", str(cache), "--out", str(out), "--size", "32", "--widths", "4,8",
        "--batch", "2", "--val", "1", "--budget-s", "30", "--reserve-s", "26", "--ema", "0.9", "--timing-repeats", "2",
    )  # fmt: skip

    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS", "accurate-fp16.onnx", "accurate.onnx", "accurate.pt", "accurate.training.json",
        "accurate.val-ids.txt",
    ]  # fmt: skip
    assert set(read_checksums(out)) == {"accurate.onnx", "accurate-fp16.onnx"}
    model = Runner(out / "accurate.onnx", device="cpu", max_batch=2)
    c = model.contract
    assert (c.name, c.input_width, c.input_height, c.output) == ("polyp-unet-accurate", 32, 32, "probability")
    exported = onnx.load(str(out / "accurate.onnx"))
    metadata = {p.key: p.value for p in exported.metadata_props}
    assert "polypstream.min_region_score" in metadata  # the floor chosen on the validation images
    assert not {"Shape", "Gather"} & {n.op_type for n in exported.graph.node}  # upsampling factors fixed
    assert model.run([model.preprocess(np.zeros((40, 50, 3), np.uint8))]).shape == (1, 32, 32)
    half = Runner(out / "accurate-fp16.onnx", device="cpu", max_batch=2)
    assert half.contract.version.endswith("-fp16")
    record = json.loads((out / "accurate.training.json").read_text())
    assert record["train_images"] == 3 and record["val_images"] == 1 and record["epochs_run"] >= 1
    assert record["val_onnxruntime"]["images"] == 1 and "val" in record["fp16"]
    (by_size,) = record["val_dice_by_extent"]  # one validation image: one group, its own Dice
    assert by_size["images"] == 1 and isinstance(by_size["images"], int)
    assert by_size["extent_from"] == by_size["extent_to"] > 0
    assert by_size["dice"] == round(record["val_onnxruntime"]["dice"], 4)
    assert 0 <= record["val_dice_torch_hflip"] <= 1
    assert set(record["torch_inference_ms"]["fp32"]) == {"1", "32"}  # on CUDA, fp16_autocast too
    # training stops after the first epoch that passes its share of the budget
    assert all(epoch["seconds"] <= record["train_budget_s"] for epoch in record["history"][:-1])
    val_ids = (out / "accurate.val-ids.txt").read_text().split()
    assert len(val_ids) == 1 and val_ids[0] in (data / "train.txt").read_text().split()


def test_the_recipe_search_trains_each_recipe_and_keeps_the_best_on_the_validation_images(tmp_path: Path) -> None:
    data = fixture_train_split(tmp_path)
    cache, out, work = tmp_path / "cache.npz", tmp_path / "out", tmp_path / "work"
    module("models.training.cache", "--data", str(data), "--out", str(cache), "--size", "32", "--splits", "train")
    # The recipes the device call runs (the default ones), their networks as they are, on tiny images.
    tiny = "--size 32 --batch 2 --val 1 --reserve-s 26 --ema 0.9 --timing-repeats 2"
    module(
        "models.training.gpu_search", "--cache", str(cache), "--out", str(out), "--work", str(work),
        "--budget-s", "30", "--extra", tiny,
    )  # fmt: skip

    search = json.loads((out / "search.json").read_text())
    recipes = search["recipes"]
    assert sorted(recipes) == ["deep", "deep-multiscale"] and all(r["exit"] == 0 for r in recipes.values())
    arguments = {name: " ".join(r["arguments"]) for name, r in recipes.items()}
    assert "--scales" in arguments["deep-multiscale"] and "--scales" not in arguments["deep"]
    assert all("--widths 16,32,64,96,160,192" in a for a in arguments.values())
    assert all(sum(g["images"] for g in r["val_dice_by_extent"]) == 1 for r in recipes.values())
    winner = search["winner"]
    assert recipes[winner]["val_dice_onnxruntime"] == max(r["val_dice_onnxruntime"] for r in recipes.values())
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS", "accurate-fp16.onnx", "accurate.onnx", "accurate.pt", "accurate.training.json",
        "accurate.val-ids.txt", "search.json",
    ]  # fmt: skip
    assert (out / "accurate.onnx").read_bytes() == (work / winner / "accurate.onnx").read_bytes()
    # one validation set for every recipe: the same seed draws the same images
    val_ids = {(work / name / "accurate.val-ids.txt").read_text() for name in recipes}
    assert len(val_ids) == 1
    assert set(read_checksums(out)) == {"accurate.onnx", "accurate-fp16.onnx"}


def test_the_recipe_search_refuses_a_recipe_it_does_not_know(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "models.training.gpu_search", "--cache", "c.npz", "--out", str(tmp_path / "o"),
         "--recipes", "base,bigger"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].endswith("unknown recipes: bigger")
    assert not (tmp_path / "o").exists()


def test_train_records_the_recipe_it_ran_and_its_validation_ids(tmp_path: Path) -> None:
    # The CPU recipe's command (models/README.md) with a tiny network: the record must say what
    # was asked (epochs, time budget, network options), not the preset's defaults.
    data = fixture_train_split(tmp_path)
    ids = (data / "train.txt").read_text().split()
    cache, out = tmp_path / "cache.npz", tmp_path / "out"
    module("models.training.cache", "--data", str(data), "--out", str(cache), "--size", "32", "--splits", "train")
    module(
        "models.training.train", "--cache", str(cache), "--preset", "fast", "--size", "32", "--widths", "4,8",
        "--half-res", "--light-ends", "--batch", "2", "--epochs", "2", "--minutes", "5", "--val", "1",
        "--threads", "1", "--out", str(out), "--version", "t",
    )  # fmt: skip
    record = json.loads((out / "fast.training.json").read_text())
    assert record["preset"]["epochs"] == 2 and record["epochs_run"] == 2
    assert record["preset"]["half_res"] is True and record["preset"]["light_ends"] is True
    assert record["preset"]["widths"] == [4, 8]
    assert record["budget_minutes"] == 5.0
    val_ids = (out / "fast.val-ids.txt").read_text().split()
    assert len(val_ids) == 1 and val_ids[0] in ids
    assert Runner(out / "fast.onnx", device="cpu", max_batch=1).contract.version == "t"


def test_distill_makes_a_smaller_input_model_held_out_on_the_teachers_validation_ids(tmp_path: Path) -> None:
    data = fixture_train_split(tmp_path)
    cache, teacher, out = tmp_path / "cache.npz", tmp_path / "teacher", tmp_path / "out"
    module("models.training.cache", "--data", str(data), "--out", str(cache), "--size", "64", "--splits", "train")
    module(
        "models.training.train", "--cache", str(cache), "--preset", "fast", "--size", "32", "--widths", "4,8",
        "--batch", "2", "--epochs", "1", "--val", "1", "--threads", "1", "--out", str(teacher), "--version", "t",
    )  # fmt: skip
    module(
        "models.training.distill", "--teacher", str(teacher / "fast.onnx"), "--cache", str(cache),
        "--val-ids", str(teacher / "fast.val-ids.txt"), "--size", "16", "--epochs", "2", "--minutes", "5",
        "--threads", "1", "--out", str(out), "--version", "small",
    )  # fmt: skip

    written = sorted(p.name for p in out.iterdir())
    assert written == ["SHA256SUMS", "fast.onnx", "fast.training.json", "fast.val-ids.txt"]
    student = Runner(out / "fast.onnx", device="cpu", max_batch=1)
    c = student.contract
    assert (c.name, c.version, c.input_width, c.input_height) == ("polyp-unet-fast", "small", 16, 16)
    assert student.run([student.preprocess(np.zeros((40, 50, 3), np.uint8))]).shape == (1, 16, 16)
    # the same held-out image as the teacher's: neither model trained on it
    assert (out / "fast.val-ids.txt").read_text() == (teacher / "fast.val-ids.txt").read_text()
    record = json.loads((out / "fast.training.json").read_text())
    assert (record["teacher_version"], record["preset"]["size"], record["preset"]["widths"]) == ("t", 16, [4, 8])
    assert [e["epoch"] for e in record["history"]] == [0, 1, 2]  # the start, then the epochs asked
    assert record["best_val_dice"] >= record["start_val_dice"]


def test_distill_refuses_validation_ids_the_cache_does_not_hold(tmp_path: Path) -> None:
    data = fixture_train_split(tmp_path)
    cache, teacher = tmp_path / "cache.npz", tmp_path / "teacher"
    module("models.training.cache", "--data", str(data), "--out", str(cache), "--size", "32", "--splits", "train")
    module(
        "models.training.train", "--cache", str(cache), "--preset", "fast", "--size", "32", "--widths", "4,8",
        "--batch", "2", "--epochs", "1", "--val", "1", "--threads", "1", "--out", str(teacher), "--version", "t",
    )  # fmt: skip
    (tmp_path / "ids.txt").write_text("not-an-id\n")
    done = subprocess.run(
        [sys.executable, "-m", "models.training.distill", "--teacher", str(teacher / "fast.onnx"),
         "--cache", str(cache), "--val-ids", str(tmp_path / "ids.txt"), "--size", "16", "--minutes", "0.001",
         "--out", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].endswith("1 ids are not in the cache's train split")
    assert not (tmp_path / "o").exists()
