"""Write the alert rule chosen for a model into it (`polypstream.alert_rule`), from its sweep.

    polypstream eval-video CORPUS --model models/accurate.onnx --json --sweep > sweep.json
    python -m models.training.choose_alerts --model models/accurate.onnx --sweep sweep.json [--write]

CORPUS is a stand-in corpus made only of validation images (benchmarks/README.md, "Clinical
alerts"), never of test images or real clips. The sweep's `chosen_rule` is video_eval.choose_rule's
pick, by the rule fixed before looking; this records it in the model, whose false alarms it was
chosen against, so that `serve` and `eval-video` apply it unless told otherwise. The sweep must be
of this very model (its name and version), and SHA256SUMS beside it is updated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.training.tune_regions import write_metadata
from polypstream.alerts import AlertRule
from polypstream.runner import META_PREFIX, Runner

KEY = "alert_rule"


def chosen_rule(sweep: dict, model: str) -> AlertRule:
    """The rule an eval-video sweep chose, provided the sweep is of `model` ("NAME VERSION")."""
    if sweep.get("model") != model:
        raise SystemExit(f"the sweep is of {sweep.get('model')!r}, not of {model!r}")
    if sweep.get("interrupted"):
        raise SystemExit("the sweep was interrupted: it chose no rule (run it to the end)")
    if "chosen_rule" not in sweep:
        raise SystemExit("the report has no chosen_rule: run eval-video with --sweep")
    chosen = sweep["chosen_rule"]
    return AlertRule(chosen["min_seen"], chosen["window"], chosen["hold"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--sweep", type=Path, required=True, help="`eval-video --json --sweep` output for the model")
    parser.add_argument("--write", action="store_true", help="store the chosen rule in the model's metadata")
    args = parser.parse_args()
    contract = Runner(args.model, device="cpu", max_batch=1).contract
    rule = chosen_rule(json.loads(args.sweep.read_text()), f"{contract.name} {contract.version}")
    print(f"chosen for {contract.name} {contract.version}: {rule} (the model's now: {contract.alert_rule})")
    if args.write:
        write_metadata(args.model, KEY, f"{rule.min_seen},{rule.window},{rule.hold}")
        print(f"wrote {META_PREFIX}{KEY} into {args.model} (SHA256SUMS updated)")


if __name__ == "__main__":
    main()
