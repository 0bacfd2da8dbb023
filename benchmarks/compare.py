"""The limit, the peer and ours, side by side on the same videos.

    python -m benchmarks.compare [--model fast] [--corpus DIR | --videos 8 --seconds 2] [--streams 2]

- limit: the model alone, onnxruntime on ready tensors, best frames/s over batch sizes;
- peer: a naive per-frame loop over the videos (decode, resize, run one frame, post-process,
  draw), what a first script does;
- ours: `polypstream replay` of the same videos through an in-process server (client decode,
  JPEG, gRPC, batching, post-processing; everything on this machine).

Without --corpus it writes a small HyperKvasir-shaped stand-in (`polypstream corpus`) from
the Kvasir-SEG fixtures. Prints the table with ours/limit and ours/naive; writes JSON.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from benchmarks.common import FIXTURES, command_line, device_name, write_result
from benchmarks.model_throughput import naive_step, time_batches
from polypstream.capture import VideoSource
from polypstream.config import EngineConfig, ServerConfig
from polypstream.corpus import plan_corpus, write_corpus
from polypstream.metrics import Metrics
from polypstream.pipeline import Pipeline
from polypstream.replay import find_videos, replay
from polypstream.runner import Runner, resolve_model
from polypstream.server import serve_in_thread


def naive_over_videos(runner: Runner, videos: list[Path], seconds: float) -> dict[str, float]:
    """Frames/s of the naive loop over the videos' frames (video decoding included)."""
    frames = 0
    started = time.perf_counter()
    for video in videos:
        for captured in VideoSource(str(video)):
            naive_step(runner, captured.image)
            frames += 1
            if time.perf_counter() - started > seconds:
                break
        if time.perf_counter() - started > seconds:
            break
    wall = time.perf_counter() - started
    return {"frames": frames, "fps": round(frames / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="fast, accurate or a path (default as serve)")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--corpus", type=Path, help="a folder of videos (default: a stand-in made here)")
    parser.add_argument("--videos", type=int, default=8, help="videos of the stand-in")
    parser.add_argument("--seconds", type=float, default=2.0, help="median length of the stand-in's videos")
    parser.add_argument("--streams", type=int, default=2, help="concurrent replay streams")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--limit-seconds", type=float, default=2.0, help="measuring time per batch size")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="polypstream-compare-") as tmp:
        corpus = args.corpus
        if corpus is None:
            corpus = Path(tmp)
            write_corpus(corpus, FIXTURES, plan_corpus(args.videos, args.seconds, None, seed=0), seed=0)
        videos = find_videos(corpus)
        path = resolve_model(args.model)
        batches = [int(b) for b in args.batches.split(",")]
        runner = Runner(path, device=args.device, max_batch=max(batches), spin=True)
        limit_rows = [time_batches(runner, b, args.limit_seconds) for b in batches]
        limit = max(limit_rows, key=lambda r: r["fps"])
        naive = naive_over_videos(runner, videos, 20.0)  # one frame per run, on the same session
        engine = EngineConfig(model=args.model, device=args.device, max_batch=args.max_batch)
        pipeline = Pipeline(
            Runner(path, device=args.device, max_batch=args.max_batch), engine, Metrics(CollectorRegistry())
        )
        pipeline.start()
        try:
            with serve_in_thread(pipeline, ServerConfig(address=f"unix:{tmp}/s.sock", metrics_address="")) as server:
                ours = replay(corpus, [server.address], streams=args.streams)
        finally:
            pipeline.stop()
    ours_fps = float(ours["fps"] or 0)  # type: ignore[arg-type]
    c = runner.contract
    payload = {
        "benchmark": "compare",
        "device": device_name(),
        "provider": runner.provider,
        "model": {"name": c.name, "version": c.version, "input": f"{c.input_width}x{c.input_height}"},
        "corpus": str(args.corpus) if args.corpus else f"stand-in: {args.videos} videos, median {args.seconds} s",
        "limit": {"best": limit, "batches": limit_rows},
        "naive": naive,
        "ours": {k: v for k, v in ours.items() if k != "latency_cdf_ms"},
        "ratios": {
            "ours_over_limit": round(ours_fps / limit["fps"], 3),
            "ours_over_naive": round(ours_fps / naive["fps"], 3),
        },
        "command": command_line("benchmarks.compare", args),
    }
    out = write_result("compare", payload, args.out)
    print(f"{payload['device']} · {runner.provider} · {c.name} {c.input_width}x{c.input_height} · {payload['corpus']}")
    print(f"  limit (model alone, batch {limit['batch']}): {limit['fps']:>8.1f} frames/s")
    print(f"  naive per-frame loop:               {naive['fps']:>8.1f} frames/s")
    print(f"  ours (replay, {args.streams} streams):            {ours_fps:>8.1f} frames/s")
    ratios = payload["ratios"]
    assert isinstance(ratios, dict)
    print(f"  ours/limit {ratios['ours_over_limit']:.2f}   ours/naive {ratios['ours_over_naive']:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
