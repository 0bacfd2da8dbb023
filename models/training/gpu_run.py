"""The accurate model, made in one GPU call: train within a time budget, export, check, tune, fp16.

    python -m models.training.cache --data ../shared/data/kvasir-seg --out .cache/kvasir-train-352.npz \\
        --size 352 --splits train --quality 90                       # here, once (about 30 MB)
    # on the GPU machine (the cache carried; see models/README.md for the whole call):
    python -m models.training.gpu_run --cache .cache/kvasir-train-352.npz --out "$OUT" --budget-s 480

Everything it makes goes to --out: accurate.onnx (with its region score floor in its metadata),
accurate-fp16.onnx, SHA256SUMS, accurate.training.json (recipe, per-epoch history, validation
Dice in torch (also with test-time flips) and in onnxruntime (also per quarter of polyp sizes,
`val_dice_by_extent`), the floor table, torch inference times at batch 1 and 32, timings,
device), accurate.val-ids.txt and accurate.pt (the trained weights, saved before the export so
that a failure there does not lose the training). The
whole run keeps to --budget-s of wall time: training stops early (keeping its best epoch) so that
the export, the onnxruntime check, the tuning and the fp16 variant fit in --reserve-s.

The validation set is fixed before training: --val images of train.txt, drawn with --seed. The
test split is not in the cache; it is read once, afterwards, on the CPU machine:
`polypstream eval --model accurate --data … --split test.txt` (and the same for the fp16 file).
The floor is chosen by tune_regions' rule, on the validation images at the cache's resolution,
with true boxes from the connected regions of their masks (the cache has no box file).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from models.training.by_extent import by_group, extent
from models.training.cache import load_cache
from models.training.fp16 import to_fp16
from models.training.train import PRESETS, Preset, export_onnx, to_tensor, train_model, validate
from models.training.tune_regions import choose_floor, write_floor
from polypstream.postprocess import locate_polyps, mask_boxes, probability_to_mask
from polypstream.runner import Runner, record_checksum
from polypstream.scores import SplitScores

NAME = "accurate"


def check_with_onnxruntime(
    model_path: Path, images: np.ndarray, masks: np.ndarray
) -> tuple[dict[str, float | int | None], list, list[float]]:
    """The exported model as the service runs it, on the validation images: their scores, per
    image (regions found without a floor, true boxes) for choosing the floor, and per image its
    mask Dice (for the Dice by polyp size)."""
    runner = Runner(model_path, device="cpu", max_batch=8, spin=True)
    tally, regions = SplitScores(), []
    threshold = runner.contract.threshold
    for start in range(0, len(images), 8):
        chunk = images[start : start + 8]
        probs = runner.run([runner.preprocess(image) for image in chunk])
        for image, truth, prob in zip(chunk, masks[start : start + 8], probs, strict=True):
            height, width = image.shape[:2]
            found = locate_polyps(prob, width, height, threshold)
            truth_mask = truth > 0.5
            boxes = mask_boxes(truth_mask)
            tally.add(probability_to_mask(prob, width, height, threshold)[0], truth_mask, [p.box for p in found], boxes)
            regions.append((found, boxes))
    return tally.as_dict(), regions, [image.dice for image in tally.images]


@torch.no_grad()
def inference_ms(model: torch.nn.Module, size: int, device: torch.device, repeats: int) -> dict[str, dict[str, float]]:
    """Median milliseconds of one forward pass in torch at batch 1 and 32, fp32 and (on CUDA)
    fp16 autocast, after warming up: the model alone, without the service around it."""
    model.eval()
    kinds = {"fp32": False, "fp16_autocast": True} if device.type == "cuda" else {"fp32": False}
    timings: dict[str, dict[str, float]] = {}
    for kind, half in kinds.items():
        timings[kind] = {}
        for batch in (1, 32):
            x = torch.zeros(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
            samples = []
            for i in range(repeats + 3):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.float16, enabled=half):
                    model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= 3:
                    samples.append((time.perf_counter() - start) * 1e3)
            timings[kind][str(batch)] = round(float(np.median(samples)), 3)
    return timings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="a train-split .npz from models.training.cache")
    parser.add_argument("--out", type=Path, required=True, help="folder for everything the run makes")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall time for the whole run")
    parser.add_argument("--reserve-s", type=float, default=90.0, help="of it, kept for export, checks and fp16")
    parser.add_argument("--epochs", type=int, default=10_000, help="at most this many (the budget ends it first)")
    parser.add_argument("--size", type=int, help="input size (default: the preset's)")
    parser.add_argument("--widths", help="U-Net widths (default: the preset's)")
    parser.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    parser.add_argument("--ema", type=float, default=0.999, help="weight moving average (0: none)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW's weight decay")
    parser.add_argument(
        "--scales", default="1", help="multi-scale training: multiples of the input size, e.g. 0.75,1,1.25"
    )
    parser.add_argument("--val", type=int, default=140, help="images of train.txt held out for validation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default="1")
    parser.add_argument("--timing-repeats", type=int, default=50, help="forward passes timed per batch size")
    return parser


def recipe(args: argparse.Namespace) -> tuple[Preset, tuple[float, ...]]:
    """The network and training sizes the arguments ask for: the accurate preset with what they
    override, and the multi-scale training's scales."""
    preset = PRESETS[NAME]
    preset = replace(
        preset,
        size=args.size or preset.size,
        widths=tuple(int(w) for w in args.widths.split(",")) if args.widths else preset.widths,
        batch=args.batch or preset.batch,
        lr=args.lr or preset.lr,
    )
    return preset, tuple(float(f) for f in args.scales.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget_s
    preset, scales = recipe(args)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # one input size (a few with --scales): cuDNN picks its fastest kernels
    images, masks, ids = load_cache(args.cache, "train")
    if args.val >= len(ids):
        parser.error(f"--val {args.val} leaves nothing to train on ({len(ids)} images)")
    order = np.random.default_rng(args.seed).permutation(len(ids))
    val_idx, train_idx = order[: args.val], order[args.val :]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{NAME}.val-ids.txt").write_text("\n".join(ids[i] for i in val_idx) + "\n")
    x_train, y_train = to_tensor(images[train_idx], masks[train_idx], device)
    x_val, y_val = to_tensor(images[val_idx], masks[val_idx], device)

    train_budget = max(0.0, deadline - args.reserve_s - time.monotonic())
    model, history, best = train_model(
        x_train, y_train, x_val, y_val, preset,
        epochs=args.epochs, seed=args.seed, budget_s=train_budget, ema=args.ema,
        weight_decay=args.weight_decay, scales=scales,
    )  # fmt: skip
    trained_at = time.monotonic()
    # The weights first, so that a failure further on (export, checks) does not lose the training.
    torch.save(model.state_dict(), args.out / f"{NAME}.pt")
    hflip_dice = validate(model, x_val, y_val, preset.size, flip=True)
    timings = inference_ms(model, preset.size, device, args.timing_repeats)

    onnx_path = args.out / f"{NAME}.onnx"
    training = (
        f"seed={args.seed} epochs={len(history)} val_dice={best:.4f} ema={args.ema:g} lr={preset.lr:g} "
        f"weight_decay={args.weight_decay:g} batch={preset.batch} scales={args.scales}"
    )
    export_onnx(model, preset, onnx_path, {"version": args.version, "polypstream.training": training})
    scores, regions, dice = check_with_onnxruntime(onnx_path, images[val_idx], masks[val_idx])
    # Where it loses its Dice: by the polyp's size (models/README.md, "Where accurate 1 loses").
    by_size = by_group([extent(m > 0.5) for m in masks[val_idx]], {"dice": dice}, 4)
    floor, rows = choose_floor(regions)
    write_floor(onnx_path, floor)  # and its SHA-256 in SHA256SUMS beside it
    fp16: dict[str, object] = {}
    if time.monotonic() < deadline:
        fp16_path = args.out / f"{NAME}-fp16.onnx"
        try:
            to_fp16(onnx_path, fp16_path)
            record_checksum(fp16_path)
            fp16 = {"val": check_with_onnxruntime(fp16_path, images[val_idx], masks[val_idx])[0]}
        except Exception as exc:  # the fp32 model is the result; the variant is a bonus
            fp16 = {"error": f"{type(exc).__name__}: {exc}"}
    record = {
        "preset": asdict(preset),
        "seed": args.seed,
        "ema": args.ema,
        "weight_decay": args.weight_decay,
        "scales": list(scales),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        "epochs_run": len(history),
        "best_val_dice_torch": round(best, 4),
        "val_dice_torch_hflip": round(hflip_dice, 4),
        "torch_inference_ms": timings,
        "val_onnxruntime": scores,
        "val_dice_by_extent": [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in by_size
        ],
        "floor": floor,
        "floor_table": [dict(zip(("floor", "box_precision", "box_recall", "box_f1"), r, strict=True)) for r in rows],
        "fp16": fp16,
        "train_seconds": round(trained_at - started, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "budget_s": args.budget_s,
        "train_budget_s": round(train_budget, 1),
        "history": history,
        "files_mb": {p.name: round(p.stat().st_size / 1e6, 2) for p in sorted(args.out.glob("*.onnx"))},
    }
    (args.out / f"{NAME}.training.json").write_text(json.dumps(record, indent=1) + "\n")
    dice = scores["dice"]
    print(
        f"{NAME}: {len(history)} epochs in {record['train_seconds']} s on {record['device']}; validation Dice "
        f"{best:.4f} (torch), {dice if dice is None else round(dice, 4)} (onnxruntime); floor {floor:g}; "
        f"{record['total_seconds']} s in all; files {record['files_mb']}"
    )
    return 0 if math.isfinite(best) and best >= 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
