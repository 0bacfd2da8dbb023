"""The HyperKvasir-shaped stand-in corpus: layout, metadata CSV, the official mix, ground truth."""

from __future__ import annotations

import collections
import json
from pathlib import Path

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
    assert np.array_equal(mask, warp_mask(read_mask(KVASIR_FIXTURES / "masks" / f"{first['image']}.jpg"), pose, size))
    assert truth(len(frames)) is None
    assert not np.array_equal(mask, truth(len(frames) - 1))  # the camera moved
