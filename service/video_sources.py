"""Videos with per-frame polyp boxes, for `polypstream eval-video`, and the model run over them.

Three kinds of source are read:
- a video file with a sidecar `<name>.boxes.json` beside it (LDPolypVideo's export:
  `{"frames": [[[x, y, w, h], ...], ...], "fps": 25, ...}`, `frames[i]` the boxes of frame i);
- an ordered frame folder in the Kvasir-SEG layout: `images/`, `masks/` and `frames.txt`
  listing the frame ids in order (the frame rate comes from --fps);
- a stand-in corpus (`polypstream corpus`): every video with a ground-truth sidecar.
Boxes from masks are their connected regions, without those the service calls noise
(under 0.1 % of the frame). Bad input (a sidecar whose frame count differs from the video's,
a box outside the frame, a missing mask) is a DatasetError naming the file and what is wrong.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .alerts import RULE_FPS, AlertRule
from .capture import SourceError, VideoSource
from .corpus import GroundTruth
from .dataset import IMAGE_SUFFIXES, DatasetError, read_image, read_mask
from .frames import Polyp
from .postprocess import IouTracker, locate_polyps, mask_boxes
from .replay import find_videos
from .runner import Runner
from .scores import Box
from .video_eval import VideoTally, choose_rule, score_video, sweep_rules

SIDECAR_SUFFIX = ".boxes.json"


@dataclass(frozen=True)
class LabelledVideo:
    name: str
    fps: float
    truth: list[list[Box]]  # per frame
    frames: Callable[[], Iterator[np.ndarray]]  # the frames, BGR, in order


def open_labelled(path: Path, fps: float = 25.0) -> list[LabelledVideo]:
    """The labelled videos of a source path (see the module's docstring)."""
    if path.is_dir() and (path / "ground-truth").is_dir():
        return _corpus_videos(path)
    if path.is_dir() and (path / "frames.txt").is_file():
        return [_frame_folder(path, fps)]
    if path.is_file():
        return [_video_with_sidecar(path)]
    raise DatasetError(
        f"{path}: not a video with a {SIDECAR_SUFFIX} sidecar, a frame folder with frames.txt, or a stand-in corpus"
    )


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    try:
        source = VideoSource(str(path))
    except SourceError as exc:
        raise DatasetError(str(exc)) from exc
    try:
        for captured in source:
            yield captured.image
    finally:
        source.close()


def _video_with_sidecar(path: Path) -> LabelledVideo:
    sidecar = path.with_name(path.name.split(".")[0] + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        raise DatasetError(f"{path}: no ground truth beside it ({sidecar.name})")
    try:
        meta = json.loads(sidecar.read_text())
        frames = [[tuple(int(v) for v in box) for box in boxes] for boxes in meta["frames"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{sidecar}: not a boxes sidecar ({exc})") from exc
    capture = cv2.VideoCapture(str(path))
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    video_fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    if width <= 0 or height <= 0:
        raise DatasetError(f"{path}: cannot open the video")
    truth: list[list[Box]] = []
    for index, boxes in enumerate(frames):
        for box in boxes:
            if len(box) != 4:
                raise DatasetError(f"{sidecar}: frame {index}: box {list(box)} is not [x, y, width, height]")
            x, y, w, h = box
            if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
                raise DatasetError(
                    f"{sidecar}: frame {index}: box {list(box)} is not inside the {width}x{height} frame"
                )
        truth.append([(b[0], b[1], b[2], b[3]) for b in boxes])
    rate = float(meta.get("fps") or video_fps or 25.0)

    def frames_checked() -> Iterator[np.ndarray]:  # the count is known once decoded: checked then
        count = 0
        for image in _video_frames(path):
            count += 1
            if count > len(truth):
                raise DatasetError(f"{sidecar}: has {len(truth)} frames of boxes; {path.name} has more")
            yield image
        if count != len(truth):
            raise DatasetError(f"{sidecar}: has {len(truth)} frames of boxes; {path.name} has {count}")

    return LabelledVideo(path.name, rate, truth, frames_checked)


def _frame_folder(folder: Path, fps: float) -> LabelledVideo:
    ids = [line.strip() for line in (folder / "frames.txt").read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{folder / 'frames.txt'}: lists no frames")
    images, masks = [], []
    for frame_id in ids:
        image = _find(folder / "images", frame_id)
        mask = _find(folder / "masks", frame_id)
        if image is None or mask is None:
            missing = "image" if image is None else "mask"
            raise DatasetError(f"{folder}: frame {frame_id} (frames.txt) has no {missing}")
        images.append(image)
        masks.append(mask)
    truth = [mask_boxes(read_mask(mask)) for mask in masks]

    def frames() -> Iterator[np.ndarray]:
        for image in images:
            yield read_image(image)

    return LabelledVideo(folder.name, fps, truth, frames)


def _find(folder: Path, frame_id: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{frame_id}{suffix}").is_file():
            return folder / f"{frame_id}{suffix}"
    return None


def _corpus_videos(corpus: Path) -> list[LabelledVideo]:
    truth_of = GroundTruth(corpus)
    videos = []
    for video in find_videos(corpus):
        mask_of = truth_of.frames(video)
        if mask_of is None:
            continue
        meta = json.loads((corpus / "ground-truth" / f"{video.stem}.json").read_text())
        truth = []
        for index in range(len(meta["frames"])):
            mask = mask_of(index)
            truth.append(mask_boxes(mask) if mask is not None else [])
        videos.append(LabelledVideo(video.name, float(meta["fps"]), truth, functools.partial(_video_frames, video)))
    if not videos:
        raise DatasetError(f"{corpus}: no video with a ground-truth sidecar")
    return videos


def predict(video: LabelledVideo, runner: Runner, *, batch: int = 8) -> list[list[Polyp]]:
    """The model's tracked polyps per frame, as the service finds and tracks them (its region
    rules and score floor, one IoU tracker per video); no alert rule applied yet."""
    tracker = IouTracker()
    return [tracker.update(found) for found in detect(video, runner, batch=batch)]


def track(found: Sequence[Sequence[Polyp] | None]) -> list[list[Polyp] | None]:
    """Each frame's polyps with their track ids from one IoU tracker, as a stream's; a frame of
    None (not looked at) stays None and does not reach the tracker."""
    tracker = IouTracker()
    return [None if polyps is None else tracker.update(list(polyps)) for polyps in found]


def detect(video: LabelledVideo, runner: Runner, *, batch: int = 8) -> list[list[Polyp]]:
    """The model's polyps per frame, as the service finds them (its region rules and score
    floor), before tracking."""
    contract = runner.contract
    out: list[list[Polyp]] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        probs = runner.run([runner.preprocess(image) for image in pending])
        for image, prob in zip(pending, probs, strict=True):
            height, width = image.shape[:2]
            found = locate_polyps(prob, width, height, contract.threshold, min_score=contract.min_region_score)
            out.append(found)
        pending.clear()

    for image in video.frames():
        pending.append(image)
        if len(pending) == min(batch, runner.max_batch):
            flush()
    if pending:
        flush()
    return out


def evaluate_videos(
    sources: list[Path],
    runner: Runner,
    rule: AlertRule,
    *,
    fps: float = 25.0,
    sweep: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """The video evaluation report: the totals under `rule` at the top level, one entry per
    source, and with `sweep` every rule of `sweep_rules()` and the one `choose_rule` picks.
    The model runs once per video; the rules are applied to its tracked polyps, each scaled to
    the video's frame rate as the server scales it (`AlertRule.at_rate`).

    Interrupted (Ctrl-C), it reports the videos done so far, `interrupted` true and no rule
    chosen (a sweep over part of the videos is not the one the rule was fixed for)."""
    rules = [rule, *(r for r in sweep_rules() if r != rule)] if sweep else [rule]
    done: list[tuple[int, dict[AlertRule, VideoTally]]] = []  # per video: its source, each rule's counts
    opened = 0
    interrupted = False
    try:
        for index, source in enumerate(sources):
            videos = open_labelled(source, fps)
            opened += 1
            for video in videos:
                tracked = predict(video, runner)
                done.append(
                    (index, {r: score_video(tracked, video.truth, video.fps, r.at_rate(video.fps)) for r in rules})
                )
                if progress is not None:
                    progress(f"{source.name}: {video.name}, {len(tracked)} frames")
    except KeyboardInterrupt:  # the videos done so far are still a result
        interrupted = True
    per_rule = {r: VideoTally() for r in rules}
    per_source = [VideoTally() for _ in range(opened)]
    videos_done = [0] * opened
    for index, tallies in done:
        for r, tally in tallies.items():
            per_rule[r].merge(tally)
        per_source[index].merge(tallies[rule])
        videos_done[index] += 1
    entries = [
        {"source": str(source), "videos": videos_done[i], **per_source[i].report()}
        for i, source in enumerate(sources[:opened])
    ]
    report: dict[str, object] = {
        **per_rule[rule].report(),
        "rule": asdict(rule),
        "rule_fps": RULE_FPS,  # the rules count frames of 25 fps video, scaled to each video's rate
        "sources": entries,
        "videos": len(done),
        "interrupted": interrupted,
    }
    if sweep:
        ordered = [(r, per_rule[r]) for r in sweep_rules()]
        report["sweep"] = [{"rule": asdict(r), **t.report()} for r, t in ordered]
        if not interrupted:
            report["chosen_rule"] = asdict(choose_rule(ordered))
    return report
