"""The limit and the peer: raw batched onnxruntime throughput of a model, and a naive
per-frame loop (decode JPEG, resize, session.run on one frame, post-process, draw).

    python -m benchmarks.model_throughput [--model fast] [--batches 1,2,4,8] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from benchmarks.common import command_line, device_name, endoscopy_frames, jpeg, timed_calls, write_result
from polypstream.capture import decode_encoded
from polypstream.postprocess import draw_overlay, find_polyps, min_region_area, probability_to_mask
from polypstream.runner import Runner, resolve_model


def time_batches(runner: Runner, batch: int, seconds: float) -> dict[str, float]:
    """Median ms per batch and frames/s of session runs on a fixed random input."""
    c = runner.contract
    inputs = list(np.random.default_rng(0).standard_normal((batch, 3, c.input_height, c.input_width), np.float32))
    for _ in range(3):
        runner.run(inputs)
    times = timed_calls(lambda _: runner.run(inputs), seconds)
    median = statistics.median(times)
    return {"batch": batch, "ms_per_batch": round(median * 1e3, 3), "fps": round(batch / median, 1), "runs": len(times)}


def naive_step(runner: Runner, image: np.ndarray) -> None:
    """What a first script does with a frame: resize, run alone, post-process, draw."""
    prob = runner.run([runner.preprocess(image)])[0]
    mask, full = probability_to_mask(prob, image.shape[1], image.shape[0], runner.contract.threshold)
    draw_overlay(image, mask, find_polyps(mask, full, min_region_area(image.shape[1], image.shape[0])))


def naive_loop(runner: Runner, encoded: list[bytes], seconds: float) -> dict[str, float]:
    """The naive loop over JPEG frames: decode, then every stage in sequence, one at a time."""
    times = timed_calls(lambda i: naive_step(runner, decode_encoded(encoded[i % len(encoded)])[0]), seconds)
    median = statistics.median(times)
    return {"ms_per_frame": round(median * 1e3, 3), "fps": round(1 / median, 1), "frames": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="fast, accurate or a path (default as serve)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per batch size")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    path = resolve_model(args.model)
    runner = Runner(path, device=args.device, max_batch=max(batches), threads=args.threads, spin=True)
    frames = [jpeg(f) for f in endoscopy_frames(32)]
    limit = [time_batches(runner, b, args.seconds) for b in batches]
    naive = naive_loop(runner, frames, args.seconds * 2)
    c = runner.contract
    payload = {
        "benchmark": "model_throughput",
        "device": device_name(),
        "provider": runner.provider,
        "model": {
            "name": c.name,
            "version": c.version,
            "input": f"{c.input_width}x{c.input_height}",
            "path": str(path),
        },
        "frames": "720x576 JPEG q90 (simulated endoscope motion over Kvasir-SEG fixtures)",
        "limit": limit,
        "naive": naive,
        "command": command_line("benchmarks.model_throughput", args),
    }
    out = write_result("model_throughput", payload, args.out)
    print(f"{payload['device']} · {runner.provider} · {c.name} {c.input_width}x{c.input_height}")
    for row in limit:
        print(f"  batch {row['batch']:>3}: {row['ms_per_batch']:>9.3f} ms/batch {row['fps']:>9.1f} frames/s")
    print(f"  naive per-frame loop: {naive['ms_per_frame']:.3f} ms/frame, {naive['fps']:.1f} frames/s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
