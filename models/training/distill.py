"""Make a cheaper model from a trained one: the same network at a smaller input size, fine-tuned
to agree with the original (distillation) as well as with the masks.

    python -m models.training.distill --teacher models/fast.onnx --cache .cache/kvasir-256.npz \\
        --val-ids models/results/fast-val-ids.txt --size 128 --minutes 20 --out /tmp/fast128

The student starts from the teacher's own weights (a convolution does not care about the size of
its input), so what it learns is what changes with the scale, and it keeps what the teacher does
on video, which still-image Dice does not measure (models/README.md). The validation images are
the teacher's own (`--val-ids`): neither model has trained on them. test.txt is never read here.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F  # noqa: N812
from onnx import numpy_helper
from torch import nn

from models.training.cache import load_cache
from models.training.train import (
    PRESETS,
    Preset,
    Progress,
    UNet,
    augment,
    dice_loss,
    export_onnx,
    normalise,
    timed_lr,
    to_tensor,
    validate,
)
from polypstream.runner import META_PREFIX, record_checksum


def load_unet(path: Path) -> tuple[UNet, Preset]:
    """The torch network of an ONNX model that `train.py` exported (batch norm folded into the
    convolutions, so the network has biases and no batch norm), and its preset."""
    proto = onnx.load(str(path))
    meta = {p.key.removeprefix(META_PREFIX): p.value for p in proto.metadata_props}
    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    kinds = [n.op_type for n in proto.graph.node if n.op_type in ("Conv", "MaxPool", "Resize")]
    first_pool, first_up = kinds.index("MaxPool"), kinds.index("Resize")

    def width_before(position: int) -> int:  # output channels of the last convolution before it
        return int(weights[convs[kinds[:position].count("Conv") - 1].input[1]].shape[0])

    widths = [width_before(i) for i, kind in enumerate(kinds) if kind == "MaxPool"] + [width_before(first_up)]
    strides = [a.ints for a in convs[0].attribute if a.name == "strides"]
    half_res = bool(strides) and list(strides[0]) == [2, 2]
    light_ends = kinds[:first_pool].count("Conv") == 1
    net = UNet(tuple(widths), half_res=half_res, light_ends=light_ends, norm=False)
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if len(layers) != len(convs):
        raise ValueError(f"{path}: {len(convs)} convolutions, the U-Net it looks like has {len(layers)}")
    with torch.no_grad():
        for layer, node in zip(layers, convs, strict=True):
            weight, bias = weights[node.input[1]].copy(), weights[node.input[2]].copy()
            if tuple(layer.weight.shape) != weight.shape:
                expected = tuple(layer.weight.shape)
                raise ValueError(f"{path}: convolution {node.name} is {weight.shape}, expected {expected}")
            layer.weight.copy_(torch.from_numpy(weight))
            assert layer.bias is not None
            layer.bias.copy_(torch.from_numpy(bias))
    size = int(meta["input_size"].split("x")[0])
    preset = replace(
        PRESETS["fast"], name=meta["name"], size=size, widths=tuple(widths), half_res=half_res, light_ends=light_ends
    )
    return net.eval(), preset


def area(x: torch.Tensor, size: int) -> torch.Tensor:
    """Shrink as the service does (cv2.INTER_AREA)."""
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area")


def fed(x: torch.Tensor) -> torch.Tensor:
    return normalise(x).contiguous(memory_format=torch.channels_last)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    teacher_size: int,
    size: int,
    batch: int,
    lr: float,
    epochs: int,
    budget_s: float,
    seed: int,
    weight: float = 1.0,
) -> tuple[list[dict[str, float | None]], float]:
    """Fine-tune `student` at `size` on masks + `weight` × the teacher's probabilities (BCE), the
    learning rate warmed up and annealed over `budget_s`; leaves it at its best validation Dice
    (the start counts, so it never ends worse on validation than it began). Returns the history
    and that Dice."""
    x_train, y_train, x_val, y_val = data
    teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    on_device = torch.Generator(device=x_train.device).manual_seed(seed)  # the augmentations (train.augment)
    teacher.eval().requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    start = validate(student, x_val, y_val, size)
    progress = Progress(budget_s, start, {k: v.detach().clone() for k, v in student.state_dict().items()})
    progress.history.append({"epoch": 0, "loss": None, "val_dice": round(start, 4), "seconds": 0.0})
    print(json.dumps(progress.history[-1]), flush=True)
    steps = max(1, len(x_train) // batch)
    started = time.perf_counter()
    student.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x_train), generator=gen).to(x_train.device)
        for b in range(steps):
            idx = perm[b * batch : (b + 1) * batch]
            x, y = augment(x_train[idx], y_train[idx], x_train.shape[-1], on_device)
            with torch.no_grad():
                soft = area(torch.sigmoid(teacher(fed(area(x, teacher_size)))), size)
            target = (area(y, size) > 0.5).float()
            logits = student(fed(area(x, size)))
            loss = (
                F.binary_cross_entropy_with_logits(logits, target)
                + dice_loss(logits, target)
                + weight * F.binary_cross_entropy_with_logits(logits, soft)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            done = min(1.0, (time.perf_counter() - started) / budget_s)
            for group in opt.param_groups:
                group["lr"] = lr * timed_lr(done)
            opt.step()
        val_dice = validate(student, x_val, y_val, size)
        if progress.end_epoch(epoch + 1, loss, val_dice, student, time.perf_counter() - started):
            break
    assert progress.best_state is not None
    student.load_state_dict(progress.best_state)
    return progress.history, progress.best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="an ONNX model exported by train.py")
    parser.add_argument("--cache", type=Path, required=True, help=".npz from models.training.cache")
    parser.add_argument("--val-ids", type=Path, required=True, help="the teacher's validation ids (never test.txt)")
    parser.add_argument("--size", type=int, required=True, help="the student's input size (a multiple of 16)")
    parser.add_argument("--minutes", type=float, required=True, help="stop after the epoch that passes this much time")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight", type=float, default=1.0, help="of the teacher's term in the loss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--version", default="1")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    teacher, preset = load_unet(args.teacher)
    student = copy.deepcopy(teacher)  # starts from the teacher's weights
    images, masks, ids = load_cache(args.cache, "train")
    held_out = set(args.val_ids.read_text().split())
    val_idx = np.array([i for i, name in enumerate(ids) if name in held_out])
    if len(val_idx) != len(held_out):
        raise SystemExit(f"{args.val_ids}: {len(held_out) - len(val_idx)} ids are not in the cache's train split")
    train_idx = np.array([i for i, name in enumerate(ids) if name not in held_out])
    device = torch.device("cpu")
    x_train, y_train = to_tensor(images[train_idx], masks[train_idx], device)
    x_val, y_val = to_tensor(images[val_idx], masks[val_idx], device)

    history, best = distill(
        teacher,
        student,
        (x_train, y_train, x_val, y_val),
        teacher_size=preset.size,
        size=args.size,
        batch=preset.batch,
        lr=args.lr,
        epochs=args.epochs,
        budget_s=args.minutes * 60,
        seed=args.seed,
        weight=args.weight,
    )
    student_preset = replace(preset, size=args.size, lr=args.lr, epochs=args.epochs)
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.teacher.stem
    onnx_path = args.out / f"{name}.onnx"
    teacher_meta = {p.key: p.value for p in onnx.load(str(args.teacher), load_external_data=False).metadata_props}
    export_onnx(
        student,
        student_preset,
        onnx_path,
        {
            "version": args.version,
            "polypstream.training": (
                f"distilled from {teacher_meta.get(META_PREFIX + 'version', '?')} at {args.size}: "
                f"seed={args.seed} epochs={len(history) - 1} val_dice={best:.4f}"
            ),
        },
    )
    record_checksum(onnx_path)
    record = {
        "teacher": str(args.teacher),
        "teacher_version": teacher_meta.get(META_PREFIX + "version"),
        "preset": asdict(student_preset),
        "distill_weight": args.weight,
        "budget_minutes": args.minutes,
        "seed": args.seed,
        "device": "cpu",
        "train_seconds": history[-1]["seconds"],
        "start_val_dice": history[0]["val_dice"],
        "best_val_dice": round(best, 4),
        "history": history,
    }
    (args.out / f"{name}.training.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.out / f"{name}.val-ids.txt").write_text("\n".join(ids[i] for i in val_idx) + "\n")
    print(f"wrote {onnx_path}; validation Dice {history[0]['val_dice']:.4f} at the start, best {best:.4f}")


if __name__ == "__main__":
    main()
