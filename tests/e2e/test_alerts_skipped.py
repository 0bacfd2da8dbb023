"""benchmarks.alerts_skipped on a tiny stand-in corpus: what it compares is what it says."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.alerts_skipped import PATTERNS, bursts, main, regular
from tests.e2e.test_alert_rates import corpus


def test_the_patterns_leave_out_the_frames_they_say() -> None:
    assert regular(3, 2)(7) == [True, True, False, True, True, False, True]
    assert regular(4, 1)(5) == [True, False, False, False, True]
    drawn = bursts(13)(400, 2)
    assert drawn == bursts(13)(400, 2) and drawn != bursts(13)(400, 3)  # per video, the same every run
    runs: list[tuple[bool, int]] = []
    for looked in drawn:
        if runs and runs[-1][0] == looked:
            runs[-1] = (looked, runs[-1][1] + 1)
        else:
            runs.append((looked, 1))
    inner = runs[1:-1]  # the last run is cut at the video's end
    assert drawn[0] and all(2 <= n <= 12 for seen, n in inner if seen)
    assert all(1 <= n <= 8 for seen, n in inner if not seen)


def test_every_rule_is_scored_both_ways_on_the_same_frames(tmp_path: Path) -> None:
    c25 = corpus(tmp_path / "c25", 25)
    out, cache = tmp_path / "skipped.json", tmp_path / "detections.json"
    assert main(["--model", "fast", "--corpus", str(c25), "--detections", str(cache), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    frames = sum(len(json.loads(p.read_text())["frames"]) for p in (c25 / "ground-truth").glob("*.json"))
    assert report["videos"] == 2 and [p["pattern"] for p in report["patterns"]] == list(PATTERNS)
    by_name = {p["pattern"]: p for p in report["patterns"]}
    looked = sum(i % 2 == 0 for n in video_frames(c25) for i in range(n))
    assert by_name["every 2nd"]["looked_at"] == round(looked / frames, 4)
    assert by_name["every frame"]["looked_at"] == 1.0
    # With every frame looked at the two ways are one rule; raw reporting is the same either way.
    assert by_name["every frame"]["by_index"] == by_name["every frame"]["looked_at_only"]
    # With every 2nd frame looked at they differ (3 of 3 held 4 alerts by index only, here).
    assert by_name["every 2nd"]["by_index"] != by_name["every 2nd"]["looked_at_only"]
    for pattern in report["patterns"]:
        raw = [row for row in pattern["by_index"] if row["rule"] == {"min_seen": 1, "window": 1, "hold": 0}]
        assert raw and raw[0] in pattern["looked_at_only"]
    # The cache of detections gives the same report as the model run.
    again = tmp_path / "again.json"
    assert main(["--model", "fast", "--corpus", str(c25), "--detections", str(cache), "--out", str(again)]) == 0
    assert json.loads(again.read_text())["patterns"] == report["patterns"]


def video_frames(folder: Path) -> list[int]:
    return [len(json.loads(p.read_text())["frames"]) for p in sorted((folder / "ground-truth").glob("*.json"))]
