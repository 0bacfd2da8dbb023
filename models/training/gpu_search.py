"""Several recipes for the accurate model, trained side by side in one GPU call; the best on the
validation images is the result.

    python -m models.training.gpu_search --cache .cache/kvasir-train-352.npz --out "$OUT" --budget-s 480

One training process (`models.training.gpu_run`) per recipe of --recipes, all started at once on
the one GPU: a 1.9 M-parameter U-Net left the H100 idle about a third of the time (the host
launching kernels and, before train.py stopped it, waiting on copies), so two recipes share it
at some cost in epochs each, recorded per recipe. Every recipe uses the same seed and so the same
validation images (drawn from train.txt before training); the one with the best validation Dice
through onnxruntime wins. Its files go to --out
(accurate.onnx, accurate-fp16.onnx, SHA256SUMS, accurate.training.json, accurate.val-ids.txt,
accurate.pt), with search.json: every recipe's arguments, validation Dice, epochs and status.
The test split is not in the cache; it is read once, afterwards, on the CPU machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

# name → gpu_run arguments. "base" is accurate 1's recipe (validation Dice 0.8658 on the same
# 140 images, test 0.854; 407 epochs alone on the H100); a recipe ships only if it beats that.
# "deep" adds a sixth level (widths chosen to keep fp32 + fp16 files within the 15 MB allowed):
# accurate 1's receptive field spans 220 of its 352 pixels, and it lost its Dice on the polyps
# that fill the frame (models/README.md, "Where accurate 1 loses"); six levels see 444.
DEEP = ["--widths", "16,32,64,96,160,192"]
MULTISCALE = ["--scales", "0.75,1,1.25"]
RECIPES: dict[str, list[str]] = {
    "base": [],
    "multiscale": MULTISCALE,
    "decay": ["--weight-decay", "0.05"],
    "multiscale-decay-b32": [*MULTISCALE, "--weight-decay", "0.05", "--batch", "32", "--lr", "3e-3"],
    "deep": DEEP,
    "deep-multiscale": [*DEEP, *MULTISCALE],
}
# Run by default: two, not more. The runs share one GPU, and accurate 1 alone kept it about
# two-thirds busy (its batch-32 forward pass, 9.2 ms, puts an epoch's work near 0.7 of the 1 s it
# took), so each further run takes epochs from the others.
DEFAULT = ("deep", "deep-multiscale")
KEPT = (
    "accurate.onnx",
    "accurate-fp16.onnx",
    "SHA256SUMS",
    "accurate.training.json",
    "accurate.val-ids.txt",
    "accurate.pt",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="a train-split .npz from models.training.cache")
    parser.add_argument("--out", type=Path, required=True, help="folder for the winner's files and search.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-search"), help="folder for every recipe's run")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall time for each run (they run at once)")
    parser.add_argument("--recipes", default=",".join(DEFAULT), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--extra", default="", help="arguments added to every run (the CPU rehearsal's tiny net)")
    args = parser.parse_args(argv)
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes: {', '.join(unknown)}")
    started = time.monotonic()
    runs = {}
    for name in names:
        folder = args.work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        command = [
            sys.executable, "-m", "models.training.gpu_run", "--cache", str(args.cache), "--out", str(folder),
            "--budget-s", str(args.budget_s), *RECIPES[name], *args.extra.split(),
        ]  # fmt: skip
        log = (folder / "run.log").open("w")
        runs[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), command, log)
        print(f"started {name}: {' '.join(command[2:])}", flush=True)
    # Each run keeps to its budget; one that does not is stopped, so that the others' results
    # and search.json are still written before the device call's own time limit.
    deadline = started + args.budget_s + 45.0
    results = {}
    for name, (proc, command, log) in runs.items():
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        log.close()
        folder = args.work / name
        record = folder / "accurate.training.json"
        summary = json.loads(record.read_text()) if record.is_file() else {}
        results[name] = {
            "arguments": command[2:],
            "exit": code,
            "val_dice_onnxruntime": summary.get("val_onnxruntime", {}).get("dice"),
            "best_val_dice_torch": summary.get("best_val_dice_torch"),
            "val_dice_by_extent": summary.get("val_dice_by_extent"),
            "epochs_run": summary.get("epochs_run"),
            "train_seconds": summary.get("train_seconds"),
            "log_tail": (folder / "run.log").read_text()[-600:] if code else "",
        }
        print(f"{name}: exit {code}, validation Dice {results[name]['val_dice_onnxruntime']}, "
              f"{results[name]['epochs_run']} epochs", flush=True)  # fmt: skip
    scored = {n: r["val_dice_onnxruntime"] for n, r in results.items() if r["exit"] == 0 and r["val_dice_onnxruntime"]}
    args.out.mkdir(parents=True, exist_ok=True)
    winner = max(scored, key=lambda n: scored[n]) if scored else None
    if winner is not None:
        for name in KEPT:
            if (args.work / winner / name).is_file():
                shutil.copy2(args.work / winner / name, args.out / name)
    search = {"winner": winner, "seconds": round(time.monotonic() - started, 1), "recipes": results}
    (args.out / "search.json").write_text(json.dumps(search, indent=1) + "\n")
    print(f"winner: {winner} ({scored.get(winner) if winner else 'none'}) in {search['seconds']} s", flush=True)
    return 0 if winner is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
