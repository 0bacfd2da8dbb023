"""Choose how a model's inputs are shrunk, averaging ("area") or linear interpolation, on its
validation images, and write the choice into its metadata (`polypstream.resize`).

    python -m models.training.choose_resize --model models/accurate.onnx --data DIR \
        --split models/results/accurate-val-ids.txt [--write]

The models were trained on averaged images (models/training/cache.py). Linear interpolation
shrinks the 960×540 decode of a 1080p frame to 352² in a tenth of the time (0.22 against 2.57 ms
on one AMD EPYC core), the largest part of what the accurate model's frames cost the decode pool.
The rule, fixed before looking: "linear" where, on the validation images, mask Dice drops by less
than 0.001 and neither box precision nor box recall drops; "area" otherwise. Never pass the
test split here.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from models.training.tune_regions import parse_validation_arguments, validation_arguments, write_metadata
from polypstream.evaluate import evaluate
from polypstream.runner import META_PREFIX, RESIZES, Runner

DICE_TOLERANCE = 0.001

Scores = dict[str, float | int | None]


def choose_resize(scores: dict[str, Scores]) -> str:
    """The rule above, on each resize's validation scores ("area" and "linear")."""
    area, linear = scores["area"], scores["linear"]

    def value(row: Scores, key: str) -> float:
        return float(row[key] or 0.0)

    kept = value(area, "dice") - value(linear, "dice") < DICE_TOLERANCE
    boxes = all(value(linear, key) >= value(area, key) for key in ("box_precision", "box_recall"))
    return "linear" if kept and boxes else "area"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    validation_arguments(parser, "shrinking")
    args = parse_validation_arguments(parser)
    runner = Runner(args.model, device="cpu", max_batch=8, spin=True)
    scores = {}
    for resize in RESIZES:
        runner.contract = replace(runner.contract, resize=resize)
        scores[resize] = evaluate(runner, args.data, args.split)
        row = scores[resize]
        print(
            f"{resize}: Dice {row['dice']:.4f}, box precision {row['box_precision']:.3f}, "
            f"box recall {row['box_recall']:.3f} on {row['images']} images of {args.split}"
        )
    chosen = choose_resize(scores)
    print(f"chosen: {chosen} (linear only if Dice drops < {DICE_TOLERANCE} and no box score drops)")
    if args.write:
        write_metadata(args.model, "resize", chosen)
        print(f"wrote {META_PREFIX}resize={chosen} into {args.model} (SHA256SUMS updated)")


if __name__ == "__main__":
    main()
