"""A short soak in CI (the long one is `python -m benchmarks.soak --minutes 10`)."""

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
