"""Choose a model's region score floor on validation images and write it into its metadata.

    python -m models.training.tune_regions --model models/fast.onnx --data DIR --split val.txt [--write]

Regions of the predicted mask whose mean probability is under the floor are not reported as
polyps. The rule, fixed before looking: among floors 0, 0.5, 0.55, ..., 0.9, take the one with
the best box F1 that loses no box recall against no floor (missed polyps matter most).
Never pass the test split here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx

from polypstream.config import MIN_AREA_FRACTION
from polypstream.dataset import load_split
from polypstream.evaluate import read_as_served
from polypstream.frames import Polyp
from polypstream.postprocess import locate_polyps
from polypstream.runner import META_PREFIX, Runner, record_checksum
from polypstream.scores import match_boxes

FLOORS = (0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


Regions = list[tuple[list[Polyp], list[tuple[int, int, int, int]]]]  # per image: found, true boxes


def choose_floor(regions: Regions) -> tuple[float, list[tuple[float, float, float, float]]]:
    """The floor by the rule above, and (floor, box precision, recall, F1) for every floor tried."""
    rows = []
    for floor in FLOORS:
        tp = predicted = truth_count = 0
        for found, truth in regions:
            boxes = [p.box for p in found if p.score >= floor]
            tp += match_boxes(boxes, truth)
            predicted += len(boxes)
            truth_count += len(truth)
        precision = tp / predicted if predicted else 0.0
        recall = tp / truth_count if truth_count else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((floor, precision, recall, f1))
    best = max((r for r in rows if r[2] >= rows[0][2]), key=lambda r: r[3])
    return best[0], rows


def write_floor(model_path: Path, floor: float) -> None:
    """Store the floor in the model's metadata and update its SHA-256 beside it."""
    write_metadata(model_path, "min_region_score", f"{floor:g}")


def write_metadata(model_path: Path, key: str, value: str) -> None:
    """Set polypstream.`key` in the model's metadata and update its SHA-256 beside it."""
    model = onnx.load(str(model_path))
    kept = [p for p in model.metadata_props if p.key != META_PREFIX + key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=META_PREFIX + key, value=value)
    onnx.save(model, str(model_path))
    record_checksum(model_path)  # a named model is checked against it when loaded


def validation_arguments(parser: argparse.ArgumentParser, chosen: str) -> None:
    """--model, --data, --split (validation ids) and --write (store the `chosen` in the model)."""
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="Kvasir-SEG layout folder")
    parser.add_argument("--split", type=Path, required=True, help="validation ids (never test.txt)")
    parser.add_argument("--write", action="store_true", help=f"store the chosen {chosen} in the model's metadata")


def parse_validation_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments; exits with a usage error if --split is the test split."""
    args = parser.parse_args()
    if args.split.name == "test.txt":
        parser.error("choose on validation images, never on the test split")
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    validation_arguments(parser, "floor")
    parser.add_argument("--min-area-fraction", type=float, default=MIN_AREA_FRACTION, help="as the service's default")
    args = parse_validation_arguments(parser)
    runner = Runner(args.model, device="cpu", max_batch=1, spin=True)
    regions = []
    for sample in load_split(args.data, args.split):
        image, (width, height) = read_as_served(sample.image_path, runner.input_size)
        prob = runner.run([runner.preprocess(image)])[0]
        found = locate_polyps(prob, width, height, runner.contract.threshold, min_area_fraction=args.min_area_fraction)
        regions.append((found, sample.boxes_xywh()))
    best, rows = choose_floor(regions)
    for floor, precision, recall, f1 in rows:
        print(f"floor {floor:.2f}: box precision {precision:.3f} recall {recall:.3f} F1 {f1:.3f}")
    print(f"chosen floor {best:.2f} (best F1 without losing recall) on {len(regions)} images of {args.split}")
    if args.write:
        write_floor(args.model, best)
        print(f"wrote {META_PREFIX}min_region_score={best:g} into {args.model} (SHA256SUMS updated)")


if __name__ == "__main__":
    main()
