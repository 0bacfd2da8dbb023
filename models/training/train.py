"""Train a U-Net polyp segmenter from scratch on Kvasir-SEG and export it to ONNX.

    python -m models.training.train --cache .cache/kvasir-256.npz --preset fast --out models/

The validation set is a fixed, seeded part of train.txt; test.txt is never read here
(measure it afterwards with `polypstream eval`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from models.training.cache import load_cache
from models.training.fixed_resize import fix_resize_scales
from polypstream.runner import record_checksum

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    name: str
    size: int
    widths: tuple[int, ...]
    epochs: int
    batch: int
    lr: float
    half_res: bool = False  # the first level works at half the input resolution (a stride-2 stem)
    light_ends: bool = False  # one convolution, not two, in the first level and the last decoder level


# fast: sized for ≥ 20 frames/s at batch 1 on a 2-core CPU (≈17 ms per frame on one core);
# (16, 32, 64, 128, 192) at 192² took 73 ms there. `--half-res --widths 16,32,64,128` runs in half
# the time of fast but did worse on video (models/README.md, "A half-resolution `fast`").
# accurate: for the GPU.
PRESETS = {
    "fast": Preset("polyp-unet-fast", 160, (8, 16, 32, 64, 128), 60, 8, 3e-3),
    "accurate": Preset("polyp-unet-accurate", 352, (16, 32, 64, 128, 256), 150, 16, 2e-3),
}


def conv_block(cin: int, cout: int, stride: int = 1, convs: int = 2, norm: bool = True) -> nn.Sequential:
    """`convs` 3×3 convolutions, each followed by batch norm (or, with `norm` False, a bias: the
    form an exported model has once batch norm is folded into its convolutions) and ReLU."""
    layers: list[nn.Module] = []
    for i in range(convs):
        conv = nn.Conv2d(cin if i == 0 else cout, cout, 3, stride=stride if i == 0 else 1, padding=1, bias=not norm)
        layers += [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)] if norm else [conv, nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Plain U-Net: max-pool down, bilinear up, skip concatenation; one logit channel.

    `half_res`: the first convolution has stride 2, so that no level works at the input's full
    resolution (on a CPU the full-resolution level, with the fewest channels, took more than half
    of the run); the logits are upsampled 2× at the end. `light_ends`: one convolution instead of
    two in the first level and in the last decoder level (the full-resolution ones, unless
    half_res), which keeps the full resolution at a lower cost. `norm` False: no batch norm, a
    bias per convolution (the layout of an exported model, see distill.py)."""

    def __init__(
        self, widths: tuple[int, ...], half_res: bool = False, light_ends: bool = False, norm: bool = True
    ) -> None:
        super().__init__()
        self.half_res = half_res
        ends = 1 if light_ends else 2
        self.down = nn.ModuleList()
        cin = 3
        for level, w in enumerate(widths):
            stride = 2 if half_res and level == 0 else 1
            self.down.append(conv_block(cin, w, stride=stride, convs=ends if level == 0 else 2, norm=norm))
            cin = w
        self.up = nn.ModuleList(
            conv_block(widths[i + 1] + widths[i], widths[i], convs=ends if i == 0 else 2, norm=norm)
            for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        logits = self.head(x)
        if self.half_res:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class Exported(nn.Module):
    """The shipped graph: normalised RGB NCHW float in, polyp probability N×1×H×W out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def augment(
    images: torch.Tensor, masks: torch.Tensor, size: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation, scale, shift, flips (one affine warp) and colour/gamma/blur jitter.

    `gen` lives on the images' device and every random number is drawn there: a number drawn on
    the host and copied to a GPU makes the host wait for the GPU's queue to empty (a blocking
    copy synchronises), ten times a step, so that the GPU idled while the host launched the next
    kernels."""
    n, dev = images.shape[0], images.device

    def rand(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.rand(n, *shape, generator=gen, device=dev) * (hi - lo) + lo

    angle = rand(-math.pi, math.pi)
    scale = rand(0.7, 1.3)
    flip = torch.where(rand(0, 1) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, rand(-0.15, 0.15)], 1), torch.stack([sin * flip, cos, rand(-0.15, 0.15)], 1)], 1
    )
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brightness = rand(0.7, 1.3).view(n, 1, 1, 1)
    contrast = rand(0.7, 1.3).view(n, 1, 1, 1)
    channel = rand(0.9, 1.1, 3, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = ((images - mean) * contrast + mean) * brightness * channel
    gamma = rand(0.7, 1.4).view(n, 1, 1, 1)
    images = images.clamp(0, 1) ** gamma
    blur = (rand(0, 1) < 0.2).view(n, 1, 1, 1)
    blurred = F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False)
    images = torch.where(blur, blurred, images)
    return images, (masks > 0.5).float()


class MovingAverage:
    """An exponential moving average of a model's weights (and its BatchNorm statistics), kept
    on the model's device: `decay` × the average + (1 − `decay`) × the weights, after each step.

    Not torch's AveragedModel: that keeps its step count on the host and copies it to the
    device at every update (a synchronising copy, as in `augment`)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [*model.parameters(), *model.buffers()]
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - self.decay)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():  # BatchNorm's batch count
                a.copy_(c)


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def to_tensor(images_bgr: np.ndarray, masks: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rgb = torch.from_numpy(np.ascontiguousarray(images_bgr[..., ::-1])).permute(0, 3, 1, 2)
    return rgb.to(device).float() / 255.0, torch.from_numpy(masks).unsqueeze(1).to(device)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    union = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    return (1 - (2 * inter + 1) / (union + 1)).mean()


@torch.no_grad()
def validate(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, size: int, flip: bool = False) -> float:
    """Mean per-image Dice at model resolution, threshold 0.5. `flip`: of the probability
    averaged over the image and its mirror image (what test-time flips would give)."""
    model.eval()
    scores = []
    for start in range(0, images.shape[0], 32):
        x = F.interpolate(images[start : start + 32], size=(size, size), mode="bilinear", align_corners=False)
        y = F.interpolate(masks[start : start + 32], size=(size, size), mode="bilinear", align_corners=False) > 0.5
        x = normalise(x)
        mirrored = torch.sigmoid(model(x.flip(-1))).flip(-1) if flip else None
        pred = model(x) > 0 if mirrored is None else (torch.sigmoid(model(x)) + mirrored) / 2 > 0.5
        inter = (pred & y).sum(dim=(1, 2, 3)).float()
        total = (pred.sum(dim=(1, 2, 3)) + y.sum(dim=(1, 2, 3))).float()
        scores.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)))
    model.train()
    return float(torch.cat(scores).mean())


def export_onnx(model: nn.Module, preset: Preset, path: Path, extra: dict[str, str]) -> None:
    """ONNX with a dynamic batch axis, opset 17, IR 8 and the model contract as metadata."""
    model = Exported(model).eval().cpu()
    dummy = torch.zeros(1, 3, preset.size, preset.size)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["probability"],
        dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    proto.ir_version = 8
    fix_resize_scales(proto)  # the upsampling factors as constants: the same answers, faster on CPUs
    meta = {
        "polypstream.name": preset.name,
        "polypstream.version": extra.pop("version"),
        "polypstream.input_size": f"{preset.size}x{preset.size}",
        "polypstream.channel_order": "RGB",
        "polypstream.scale": str(1 / 255),
        "polypstream.mean": ",".join(str(v) for v in MEAN),
        "polypstream.std": ",".join(str(v) for v in STD),
        "polypstream.output": "probability",
        "polypstream.threshold": "0.5",
        **extra,
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def timed_lr(done: float) -> float:
    """The learning rate's share of its peak when `done` of the time budget is spent."""
    if done < 0.1:
        return max(done / 0.1, 0.01)
    return 0.5 * (1 + math.cos(math.pi * (done - 0.1) / 0.9))


class Progress:
    """The per-epoch history of a training run, its best validation Dice and the weights that
    had it, and its time budget."""

    def __init__(self, budget_s: float, best: float = -1.0, best_state: dict[str, torch.Tensor] | None = None) -> None:
        self.budget_s, self.best, self.best_state = budget_s, best, best_state
        self.history: list[dict[str, float | None]] = []

    def end_epoch(self, epoch: int, loss: torch.Tensor, val_dice: float, judged: nn.Module, elapsed: float) -> bool:
        """Record (and print) an epoch, keep its weights if they are the best so far; True when
        the budget is spent and training should stop."""
        self.history.append(
            {
                "epoch": epoch,
                "loss": round(float(loss.detach()), 4),
                "val_dice": round(val_dice, 4),
                "seconds": round(elapsed, 1),
            }
        )
        print(json.dumps(self.history[-1]), flush=True)
        if val_dice > self.best:
            self.best, self.best_state = val_dice, {k: v.detach().clone() for k, v in judged.state_dict().items()}
        if elapsed > self.budget_s:
            print(f"time budget reached after epoch {epoch}", flush=True)
            return True
        return False


def scale_sizes(size: int, scales: tuple[float, ...]) -> list[int]:
    """The input sizes of multi-scale training: each scale's multiple of `size`, rounded to a
    multiple of 32 (what five max-pools divide); `size` itself when there is one scale, 1."""
    return [max(32, round(size * scale / 32) * 32) for scale in scales] if scales != (1.0,) else [size]


def train_model(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    preset: Preset,
    *,
    epochs: int,
    seed: int,
    budget_s: float = math.inf,
    ema: float = 0.0,
    weight_decay: float = 1e-4,
    scales: tuple[float, ...] = (1.0,),
) -> tuple[nn.Module, list[dict[str, float]], float]:
    """Train from scratch; returns the model at its best validation Dice (of the weights'
    moving average when `ema` > 0), the per-epoch history and that Dice. Stops after the epoch
    that passes `budget_s` of training, keeping the best so far. With a budget the learning rate
    follows the time spent (`timed_lr`); without one it is one-cycle over `epochs`.

    `scales`: multi-scale training, each step's batch drawn at one of these multiples of the
    preset's size (rounded to a multiple of 32); validation stays at the preset's size."""
    device = x_train.device
    gen = torch.Generator().manual_seed(seed)  # the order and the scales, on the host
    on_device = torch.Generator(device=device).manual_seed(seed)  # the augmentations, where they run
    model = UNet(preset.widths, preset.half_res, preset.light_ends).to(device).to(memory_format=torch.channels_last)
    averaged = MovingAverage(model, ema) if ema > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=weight_decay)
    sizes = scale_sizes(preset.size, scales)
    steps_per_epoch = max(1, len(x_train) // preset.batch)
    # With a time budget the learning rate follows the time spent, not a step count fixed in
    # advance: warm up over the first 10 %, then cosine down to zero as the budget ends, so that
    # training stopped by the budget has annealed. Without one: one-cycle over `epochs`.
    timed = math.isfinite(budget_s)
    sched = (
        None
        if timed
        else torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=preset.lr, total_steps=epochs * steps_per_epoch, pct_start=0.1
        )
    )
    use_amp = device.type == "cuda"
    progress = Progress(budget_s)
    started = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(len(x_train), generator=gen).to(device)  # one copy an epoch
        for b in range(steps_per_epoch):
            idx = perm[b * preset.batch : (b + 1) * preset.batch]
            size = sizes[int(torch.randint(len(sizes), (1,), generator=gen))] if len(sizes) > 1 else preset.size
            x, y = augment(x_train[idx], y_train[idx], size, on_device)
            x = normalise(x).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            logits = logits.float()
            loss = F.binary_cross_entropy_with_logits(logits, y) + dice_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if timed:
                done = min(1.0, (time.perf_counter() - started) / budget_s)
                for group in opt.param_groups:
                    group["lr"] = preset.lr * timed_lr(done)
            opt.step()
            if sched is not None:
                sched.step()
            if averaged is not None:
                averaged.update(model)
        judged = averaged.module if averaged is not None else model
        val_dice = validate(judged, x_val, y_val, preset.size)
        if progress.end_epoch(epoch + 1, loss, val_dice, judged, time.perf_counter() - started):
            break
    assert progress.best_state is not None
    model.load_state_dict(progress.best_state)
    return model, progress.history, progress.best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help=".npz from models.training.cache")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="fast")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--minutes", type=float, help="stop after the epoch that passes this much training time")
    parser.add_argument("--size", type=int, help="override the preset's input size")
    parser.add_argument("--widths", help="override the preset's widths, e.g. 8,16,32,64,128")
    parser.add_argument("--batch", type=int, help="override the preset's batch size")
    parser.add_argument("--half-res", action="store_true", help="a stride-2 first level (about half the CPU time)")
    parser.add_argument(
        "--light-ends", action="store_true", help="one convolution in the first and the last decoder level (not two)"
    )
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", type=int, default=80, help="images of train.txt held out for validation")
    parser.add_argument("--version", default="1")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()

    preset = PRESETS[args.preset]
    preset = replace(
        preset,
        size=args.size or preset.size,
        widths=tuple(int(w) for w in args.widths.split(",")) if args.widths else preset.widths,
        batch=args.batch or preset.batch,
        half_res=args.half_res or preset.half_res,
        light_ends=args.light_ends or preset.light_ends,
        epochs=args.epochs or preset.epochs,
    )
    epochs = preset.epochs
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    images, masks, ids = load_cache(args.cache, "train")
    order = np.random.default_rng(args.seed).permutation(len(ids))
    val_idx, train_idx = order[: args.val], order[args.val :]
    x_train, y_train = to_tensor(images[train_idx], masks[train_idx], device)
    x_val, y_val = to_tensor(images[val_idx], masks[val_idx], device)

    model, history, best = train_model(
        x_train,
        y_train,
        x_val,
        y_val,
        preset,
        epochs=epochs,
        seed=args.seed,
        budget_s=args.minutes * 60 if args.minutes else math.inf,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / f"{args.preset}.onnx"
    record = {
        "preset": asdict(preset),
        "epochs_run": len(history),
        "budget_minutes": args.minutes,
        "seed": args.seed,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "train_seconds": history[-1]["seconds"],
        "best_val_dice": round(best, 4),
        "history": history,
    }
    export_onnx(
        model,
        preset,
        onnx_path,
        {
            "version": args.version,
            "polypstream.training": f"seed={args.seed} epochs={len(history)} val_dice={best:.4f}",
        },
    )
    record_checksum(onnx_path)  # a named model is checked against it when loaded
    (args.out / f"{args.preset}.training.json").write_text(json.dumps(record, indent=1) + "\n")
    # The held-out ids: what models.training.tune_regions may tune on (never test.txt).
    (args.out / f"{args.preset}.val-ids.txt").write_text("\n".join(ids[i] for i in val_idx) + "\n")
    print(f"wrote {onnx_path}; best validation Dice {best:.4f}")


if __name__ == "__main__":
    main()
