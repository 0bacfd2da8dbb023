"""Labelled-video readers and the video evaluation over the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from polypstream.alerts import AlertRule
from polypstream.dataset import DatasetError
from polypstream.frames import Polyp
from polypstream.postprocess import mask_boxes
from polypstream.runner import Runner
from polypstream.video_eval import score_video
from polypstream.video_sources import evaluate_videos, open_labelled, predict, track
from tests.conftest import square_image, write_clip

SQUARES = [(8 + 2 * i, 24, 32, 24) for i in range(12)]  # write_clip's square, frame by frame


def clip_with_sidecar(folder: Path, boxes: list[list[list[int]]] | None = None) -> Path:
    video = write_clip(folder / "clip.avi", frames=12, fps=10.0)
    frames = boxes if boxes is not None else [[list(b)] for b in SQUARES]
    (folder / "clip.boxes.json").write_text(json.dumps({"fps": 10, "frames": frames}))
    return video


def test_a_video_with_a_boxes_sidecar_reads_its_frames_and_boxes(tmp_path: Path) -> None:
    (video,) = open_labelled(clip_with_sidecar(tmp_path))
    assert (video.name, video.fps, video.truth) == ("clip.avi", 10.0, [[b] for b in SQUARES])
    assert sum(1 for _ in video.frames()) == 12


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ([[[8, 24, 32, 24]]] * 11, r"clip\.boxes\.json: has 11 frames of boxes; clip\.avi has more"),
        ([[[8, 24, 32, 24]]] * 13, r"clip\.boxes\.json: has 13 frames of boxes; clip\.avi has 12"),
    ],
)
def test_a_sidecar_whose_frame_count_differs_from_the_videos_is_refused(
    tmp_path: Path, boxes: list[list[list[int]]], message: str
) -> None:
    (video,) = open_labelled(clip_with_sidecar(tmp_path, boxes))
    with pytest.raises(DatasetError, match=message):
        list(video.frames())


@pytest.mark.parametrize("box", [[90, 24, 10, 10], [0, -1, 5, 5], [0, 0, 0, 5]])
def test_a_box_outside_the_frame_is_refused_naming_the_frame(tmp_path: Path, box: list[int]) -> None:
    boxes = [[list(b)] for b in SQUARES]
    boxes[3] = [box]
    with pytest.raises(DatasetError, match=r"clip\.boxes\.json: frame 3: box .* is not inside the 96x80 frame"):
        open_labelled(clip_with_sidecar(tmp_path, boxes))


@pytest.mark.parametrize("box", [[1, 2, 3], [1, 2, 3, 4, 5]])
def test_a_box_of_other_than_four_numbers_is_refused_as_such(tmp_path: Path, box: list[int]) -> None:
    boxes = [[list(b)] for b in SQUARES]
    boxes[3] = [box]
    with pytest.raises(DatasetError) as raised:
        open_labelled(clip_with_sidecar(tmp_path, boxes))
    assert str(raised.value).endswith(f"clip.boxes.json: frame 3: box {box} is not [x, y, width, height]")


def frame_folder(folder: Path, frames: int = 4) -> Path:
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for i in range(frames):
        cv2.imwrite(str(folder / "images" / f"f{i}.png"), square_image(box=SQUARES[i]))
        mask = np.zeros((80, 96), np.uint8)
        x, y, w, h = SQUARES[i]
        mask[y : y + h, x : x + w] = 255
        cv2.imwrite(str(folder / "masks" / f"f{i}.png"), mask)
    (folder / "frames.txt").write_text("\n".join(f"f{i}" for i in reversed(range(frames))) + "\n")  # its order
    return folder


def test_a_frame_folder_plays_in_the_order_of_frames_txt_with_boxes_from_its_masks(tmp_path: Path) -> None:
    (video,) = open_labelled(frame_folder(tmp_path / "seq"), fps=5.0)
    assert (video.name, video.fps) == ("seq", 5.0)
    assert video.truth == [[SQUARES[i]] for i in reversed(range(4))]
    assert len(list(video.frames())) == 4


def test_a_frame_folder_missing_a_mask_is_refused(tmp_path: Path) -> None:
    folder = frame_folder(tmp_path / "seq")
    (folder / "masks" / "f2.png").unlink()
    with pytest.raises(DatasetError, match=r"seq: frame f2 \(frames\.txt\) has no mask"):
        open_labelled(folder)


def test_mask_boxes_leave_out_noise() -> None:
    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:30] = True
    mask[50, 50] = True  # 1 pixel of 10,000: under 0.1 %
    assert mask_boxes(mask) == [(10, 10, 20, 10)]


def test_the_tiny_model_on_a_labelled_clip_scored_end_to_end(tmp_path: Path, tiny_model: Path) -> None:
    # The tiny model finds the white square in every frame. 3 of 5 frames of 25 fps video is 2 of 3
    # at the clip's 10 fps, as the server scales it: the one polyp alerts at frame 1 (100 ms) and
    # every shown box is right. Counted in the clip's own frames, it alerts at frame 2 (200 ms).
    clip, runner = clip_with_sidecar(tmp_path), Runner(tiny_model, device="cpu")
    report = evaluate_videos([clip], runner, AlertRule(3, 5, 2))
    assert (report["frames"], report["polyps"], report["per_polyp_sensitivity"]) == (12, 1, 1.0)
    assert report["first_detection_ms"] == {"median": 100.0, "p90": 100.0, "max": 100.0}
    assert (report["per_frame_sensitivity"], report["per_frame_precision"]) == (round(11 / 12, 4), 1.0)
    (video,) = open_labelled(clip)  # its tracked polyps under the rule as it is, as alert_rates scores "own frames"
    own_frames = score_video(predict(video, runner), video.truth, video.fps, AlertRule(3, 5, 2)).report()
    assert own_frames["first_detection_ms"] == {"median": 200.0, "p90": 200.0, "max": 200.0}
    assert own_frames["per_frame_sensitivity"] == round(10 / 12, 4)
    assert (report["activations"], report["fp_activations"]) == (1, 0)
    assert [s["videos"] for s in report["sources"]] == [1]  # type: ignore[union-attr]
    assert (report["videos"], report["interrupted"]) == (1, False)


def test_an_interrupted_evaluation_reports_the_videos_done_and_chooses_no_rule(
    tmp_path: Path, tiny_model: Path
) -> None:
    # Ctrl-C after the second of three videos: the two are the report (each rule's counts whole,
    # not one rule ahead of another), the third source is not listed, and no rule is chosen.
    clips = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        clips.append(clip_with_sidecar(tmp_path / name))
    said: list[str] = []

    def progress(what: str) -> None:
        said.append(what)
        if len(said) == 2:
            raise KeyboardInterrupt

    runner = Runner(tiny_model, device="cpu")
    report = evaluate_videos(clips, runner, AlertRule(3, 5, 2), sweep=True, progress=progress)
    assert (report["videos"], report["interrupted"], report["frames"], report["polyps"]) == (2, True, 24, 2)
    assert [(s["source"], s["videos"], s["frames"]) for s in report["sources"]] == [  # type: ignore[union-attr]
        (str(clips[0]), 1, 12),
        (str(clips[1]), 1, 12),
    ]
    assert "chosen_rule" not in report
    assert all(row["frames"] == 24 for row in report["sweep"])  # type: ignore[union-attr]
    whole = evaluate_videos(clips[:2], runner, AlertRule(3, 5, 2), sweep=True)
    assert report["sweep"] == whole["sweep"] and "chosen_rule" in whole


def test_frames_not_looked_at_do_not_reach_the_tracker() -> None:
    # The tracker keeps a track 5 frames it looks at without a match: 7 frames not looked at
    # between two sightings are none of those, so the polyp keeps its id; 7 empty frames end it.
    polyp = Polyp(box=(10, 10, 20, 20), score=0.9, area=400)
    skipped = track([[polyp], *[None] * 7, [polyp]])
    assert [None if f is None else [p.track_id for p in f] for f in skipped] == [[1], *[None] * 7, [1]]
    missed = track([[polyp], *[[]] * 7, [polyp]])
    assert [p.track_id for p in missed[-1] or []] == [2]
