"""Endoscope-like video made from still polyp images: smooth pan, zoom, rotation, blur and
lighting drift, with the ground-truth mask of every frame warped the same way.

Makes the bundled sample clip (and, later, HyperKvasir-shaped stand-in corpora):

    python -m service.synth --from tests/data/kvasir --out service/data/sample.mp4
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .dataset import load_split, read_image, read_mask


@dataclass(frozen=True)
class CameraPose:
    """Where the simulated endoscope looks in one frame: an affine map from the still image
    to the frame, a lighting gain, and whether the frame has motion blur."""

    matrix: tuple[float, ...]  # 2×3, row-major
    gain: float
    blur: bool

    def affine(self) -> np.ndarray:
        return np.array(self.matrix, dtype=np.float64).reshape(2, 3)


def camera_poses(
    image_shape: tuple[int, ...], size: tuple[int, int], frames: int, rng: np.random.Generator
) -> Iterator[CameraPose]:
    """A slow, wobbling camera move over one image: eased zoom, pan and rotation."""
    width, height = size
    ih, iw = image_shape[:2]
    base = max(width / iw, height / ih)  # fill the frame
    zoom0, zoom1 = rng.uniform(1.0, 1.15), rng.uniform(1.2, 1.5)
    pan = rng.uniform(-0.12, 0.12, size=4)
    angle0, angle1 = rng.uniform(-12, 12, size=2)
    phase = rng.uniform(0, 2 * math.pi)
    for i in range(frames):
        t = i / max(1, frames - 1)
        ease = 0.5 - 0.5 * math.cos(math.pi * t)
        zoom = base * (zoom0 + (zoom1 - zoom0) * ease)
        cx = iw * (0.5 + pan[0] + (pan[1] - pan[0]) * ease + 0.01 * math.sin(phase + 9 * t))
        cy = ih * (0.5 + pan[2] + (pan[3] - pan[2]) * ease + 0.01 * math.cos(phase + 7 * t))
        angle = angle0 + (angle1 - angle0) * ease
        matrix = cv2.getRotationMatrix2D((cx, cy), angle, zoom)
        matrix[0, 2] += width / 2 - cx
        matrix[1, 2] += height / 2 - cy
        gain = 1.0 + 0.12 * math.sin(phase + 5 * t)
        blur = bool(rng.random() < 0.1)  # motion blur, as when the scope moves quickly
        yield CameraPose(tuple(float(v) for v in matrix.ravel()), gain, blur)


def poses_away_from_the_polyp(
    mask: np.ndarray, size: tuple[int, int], frames: int, rng: np.random.Generator
) -> list[CameraPose]:
    """A camera looking at mucosa away from the polyp: zoomed in (2-4x the framing of
    `camera_poses`), on a spot whose whole view is inside the image (no reflected border) and
    at least 3 % of the image away from every polyp pixel, drifting a little. [] when the
    polyp leaves no such spot (large polyps)."""
    width, height = size
    ih, iw = mask.shape[:2]
    base = max(width / iw, height / ih)
    away = cv2.distanceTransform((~mask.astype(bool)).astype(np.uint8), cv2.DIST_L2, 5)
    margin = 0.03 * max(iw, ih)
    for zoom_factor in (2.0, 3.0, 4.0):
        zoom = base * zoom_factor
        reach = math.hypot(width, height) / (2 * zoom)  # half the view's diagonal, in image pixels
        drift = 0.01 * max(iw, ih)
        inside = np.zeros_like(away, dtype=bool)
        lo_x, hi_x = math.ceil(reach + drift), int(iw - reach - drift)
        lo_y, hi_y = math.ceil(reach + drift), int(ih - reach - drift)
        if lo_x >= hi_x or lo_y >= hi_y:
            continue
        inside[lo_y:hi_y, lo_x:hi_x] = True
        ys, xs = np.nonzero(inside & (away > reach + drift + margin))
        if len(xs) == 0:
            continue
        k = int(rng.integers(len(xs)))
        cx0, cy0 = float(xs[k]), float(ys[k])
        angle, phase = rng.uniform(-12, 12), rng.uniform(0, 2 * math.pi)
        poses = []
        for i in range(frames):
            t = i / max(1, frames - 1)
            cx = cx0 + drift * math.sin(phase + 3 * t)
            cy = cy0 + drift * math.cos(phase + 2 * t)
            matrix = cv2.getRotationMatrix2D((cx, cy), angle, zoom)
            matrix[0, 2] += width / 2 - cx
            matrix[1, 2] += height / 2 - cy
            poses.append(
                CameraPose(tuple(float(v) for v in matrix.ravel()), 1.0 + 0.1 * math.sin(phase + 4 * t), False)
            )
        return poses
    return []


def render_frame(image: np.ndarray, pose: CameraPose, size: tuple[int, int]) -> np.ndarray:
    """The BGR frame the camera sees at `pose`."""
    frame = cv2.warpAffine(image, pose.affine(), size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    frame = cv2.convertScaleAbs(frame, alpha=pose.gain, beta=0)
    return cv2.blur(frame, (7, 1)) if pose.blur else frame


def warp_mask(mask: np.ndarray, pose: CameraPose, size: tuple[int, int]) -> np.ndarray:
    """The ground-truth mask of the frame at `pose` (the same warp, nearest neighbour)."""
    warped = cv2.warpAffine(
        mask.astype(np.uint8), pose.affine(), size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT
    )
    return warped.astype(bool)


def camera_path(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int], frames: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frames of a camera move over one image: (BGR frame, bool mask) pairs."""
    for pose in camera_poses(image.shape, size, frames, rng):
        yield render_frame(image, pose, size), warp_mask(mask, pose, size)


def render_clip(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    size: tuple[int, int],
    frames_per_image: int,
    seed: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Camera moves over each image in turn."""
    rng = np.random.default_rng(seed)
    for image, mask in zip(images, masks, strict=True):
        yield from camera_path(image, mask, size, frames_per_image, rng)


def write_video(path: Path, frames: Iterator[np.ndarray], size: tuple[int, int], fps: float) -> int:
    """Write BGR frames with OpenCV (mp4v for .mp4/.mov, MJPG for .avi); returns the frame count."""
    fourcc = cv2.VideoWriter.fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), fourcc, fps, size)
    if not writer.isOpened():
        raise OSError(f"{path}: cannot open a video writer")
    count = 0
    try:
        for frame in frames:
            writer.write(frame)
            count += 1
    finally:
        writer.release()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, required=True, help="Kvasir-SEG layout folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=360)
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--frames-per-image", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    samples = load_split(args.source)
    images = [read_image(s.image_path) for s in samples]
    masks = [
        read_mask(s.mask_path) if s.mask_path else np.zeros(i.shape[:2], bool)
        for s, i in zip(samples, images, strict=True)
    ]
    size = (args.width, args.height)
    clip = render_clip(images, masks, size, args.frames_per_image, args.seed)
    count = write_video(args.out, (frame for frame, _ in clip), size, args.fps)
    print(f"wrote {args.out}: {count} frames {args.width}x{args.height} at {args.fps} fps")


if __name__ == "__main__":
    main()
