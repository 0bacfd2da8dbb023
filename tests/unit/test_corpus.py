"""The HyperKvasir-shaped stand-in corpus: layout, metadata CSV, the official mix, ground truth."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from polypstream.capture import VideoSource
from polypstream.corpus import METADATA_CSV, GroundTruth, plan_corpus, read_metadata, write_corpus
from polypstream.dataset import read_image, read_mask
from polypstream.replay import find_videos
from polypstream.synth import CameraPose, render_frame, warp_mask
from tests.conftest import KVASIR_FIXTURES


def test_the_full_plan_follows_the_official_mix() -> None:
    plans = plan_corpus(373, seconds=2.0, fps=None)
    sizes = collections.Counter((p.width, p.height) for p in plans)
    assert sizes == {(720, 576): 289, (1280, 1024): 67, (1920, 1072): 11, (576, 576): 3, (768, 576): 3}
    assert collections.Counter(p.fps for p in plans) == {25.0: 347, 30.0: 23, 20.0: 3}
    assert sum(p.relpath.endswith(".mpg") for p in plans) == 3
    assert all(p.relpath.split("/")[1] in ("lower-gi-tract", "upper-gi-tract") for p in plans)
    lengths = sorted(p.frames / p.fps for p in plans)
    assert 1.0 < lengths[len(lengths) // 2] < 4.0  # median near --seconds
    assert len({p.relpath for p in plan_corpus(374, 2.0, None)}) == 374


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(out, KVASIR_FIXTURES, plan_corpus(4, seconds=0.4, fps=10.0, seed=3), seed=3)
    return out


def test_layout_csv_and_frame_counts_agree(corpus: Path) -> None:
    videos = find_videos(corpus / "labeled-videos")
    assert len(videos) == 4
    with (corpus / METADATA_CSV).open() as f:
        header = f.readline().strip()
    assert header == "file-name;finding;width;height;number-of-frames;fps;length;kilobytes"
    rows = read_metadata(corpus)
    for video in videos:
        row = rows[video.name]
        decoded = list(VideoSource(str(video)))
        assert len(decoded) == int(row["number-of-frames"])
        assert decoded[0].image.shape == (int(row["height"]), int(row["width"]), 3)
        assert video.parent.name == row["finding"]


def test_ground_truth_is_aligned_with_what_was_encoded(corpus: Path) -> None:
    video = find_videos(corpus / "labeled-videos")[0]
    frames = list(VideoSource(str(video)))
    sidecar = json.loads((corpus / "ground-truth" / f"{video.stem}.json").read_text())
    first = sidecar["frames"][0]
    pose = CameraPose(tuple(first["matrix"]), first["gain"], first["blur"])
    size = (sidecar["width"], sidecar["height"])
    # Re-rendering frame 0 from its recorded pose gives the encoded frame (up to compression)...
    rerendered = render_frame(read_image(KVASIR_FIXTURES / "images" / f"{first['image']}.jpg"), pose, size)
    assert np.abs(rerendered.astype(int) - frames[0].image.astype(int)).mean() < 6
    # ...and the ground truth is the source mask under that same pose.
    truth = GroundTruth(corpus).frames(video)
    assert truth is not None
    mask = truth(0)
    assert mask is not None and mask.shape == frames[0].image.shape[:2] and 0 < mask.mean() < 1
    source = read_mask(KVASIR_FIXTURES / "masks" / f"{first['image']}.jpg")
    # Checked against the recorded pose directly: frame pixel (u, v) shows source pixel A^-1 (u, v).
    inverse = cv2.invertAffineTransform(pose.affine())
    checked = 0
    for v in range(0, size[1], 7):
        for u in range(0, size[0], 7):
            x, y = inverse @ (u, v, 1.0)
            near_half = min(abs(x % 1 - 0.5), abs(y % 1 - 0.5)) < 0.05  # nearest neighbour could go either way
            if 0 <= x < source.shape[1] - 1 and 0 <= y < source.shape[0] - 1 and not near_half:
                assert mask[v, u] == source[round(y), round(x)], (u, v, x, y)
                checked += 1
    assert checked > 500
    assert truth(len(frames)) is None
    assert not np.array_equal(mask, truth(len(frames) - 1))  # the camera moved


def test_a_mask_follows_the_camera_pose() -> None:
    mask = np.zeros((20, 30), bool)
    mask[10:14, 15:20] = True  # 5 wide, 4 high at (15, 10), away from the reflected border
    shifted = warp_mask(mask, CameraPose((1.0, 0.0, 5.0, 0.0, 1.0, 3.0), 1.0, False), (30, 20))
    assert np.array_equal(np.argwhere(shifted), np.argwhere(mask) + np.array([3, 5]))  # 5 right, 3 down
    # scaled by 2 about a point that keeps every frame pixel off a nearest-neighbour tie:
    # frame (u, v) shows source (u / 2 - 0.25, v / 2 - 0.25)
    doubled = warp_mask(mask, CameraPose((2.0, 0.0, 0.5, 0.0, 2.0, 0.5), 1.0, False), (60, 40))
    rows, cols = np.nonzero(doubled)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 27, 30, 39)  # 10 wide, 8 high at (30, 20)
    assert doubled.sum() == 80


def test_stretches_away_from_the_polyp_are_polyp_free_in_the_ground_truth(tmp_path: Path) -> None:
    # Images with a small polyp leave room to look away from it: about 30 % of each camera
    # move is spent there, before the polyp comes into view.
    source = tmp_path / "source"
    for folder in ("images", "masks"):
        (source / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(3):
        image = rng.integers(40, 200, (240, 320, 3), dtype=np.uint8)
        mask = np.zeros((240, 320), np.uint8)
        mask[100:130, 140:180] = 255
        cv2.imwrite(str(source / "images" / f"p{k}.png"), image)
        cv2.imwrite(str(source / "masks" / f"p{k}.png"), mask)
    corpus = tmp_path / "corpus"
    write_corpus(corpus, source, plan_corpus(3, seconds=2.0, fps=10.0, seed=4), seed=4)
    truth = GroundTruth(corpus)
    total = free = 0
    for video in find_videos(corpus / "labeled-videos"):
        frames = json.loads((corpus / "ground-truth" / f"{video.stem}.json").read_text())["frames"]
        mask_of = truth.frames(video)
        assert mask_of is not None
        for i, entry in enumerate(frames):
            total += 1
            if entry.get("polyp_free"):
                free += 1
                assert not mask_of(i).any(), (video.name, i)  # type: ignore[union-attr]
        assert frames[-1].get("polyp_free") is None  # each move ends on the polyp
    assert 0.25 <= free / total <= 0.35
