"""Alert rules at other frame rates: does a rule scaled to a stream's frame rate
(`AlertRule.at_rate`, what the server does for a stream that declares its rate) keep what it
was chosen for at 25 fps: its sensitivity, its first-detection delay, its false alarms a minute?

Each corpus is a stand-in corpus at one frame rate, made from the same images with the same
seed, so its videos show the same camera moves over the same seconds, sampled more or less
often (`polypstream corpus OUT --from VAL --videos 100 --seconds 4 --fps F --seed 13`). The
model is scored on each under every rule of the sweep twice: scaled to the corpus's rate, and
counted in the corpus's own frames (as every stream was before rules were scaled).

    python -m benchmarks.alert_rates --model fast --corpus C25 --corpus C50 --corpus C10
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import command_line, device_name, slug, write_result
from polypstream.alerts import RULE_FPS, AlertRule
from polypstream.cli import resolve_model
from polypstream.runner import Runner
from polypstream.video_sources import evaluate_videos

KEYS = ("per_polyp_sensitivity", "per_frame_sensitivity", "per_frame_precision", "fp_activations", "fp_per_minute")


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """The numbers a rule is chosen by, of one report or sweep row."""
    return {
        "rule": row["rule"],
        **{key: row[key] for key in KEYS},
        "median_first_detection_ms": row["first_detection_ms"]["median"],
    }


def scored(report: dict[str, Any], model_rule: AlertRule) -> dict[str, Any]:
    """The model's own rule, the chosen rule and every rule of one sweep, in brief."""
    rows = {AlertRule(**row["rule"]): row for row in report["sweep"]}
    chosen = AlertRule(**report["chosen_rule"])
    return {
        "model_rule": summary(rows[model_rule]),
        "chosen_rule": summary(rows[chosen]),
        "sweep": [summary(row) for row in report["sweep"]],
    }


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
        entry: dict[str, Any] = {"corpus": corpus}
        for at_rate in (True, False):
            started = time.monotonic()
            report = evaluate_videos([Path(corpus)], runner, rule, sweep=True, at_rate=at_rate)
            fps = round(report["frames"] / (report["minutes"] * 60), 1)
            entry.update(fps=fps, frames=report["frames"], minutes=report["minutes"], videos=report["videos"])
            entry["scaled" if at_rate else "own_frames"] = scored(report, rule)
            print(f"{corpus}: {fps} fps, {'scaled' if at_rate else 'own frames'}, {time.monotonic() - started:.0f} s")
            if fps == RULE_FPS:  # the two are the same rules at the rules' own rate
                break
        corpora.append(entry)
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
