"""Choosing how a model's inputs are shrunk: the rule on validation scores, and the choice
written into the model, where the service reads it."""

from __future__ import annotations

from pathlib import Path

from benchmarks.gpu_first_light import ALONE_RESIZE
from models.training.choose_resize import choose_resize
from models.training.tune_regions import write_metadata
from polypstream.runner import CHECKSUMS, Runner, file_sha256, models_dir, resolve_model
from tests.tiny_model import build_tiny_model


def scores(dice: float, precision: float = 0.8, recall: float = 0.8) -> dict[str, float | int | None]:
    return {"dice": dice, "box_precision": precision, "box_recall": recall, "images": 10}


def test_linear_is_chosen_only_when_dice_drops_less_than_a_thousandth_and_no_box_score_drops() -> None:
    assert choose_resize({"area": scores(0.5), "linear": scores(0.4995)}) == "linear"
    assert choose_resize({"area": scores(0.5), "linear": scores(0.51)}) == "linear"  # better
    assert choose_resize({"area": scores(0.5), "linear": scores(0.499)}) == "area"  # a thousandth
    assert choose_resize({"area": scores(0.5), "linear": scores(0.5, precision=0.79)}) == "area"
    assert choose_resize({"area": scores(0.5), "linear": scores(0.5, recall=0.79)}) == "area"


def test_the_choice_is_written_into_the_model_and_its_checksum(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "m.onnx")
    assert Runner(model, device="cpu").contract.resize == "area"  # none written: averaging
    write_metadata(model, "resize", "linear")
    assert Runner(model, device="cpu").contract.resize == "linear"
    assert (tmp_path / CHECKSUMS).read_text() == f"{file_sha256(model)}  m.onnx\n"


def test_the_shipped_models_shrink_as_chosen_and_the_service_alone_sweep_as_accurate_does() -> None:
    assert Runner(resolve_model("accurate"), device="cpu").contract.resize == "linear" == ALONE_RESIZE
    assert Runner(models_dir() / "accurate-fp16.onnx", device="cpu").contract.resize == "linear"
    assert Runner(resolve_model("fast"), device="cpu").contract.resize == "area"
