"""Alert rules at other frame rates: does a rule scaled to a stream's frame rate
(`AlertRule.at_rate`, what the server does for a stream that declares its rate) keep what it
was chosen for at 25 fps: its sensitivity, its first-detection delay, its false alarms a minute?

Each corpus is a stand-in corpus at one frame rate, made from the same images with the same
seed, so its videos show the same camera moves over the same seconds, sampled more or less
often (`polypstream corpus OUT --from VAL --videos 100 --seconds 4 --fps F --seed 13`). The
model runs once per video and is scored under every rule of the sweep twice: scaled to the
corpus's rate, and counted in the corpus's own frames (as every stream was before rules were
scaled).

    python -m benchmarks.alert_rates --model fast --corpus C25 --corpus C50 --corpus C10
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.common import command_line, device_name, slug, write_result
from polypstream.alerts import RULE_FPS, AlertRule
from polypstream.cli import resolve_model
from polypstream.runner import Runner
from polypstream.video_eval import VideoTally, choose_rule, score_video, sweep_rules
from polypstream.video_sources import open_labelled, predict

KEYS = ("per_polyp_sensitivity", "per_frame_sensitivity", "per_frame_precision", "fp_activations", "fp_per_minute")
MODES = {"scaled": True, "own_frames": False}  # each rule scaled to the corpus's rate, or in its own frames


def summary(rule: AlertRule, tally: VideoTally, keys: tuple[str, ...] = KEYS) -> dict[str, Any]:
    """The numbers a rule is chosen by (`keys` of its report) and its median first detection."""
    row = tally.report()
    first = row["first_detection_ms"]
    assert isinstance(first, dict)
    return {"rule": asdict(rule), **{key: row[key] for key in keys}, "median_first_detection_ms": first["median"]}


def score_corpus(corpus: Path, runner: Runner, model_rule: AlertRule) -> dict[str, Any]:
    """The model run once per video of `corpus`; every sweep rule scored both ways (`MODES`)."""
    rules = sweep_rules()
    tallies = {mode: {rule: VideoTally() for rule in rules} for mode in MODES}
    rates = []
    for video in open_labelled(corpus):
        tracked = predict(video, runner)
        rates.append(video.fps)
        for mode, scaled in MODES.items():
            for rule in rules:
                applied = rule.at_rate(video.fps if scaled else None)
                tallies[mode][rule].merge(score_video(tracked, video.truth, video.fps, applied))
    fps = sorted(set(rates))
    out: dict[str, Any] = {"fps": fps[0] if len(fps) == 1 else fps, "videos": len(rates)}
    for mode, by_rule in tallies.items():
        chosen = choose_rule([(rule, by_rule[rule]) for rule in rules])
        out[mode] = {
            "model_rule": summary(model_rule, by_rule[model_rule]),
            "chosen_rule": summary(chosen, by_rule[chosen]),
            "sweep": [summary(rule, by_rule[rule]) for rule in rules],
        }
    raw = tallies["scaled"][rules[0]]
    out.update(frames=raw.frames, minutes=round(raw.seconds / 60, 3))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--corpus", action="append", required=True, help="a stand-in corpus at one frame rate")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    runner = Runner(resolve_model(args.model), device="cpu", max_batch=8, spin=True)
    rule = runner.contract.alert_rule or AlertRule()
    corpora = []
    for corpus in args.corpus:
        started = time.monotonic()
        entry = {"corpus": corpus, **score_corpus(Path(corpus), runner, rule)}
        corpora.append(entry)
        print(
            f"{corpus}: {entry['videos']} videos at {entry['fps']} fps, {time.monotonic() - started:.0f} s", flush=True
        )
    payload = {
        "benchmark": "alert_rates",
        "device": device_name(),
        "command": command_line("benchmarks.alert_rates", args),
        "model": f"{runner.contract.name} {runner.contract.version}",
        "model_rule": str(rule),
        "rule_fps": RULE_FPS,
        "corpora": corpora,
    }
    path = write_result(f"alert-rates-{slug(runner.contract.name)}", payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
