"""Alerts when frames go unseen: does an alert rule keep its times when the service looks at
only some of a stream's frames (an overloaded server answers the rest DROPPED_LATE, a live
client skips the frames a slow link cannot carry, a live source has no room for them)?

The model runs once per video of a stand-in corpus; then, for each pattern of frames looked at,
the looked-at frames go through one IoU tracker per video (as a stream's do) and each rule is
scored two ways: counting the frames of the stream by their index (`Alerts.update(polyps,
index)`: a frame not looked at is time passing; what the service does since 2026-11-28), and
counting only the frames looked at (what it did before). Frames not looked at have no answer:
the per-frame scores cover the frames looked at; a polyp's first-detection delay runs from its
first ground-truth frame, looked at or not.

    python -m benchmarks.alerts_skipped --model fast --corpus /tmp/alert/corpus
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.alert_rates import summary
from benchmarks.common import command_line, device_name, slug, write_result
from polypstream.alerts import RAW, RULE_FPS, AlertRule
from polypstream.cli import resolve_model
from polypstream.frames import Polyp
from polypstream.runner import Runner
from polypstream.video_eval import VideoTally, score_video
from polypstream.video_sources import detect, open_labelled, track

KEYS = ("per_polyp_sensitivity", "per_frame_sensitivity", "per_frame_precision", "activations", "fp_activations",
        "fp_per_minute")  # fmt: skip
WAYS = {"by_index": True, "looked_at_only": False}


def bursts(seed: int) -> Callable[[int], list[bool]]:
    """Outages of 1 to 8 frames between runs of 2 to 12 frames looked at (about 28 % unseen),
    drawn from `seed` and the video's number, so every rule and way sees the same frames."""

    def looked(frames: int, video: int = 0) -> list[bool]:
        rng = random.Random(seed * 100_003 + video)
        out: list[bool] = []
        while len(out) < frames:
            out += [True] * rng.randint(2, 12) + [False] * rng.randint(1, 8)
        return out[:frames]

    return looked


def regular(period: int, kept: int) -> Callable[[int], list[bool]]:
    """`kept` of every `period` frames looked at, the first ones of each period."""

    def looked(frames: int, video: int = 0) -> list[bool]:
        return [i % period < kept for i in range(frames)]

    return looked


PATTERNS: dict[str, Callable[..., list[bool]]] = {
    "every frame": regular(1, 1),
    "2 of 3": regular(3, 2),
    "every 2nd": regular(2, 1),
    "every 4th": regular(4, 1),
    "bursts": bursts(13),
}


def load_detections(corpus: Path, runner: Runner, cache: Path | None) -> list[tuple[float, list, list[list[Polyp]]]]:
    """Per video: (fps, ground truth, the model's polyps per frame), from `cache` where it holds them."""
    if cache is not None and cache.exists():
        rows = json.loads(cache.read_text())
        return [
            (
                fps,
                [[tuple(b) for b in boxes] for boxes in truth],
                [[Polyp(tuple(p[0]), p[1], p[2]) for p in f] for f in found],
            )
            for fps, truth, found in rows
        ]
    videos = [(video.fps, video.truth, detect(video, runner)) for video in open_labelled(corpus)]
    if cache is not None:
        rows = [(fps, truth, [[(p.box, p.score, p.area) for p in f] for f in found]) for fps, truth, found in videos]
        cache.write_text(json.dumps(rows))
    return videos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--corpus", type=Path, required=True, help="a stand-in corpus")
    parser.add_argument("--detections", type=Path, default=None, help="cache of the model's polyps per frame")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.monotonic()
    runner = Runner(resolve_model(args.model), device="cpu", max_batch=8, spin=True)
    model_rule = runner.contract.alert_rule or AlertRule()
    rules = list(dict.fromkeys([model_rule, RAW, AlertRule(2, 2, 4), AlertRule(3, 3, 4), AlertRule(4, 4, 4)]))
    videos = load_detections(args.corpus, runner, args.detections)
    print(f"{len(videos)} videos detected, {time.monotonic() - started:.0f} s", flush=True)
    patterns = []
    for name, pattern in PATTERNS.items():
        tallies = {way: {rule: VideoTally() for rule in rules} for way in WAYS}
        looked_frames = frames = 0
        for number, (fps, truth, found) in enumerate(videos):
            looked = pattern(len(found), number)
            looked_frames += sum(looked)
            frames += len(found)
            tracked = track([f if seen else None for f, seen in zip(found, looked, strict=True)])
            for way, by_index in WAYS.items():
                for rule in rules:
                    tallies[way][rule].merge(score_video(tracked, truth, fps, rule.at_rate(fps), by_index=by_index))
        entry = {
            "pattern": name,
            "looked_at": round(looked_frames / frames, 4),
            **{way: [summary(rule, by_rule[rule], KEYS) for rule in rules] for way, by_rule in tallies.items()},
        }
        patterns.append(entry)
        print(f"{name} ({entry['looked_at']:.0%} looked at), {model_rule}:", flush=True)
        for way in WAYS:
            row = next(row for row in entry[way] if AlertRule(**row["rule"]) == model_rule)
            print(f"  {way}: {row}", flush=True)
    payload = {
        "benchmark": "alerts_skipped",
        "device": device_name(),
        "command": command_line("benchmarks.alerts_skipped", args),
        "model": f"{runner.contract.name} {runner.contract.version}",
        "model_rule": str(model_rule),
        "rule_fps": RULE_FPS,
        "videos": len(videos),
        "patterns": patterns,
    }
    path = write_result(f"alerts-skipped-{slug(runner.contract.name)}", payload, args.out)
    print(f"wrote {path} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
