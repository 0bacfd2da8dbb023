"""Mask Dice by the size of the polyp: where a model loses its Dice, small polyps or large ones.

    python -m models.training.by_extent --model models/accurate.onnx --model models/fast.onnx \\
        --data ../shared/data/kvasir-seg --split models/results/fast-val-ids.txt [--groups 4]

A polyp's extent is the larger side of its true mask's bounding box, as a share of the image's
side (1.0: it spans the frame). The images are sorted by extent and cut into --groups groups of
(nearly) equal size; each model's mean Dice per group is printed, scored as `polypstream eval`
scores it (`evaluate`, decoding as the service does). Every model must be scored on images it
was not trained on: validation ids only, never the test split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from models.training.tune_regions import parse_validation_arguments
from polypstream.dataset import load_split, read_mask
from polypstream.evaluate import evaluate
from polypstream.runner import Runner
from polypstream.scores import SplitScores


def extent(mask: np.ndarray) -> float:
    """The larger side of the mask's bounding box over the image's side (0 for an empty mask)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return 0.0
    height, width = mask.shape
    return max((int(xs.max()) - int(xs.min()) + 1) / width, (int(ys.max()) - int(ys.min()) + 1) / height)


def by_group(extents: list[float], dice: dict[str, list[float]], groups: int) -> list[dict[str, float | int]]:
    """Rows of (extent range, images, each model's mean Dice) over the images sorted by extent
    and cut into `groups` nearly equal groups (the first ones one image smaller where it does
    not divide)."""
    order = sorted(range(len(extents)), key=lambda i: extents[i])
    rows: list[dict[str, float | int]] = []
    for part in np.array_split(np.array(order, dtype=int), groups):
        if not len(part):
            continue
        row: dict[str, float | int] = {
            "extent_from": extents[part[0]],
            "extent_to": extents[part[-1]],
            "images": len(part),
        }
        for name, values in dice.items():
            row[name] = float(np.mean([values[i] for i in part]))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", required=True, help="an .onnx model (repeatable)")
    parser.add_argument("--data", type=Path, required=True, help="Kvasir-SEG layout folder")
    parser.add_argument("--split", type=Path, required=True, help="validation ids (never test.txt)")
    parser.add_argument("--groups", type=int, default=4)
    args = parse_validation_arguments(parser)
    # the images evaluate() scores, in its order: those with a mask
    masks = [s.mask_path for s in load_split(args.data, args.split) if s.mask_path is not None]
    extents = [extent(read_mask(path)) for path in masks]
    dice: dict[str, list[float]] = {}
    for path in args.model:
        tally = SplitScores()
        evaluate(Runner(path, device="cpu", max_batch=8, spin=True), args.data, args.split, tally=tally)
        dice[path.name] = [s.dice for s in tally.images]
    names = list(dice)
    print("extent        images  " + "  ".join(f"{n:>18}" for n in names))
    for row in [*by_group(extents, dice, args.groups), *by_group(extents, dice, 1)]:
        span = f"{row['extent_from']:.2f}-{row['extent_to']:.2f}"
        print(f"{span:<13} {row['images']:>6}  " + "  ".join(f"{row[n]:>18.4f}" for n in names))


if __name__ == "__main__":
    main()
