"""Benchmarks run short in CI: the soak (long: `python -m benchmarks.soak --minutes 10`) and compare."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_soak_loses_nothing(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "soak.json"
    command = ["--model", str(tiny_model), "--seconds", "6", "--streams", "3", "--fps", "15", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", *command], capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["lost"] == 0 and report["errors"] == []
    assert sum(report["answered"].values()) + report["abandoned"] == report["frames_sent"] > 100
    assert report["answered"]["OK"] > 0 and report["answered"]["INVALID_FRAME"] > 0  # bad frames were in the mix
    assert report["rss_mb"]["start"] > 0 and report["latency_over_time"]


def test_compare_prints_limit_naive_and_ours_with_ratios(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "compare.json"
    command = ["--model", str(tiny_model), "--videos", "2", "--seconds", "0.3", "--batches", "1,2"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", *command, "--limit-seconds", "0.3", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["ours"]["accounting"]["all_accounted"] is True and report["ours"]["videos"] == 2
    assert report["ratios"]["ours_over_limit"] > 0 and report["ratios"]["ours_over_naive"] > 0
    assert "ours/limit" in done.stdout
