"""Shared pieces of the benchmarks: the machine's name, realistic frames, JSON output."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np

from service.dataset import load_split, read_image, read_mask
from service.synth import render_clip

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIXTURES = ROOT / "tests" / "data" / "kvasir"


def device_name() -> str:
    """'NVIDIA H100 80GB HBM3' where a GPU answers nvidia-smi, else the CPU model and core count."""
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        if gpu.returncode == 0 and gpu.stdout.strip():
            return gpu.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def endoscopy_frames(count: int, size: tuple[int, int] = (720, 576), seed: int = 0) -> list[np.ndarray]:
    """`count` BGR frames of simulated endoscope motion over the fixture polyp images."""
    samples = load_split(FIXTURES)
    images = [read_image(s.image_path) for s in samples]
    masks = [read_mask(s.mask_path) for s in samples if s.mask_path is not None]
    per_image = max(1, -(-count // len(images)))
    frames = [frame for frame, _ in render_clip(images, masks, size, per_image, seed)]
    return frames[:count]


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def write_result(name: str, payload: dict[str, object], out: Path | None = None) -> Path:
    """benchmarks/results/<device>-<name>.json unless `out` says otherwise."""
    path = out or RESULTS / f"{slug(str(payload['device']))}-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
