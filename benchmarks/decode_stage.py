"""What a frame costs the server's CPU outside the model: the decode pool's work, on one thread
(decoding the JPEG at the reduced DCT scale the server picks for the model's input, then
preprocessing it: resize, channel order, normalise), and the batcher's post-processing (finding
the polyp regions of a probability map), alone and for a batch of 32 as the pipeline does it.

    python -m benchmarks.decode_stage [--models fast,accurate] [--size 1920x1080] [--seconds 2] [--out FILE]

Per model: the decoded size, median ms of each step, the frames a second one core can get ready
(the decode pool has a thread per core: how many cores K streams at 25 frames/s need), and the
regions of a batch of 32 on one thread and on the pipeline's threads (the batcher's thread does
the rest of each frame's post-processing in turn: what it can serve). OpenCV is kept on the
calling thread, as in `serve`; the pipeline has as many threads as this machine has cores.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from benchmarks.common import command_line, device_name, endoscopy_frames, jpeg, parse_size, timed_calls, write_result
from polypstream import pipeline as pipeline_module
from polypstream.batcher import Queued
from polypstream.capture import decode_encoded
from polypstream.config import EngineConfig
from polypstream.metrics import Metrics
from polypstream.pipeline import Pipeline
from polypstream.postprocess import locate_polyps
from polypstream.runner import Runner, resolve_model
from polypstream.threads import opencv_on_the_calling_thread


def median_ms(step: Callable[[int], object], seconds: float) -> float:
    """Median ms of `step(i)` over at least `seconds` (and at least 5 calls), after 3 warm-up calls."""
    for i in range(3):
        step(i)
    return round(statistics.median(timed_calls(step, seconds)) * 1e3, 3)


def decode_stage(model: str, size: tuple[int, int], seconds: float) -> dict[str, object]:
    """The decode pool's work for one frame of `size` served by `model`, measured on this thread."""
    opencv_on_the_calling_thread()
    runner = Runner(resolve_model(model), device="cpu", max_batch=8)
    c = runner.contract
    encoded = [jpeg(frame) for frame in endoscopy_frames(8, size)]
    model_size = (c.input_width, c.input_height)
    images = [decode_encoded(data, min_size=model_size)[0] for data in encoded]
    decode = median_ms(lambda i: decode_encoded(encoded[i % 8], min_size=model_size), seconds)
    preprocess = median_ms(lambda i: runner.preprocess(images[i % 8]), seconds)
    probs = runner.run([runner.preprocess(image) for image in images])
    width, height = size
    regions = median_ms(lambda i: locate_polyps(probs[i % 8], width, height, c.threshold), seconds)
    return {
        "model": f"{c.name} {c.version}",
        "input": f"{c.input_width}x{c.input_height}",
        "resize": c.resize,  # how the decoded frame is shrunk to the input (the model's polypstream.resize)
        "decoded_to": f"{images[0].shape[1]}x{images[0].shape[0]}",
        "decode_ms": decode,
        "preprocess_ms": preprocess,
        "frames_per_core_s": round(1e3 / (decode + preprocess), 1),
        "regions_ms": regions,
        "regions_batch_32_ms": regions_of_a_batch(runner, images, probs, size, seconds),
    }


def regions_of_a_batch(
    runner: Runner, images: list[np.ndarray], probs: np.ndarray, size: tuple[int, int], seconds: float
) -> dict[str, float | int]:
    """Median ms to find the regions of a batch of 32 maps: on one thread, and as the pipeline
    does (on several threads where the maps are large enough to gain by it)."""
    pipe = Pipeline(runner, EngineConfig(max_batch=32), Metrics(CollectorRegistry(), process=False))
    batch = [
        Queued(pipe.make_frame(f"k{i}", "s", 0, images[i % 8], 0.0, original_size=size), lambda _: None, 0.0)
        for i in range(32)
    ]
    maps = np.stack([probs[i % 8] for i in range(32)])
    served = median_ms(lambda _: pipe._regions(batch, maps), seconds)
    threads = pipe.region_shares if maps[0].size >= pipeline_module.PARALLEL_REGIONS_MIN_PIXELS else 1
    pipe.region_shares = 1  # the batcher's thread alone
    one = median_ms(lambda _: pipe._regions(batch, maps), seconds)
    pipe.stop()
    return {"one_thread": one, "pipeline": served, "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="fast,accurate")
    parser.add_argument("--size", default="1920x1080", help="frame size, WIDTHxHEIGHT")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per step")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    width, height = parse_size(args.size)
    rows = {model: decode_stage(model, (width, height), args.seconds) for model in args.models.split(",")}
    for model, row in rows.items():
        print(
            f"{model}: {args.size} JPEG decoded to {row['decoded_to']} in {row['decode_ms']} ms, preprocessed "
            f"to {row['input']} ({row['resize']}) in {row['preprocess_ms']} ms: {row['frames_per_core_s']} frames/s "
            "per core; "
            f"regions {row['regions_ms']} ms a frame, a batch of 32 {row['regions_batch_32_ms']}"
        )
    payload = {"benchmark": "decode_stage", "device": device_name(), "frames": f"{args.size} JPEG q90", "models": rows,
               "command": command_line("benchmarks.decode_stage", args)}  # fmt: skip
    print(f"wrote {write_result('decode-stage', payload, args.out)}")


if __name__ == "__main__":
    main()
