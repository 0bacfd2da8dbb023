"""Pack a Kvasir-SEG folder into one compact .npz (JPEG/PNG bytes at a fixed size).

The file carries the whole training set to the GPU machine in one small piece
and spares the training loop from decoding 1,000 full-size JPEGs every epoch.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import cv2
import numpy as np

from polypstream.dataset import load_split, read_image, read_mask


def _pack(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def _unpack(data: np.ndarray, offsets: np.ndarray, flags: int) -> list[np.ndarray]:
    out = []
    for start, end in itertools.pairwise(offsets):
        decoded = cv2.imdecode(data[start:end], flags)
        if decoded is None:
            raise ValueError("corrupt entry in cache")
        out.append(decoded)
    return out


def build_cache(
    data_dir: Path, out: Path, size: int, splits: tuple[str, ...] = ("train", "test"), quality: int = 95
) -> None:
    """Write the splits' images (size×size, JPEG at `quality`) and masks (PNG) to `out`."""
    arrays: dict[str, np.ndarray] = {}
    for split in splits:
        samples = load_split(data_dir, data_dir / f"{split}.txt")
        images, masks = [], []
        for sample in samples:
            if sample.mask_path is None:
                raise ValueError(f"{sample.image_id}: no mask")
            image = cv2.resize(read_image(sample.image_path), (size, size), interpolation=cv2.INTER_AREA)
            mask = read_mask(sample.mask_path).astype(np.uint8) * 255
            mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
            images.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
            masks.append(cv2.imencode(".png", mask)[1].tobytes())
        arrays[f"{split}_images"], arrays[f"{split}_image_offsets"] = _pack(images)
        arrays[f"{split}_masks"], arrays[f"{split}_mask_offsets"] = _pack(masks)
        arrays[f"{split}_ids"] = np.array([s.image_id for s in samples])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, size=np.int64(size), **arrays)


def load_cache(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N,H,W,3) uint8 BGR images, (N,H,W) float32 masks in [0,1] and ids of one split."""
    with np.load(path) as z:
        images = _unpack(z[f"{split}_images"], z[f"{split}_image_offsets"], cv2.IMREAD_COLOR)
        masks = _unpack(z[f"{split}_masks"], z[f"{split}_mask_offsets"], cv2.IMREAD_GRAYSCALE)
        ids = [str(i) for i in z[f"{split}_ids"]]
    return np.stack(images), np.stack(masks).astype(np.float32) / 255.0, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="Kvasir-SEG folder")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument("--size", type=int, default=352)
    parser.add_argument("--splits", default="train,test", help="e.g. train for the GPU run (test is read here, once)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the cached images")
    args = parser.parse_args()
    build_cache(args.data, args.out, args.size, tuple(args.splits.split(",")), args.quality)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
