"""benchmarks.alert_rates on two tiny stand-in corpora: what it compares is what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.alert_rates import main
from tests.conftest import KVASIR_FIXTURES


def corpus(folder: Path, fps: int) -> Path:
    command = ["corpus", str(folder), "--from", str(KVASIR_FIXTURES), "--videos", "2", "--seconds", "0.4"]
    done = subprocess.run(
        [sys.executable, "-m", "polypstream", *command, "--fps", str(fps), "--seed", "3"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return folder


def test_rules_are_scored_scaled_and_in_own_frames_from_one_run_of_the_model(tmp_path: Path) -> None:
    c25, c50 = corpus(tmp_path / "c25", 25), corpus(tmp_path / "c50", 50)
    out = tmp_path / "rates.json"
    assert main(["--model", "fast", "--corpus", str(c25), "--corpus", str(c50), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["command"].endswith(f"--corpus={c25} --corpus={c50} --out {out}")
    at25, at50 = report["corpora"]
    frames = [
        sum(len(json.loads(p.read_text())["frames"]) for p in (c / "ground-truth").glob("*.json")) for c in (c25, c50)
    ]
    assert (at25["fps"], at25["videos"], at25["frames"]) == (25.0, 2, frames[0])
    assert (at50["fps"], at50["videos"], at50["frames"]) == (50.0, 2, frames[1])
    # At the rules' own rate scaling changes nothing; raw reporting is raw at any rate.
    assert at25["scaled"] == at25["own_frames"]
    assert at50["scaled"]["sweep"][0] == at50["own_frames"]["sweep"][0]
    assert at50["scaled"]["sweep"][0]["rule"] == {"min_seen": 1, "window": 1, "hold": 0}
    # Rows are named by the rule as chosen (at 25 fps) in both ways, the model's own among them.
    assert [r["rule"] for r in at50["scaled"]["sweep"]] == [r["rule"] for r in at50["own_frames"]["sweep"]]
    assert at50["scaled"]["model_rule"]["rule"] == {"min_seen": 2, "window": 2, "hold": 4}
