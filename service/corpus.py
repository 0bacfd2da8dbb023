"""A HyperKvasir-shaped stand-in corpus, for when the real 374 videos are not at hand.

    polypstream corpus OUT --from KVASIR_SEG_DIR [--videos 374] [--seconds 2] [--fps F]

writes `OUT/labeled-videos/{lower,upper}-gi-tract/<category>/<finding>/<uuid>.avi|.mpg`, the
metadata CSV in HyperKvasir's format (`hyper-kvasir-video-metadata.csv`, `;`-separated) and
`OUT/ground-truth/`: per video a JSON sidecar with each frame's source image and camera pose,
and the source masks, so every frame's ground-truth mask can be rebuilt exactly.

The videos follow the official mix (hyper-kvasir-video-metadata.csv: 373 videos; 720×576 289,
1280×1024 67, 1920×1072 11, 576×576 3, 768×576 3; 25 fps 347, 30 fps 23, 20 fps 3; 370 .avi,
3 .mpg), scaled down in length, and are made from real Kvasir-SEG polyp images with a
simulated endoscope's motion. Whatever their folder says, every video shows polyps: the
folders only reproduce the layout. The real HyperKvasir folder with its CSV replays the same way.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .dataset import DatasetError, load_split, read_image, read_mask
from .synth import CameraPose, camera_poses, poses_away_from_the_polyp, render_frame, warp_mask

METADATA_CSV = "hyper-kvasir-video-metadata.csv"
CSV_FIELDS = ("file-name", "finding", "width", "height", "number-of-frames", "fps", "length", "kilobytes")
RESOLUTIONS = (((720, 576), 289), ((1280, 1024), 67), ((1920, 1072), 11), ((576, 576), 3), ((768, 576), 3))
FRAME_RATES = ((25.0, 347), (30.0, 23), (20.0, 3))
MPG_VIDEOS = 3  # of 373; MPEG-1 has no 20 fps, so these go to 25/30 fps videos
# (tract, category, finding) folders in HyperKvasir's layout, with the share of videos each gets here.
FOLDERS = (
    (("lower-gi-tract", "pathological-findings", "polyps"), 0.6),
    (("lower-gi-tract", "therapeutic-interventions", "dyed-lifted-polyps"), 0.1),
    (("lower-gi-tract", "anatomical-landmarks", "cecum"), 0.1),
    (("lower-gi-tract", "quality-of-mucosal-views", "bbps-2-3"), 0.1),
    (("upper-gi-tract", "anatomical-landmarks", "pylorus"), 0.1),
)


@dataclass(frozen=True)
class VideoPlan:
    """One video to write: where, which finding, size, rate, length and container."""

    relpath: str
    finding: str
    width: int
    height: int
    fps: float
    frames: int


def plan_corpus(videos: int, seconds: float, fps: float | None, seed: int = 0) -> list[VideoPlan]:
    """The official mix of sizes, rates and containers for `videos` videos (373 is the full list;
    more repeat it, fewer take a seeded sample). Lengths: `seconds` × a log-uniform factor in
    [1/4, 4], so the median video lasts `seconds` and lengths spread as the real ones do."""
    rng = np.random.default_rng(seed)
    sizes = [size for size, count in RESOLUTIONS for _ in range(count)]
    rates = [rate for rate, count in FRAME_RATES for _ in range(count)]
    rng.shuffle(sizes)
    rng.shuffle(rates)
    mpg = set(rng.choice([i for i, r in enumerate(rates) if r != 20.0], MPG_VIDEOS, replace=False).tolist())
    folders = [f for f, _ in FOLDERS]
    weights = np.array([w for _, w in FOLDERS])
    plans = []
    for n in range(videos):
        i = n % len(sizes)
        width, height = sizes[i]
        rate = fps or rates[i]
        suffix = ".mpg" if i in mpg and rate in (25.0, 30.0) else ".avi"
        tract, category, finding = folders[int(rng.choice(len(folders), p=weights / weights.sum()))]
        length = seconds * math.exp(rng.uniform(math.log(0.25), math.log(4.0)))
        name = f"{uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63)), version=4)}{suffix}"
        plans.append(
            VideoPlan(
                f"labeled-videos/{tract}/{category}/{finding}/{name}",
                finding,
                width,
                height,
                rate,
                max(10, round(length * rate)),
            )
        )
    return plans


@contextlib.contextmanager
def _c_stderr_silenced(silence: bool) -> Iterator[None]:
    """Keep the C library's stderr quiet for a moment: OpenCV's FFmpeg writer prints "tag ... is
    not supported" straight to it for every MPEG program stream (whose muxer takes no codec
    tags), bypassing OpenCV's log level; the file it writes is fine."""
    if not silence:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _fourcc(path: str) -> int:
    return cv2.VideoWriter.fourcc(*("PIM1" if path.endswith(".mpg") else "XVID"))


# Share of each camera move spent away from the polyp, before it comes into view (as a scope
# moves along normal mucosa before it meets one): footage where false alarms can be counted.
POLYP_FREE_SHARE = 0.3


def _poses(plan: VideoPlan, images: _SourceImages, rng: np.random.Generator) -> Iterator[tuple[str, CameraPose, bool]]:
    """(source image id, pose, polyp-free) per frame: 1–3 images per video, each a stretch of
    mucosa away from the polyp (when the image has room for one) and then a camera move over it."""
    count = int(rng.integers(1, min(3, len(images.shapes)) + 1))
    picks = [images.shapes[int(j)] for j in rng.choice(len(images.shapes), count, replace=False)]
    bounds = np.linspace(0, plan.frames, count + 1).round().astype(int)
    size = (plan.width, plan.height)
    for (image_id, shape), start, end in zip(picks, bounds[:-1], bounds[1:], strict=True):
        frames = int(end - start)
        away = poses_away_from_the_polyp(images.mask(image_id), size, round(POLYP_FREE_SHARE * frames), rng)
        for pose in away:
            yield image_id, pose, True
        for pose in camera_poses(shape, size, frames - len(away), rng):
            yield image_id, pose, False


class _SourceImages:
    """The Kvasir-SEG images a corpus is made of, read once each (a few dozen held at a time),
    each image's mask written to the ground truth the first time the image is used."""

    def __init__(self, kvasir: Path, truth_dir: Path) -> None:
        samples = [s for s in load_split(kvasir) if s.mask_path is not None]
        if not samples:
            raise DatasetError(f"{kvasir}: no images with masks")
        self.samples = {s.image_id: s for s in samples}
        self.shapes = [(s.image_id, read_image(s.image_path).shape) for s in samples]
        self.masks_dir = truth_dir / "masks"
        self.masks_dir.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}

    def mask(self, image_id: str) -> np.ndarray:
        if image_id not in self._masks:
            mask_path = self.samples[image_id].mask_path
            assert mask_path is not None  # samples were filtered on it
            self._masks[image_id] = read_mask(mask_path)
        return self._masks[image_id]

    def image(self, image_id: str) -> np.ndarray:
        if image_id not in self._cache:
            if len(self._cache) >= 64:
                self._cache.clear()
            sample = self.samples[image_id]
            self._cache[image_id] = read_image(sample.image_path)
            mask_file = self.masks_dir / f"{image_id}.png"
            if not mask_file.exists():
                cv2.imwrite(str(mask_file), self.mask(image_id).astype(np.uint8) * 255)
        return self._cache[image_id]


def _write_video(path: Path, plan: VideoPlan, images: _SourceImages, rng: np.random.Generator) -> list[dict]:
    """Render one planned video; returns each frame's source image and camera pose."""
    size = (plan.width, plan.height)
    with _c_stderr_silenced(path.suffix == ".mpg"):
        writer = cv2.VideoWriter(str(path), _fourcc(plan.relpath), plan.fps, size)
    if not writer.isOpened():
        raise OSError(f"{path}: cannot open a video writer")
    frames = []
    try:
        for image_id, pose, polyp_free in _poses(plan, images, rng):
            writer.write(render_frame(images.image(image_id), pose, size))
            frame = {"image": image_id, "matrix": list(pose.matrix), "gain": pose.gain, "blur": pose.blur}
            frames.append(frame | ({"polyp_free": True} if polyp_free else {}))
    finally:
        writer.release()
    return frames


def write_corpus(
    out: Path,
    kvasir: Path,
    plans: list[VideoPlan],
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Render every planned video, its ground-truth sidecar and the metadata CSV."""
    truth_dir = out / "ground-truth"
    images = _SourceImages(kvasir, truth_dir)
    rng = np.random.default_rng(seed + 1)
    rows = []
    for n, plan in enumerate(plans):
        path = out / plan.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = _write_video(path, plan, images, rng)
        sidecar = {"video": plan.relpath, "width": plan.width, "height": plan.height, "fps": plan.fps, "frames": frames}
        (truth_dir / f"{path.stem}.json").write_text(json.dumps(sidecar))
        rows.append(
            {
                "file-name": path.name,
                "finding": plan.finding,
                "width": plan.width,
                "height": plan.height,
                "number-of-frames": len(frames),
                "fps": f"{plan.fps:g}",
                "length": f"{len(frames) / plan.fps:.2f}",
                "kilobytes": round(path.stat().st_size / 1024),
            }
        )
        if progress is not None:
            progress(n + 1, len(plans))
    with (out / METADATA_CSV).open("w", newline="") as f:
        writer_csv = csv.DictWriter(f, fieldnames=CSV_FIELDS, delimiter=";")
        writer_csv.writeheader()
        writer_csv.writerows(rows)


def read_metadata(corpus: Path) -> dict[str, dict[str, str]]:
    """Rows of the corpus's HyperKvasir metadata CSV by file name ({} when there is none)."""
    path = corpus / METADATA_CSV
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["file-name"]: row for row in csv.DictReader(f, delimiter=";")}


class GroundTruth:
    """Ground-truth masks of a stand-in corpus's frames, rebuilt from the sidecars."""

    def __init__(self, corpus: Path) -> None:
        self.root = corpus / "ground-truth"
        self._masks: dict[str, np.ndarray] = {}

    def available(self) -> bool:
        return self.root.is_dir()

    def frames(self, video: Path) -> Callable[[int], np.ndarray | None] | None:
        """A function from frame index to that frame's mask, or None if this video has no sidecar."""
        sidecar = self.root / f"{video.stem}.json"
        if not sidecar.is_file():
            return None
        meta = json.loads(sidecar.read_text())
        size = (int(meta["width"]), int(meta["height"]))
        poses = meta["frames"]

        def mask(index: int) -> np.ndarray | None:
            if index >= len(poses):
                return None
            entry = poses[index]
            return warp_mask(self._mask(entry["image"]), CameraPose(tuple(entry["matrix"]), 1.0, False), size)

        return mask

    def _mask(self, image_id: str) -> np.ndarray:
        if image_id not in self._masks:
            self._masks[image_id] = read_mask(self.root / "masks" / f"{image_id}.png")
        return self._masks[image_id]
