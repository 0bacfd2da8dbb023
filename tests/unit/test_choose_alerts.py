"""models.training.choose_alerts: the rule an eval-video sweep chose, written into that model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.training.choose_alerts import chosen_rule
from polypstream.alerts import AlertRule
from polypstream.runner import Runner
from tests.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def test_the_chosen_rule_is_taken_only_from_a_sweep_of_the_same_model() -> None:
    sweep = {"model": "m 2", "chosen_rule": {"min_seen": 4, "window": 4, "hold": 3}}
    assert chosen_rule(sweep, "m 2") == AlertRule(4, 4, 3)
    with pytest.raises(SystemExit, match=r"the sweep is of 'm 2', not of 'm 2-fp16'"):
        chosen_rule(sweep, "m 2-fp16")
    with pytest.raises(SystemExit, match="the sweep was interrupted: it chose no rule"):
        chosen_rule({"model": "m 2", "interrupted": True, "sweep": []}, "m 2")
    with pytest.raises(SystemExit, match="run eval-video with --sweep"):
        chosen_rule({"model": "m 2"}, "m 2")


def test_written_the_rule_is_the_models_own_and_its_checksum_is_updated(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "m.onnx")
    contract = Runner(model, device="cpu").contract
    sweep = tmp_path / "sweep.json"
    name = f"{contract.name} {contract.version}"
    sweep.write_text(json.dumps({"model": name, "chosen_rule": {"min_seen": 4, "window": 4, "hold": 3}}))
    done = subprocess.run(
        [sys.executable, "-m", "models.training.choose_alerts", "--model", str(model), "--sweep", str(sweep),
         "--write"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"chosen for {name}: 4 of 4 frames, held 3 (the model's now: None)"
    assert Runner(model, device="cpu").contract.alert_rule == AlertRule(4, 4, 3)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert (tmp_path / "SHA256SUMS").read_text() == f"{digest}  m.onnx\n"
