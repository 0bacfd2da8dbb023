"""The capture stage: turning client bytes, video files, streams and devices into pixels.

Client frames arrive as JPEG/PNG bytes or raw pixels; `decode_encoded` and `decode_raw`
check them and say precisely what is wrong. `VideoSource` reads anything OpenCV/FFmpeg
opens (a file, an RTSP/HTTP URL, a capture device index).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from service.dataset import IMAGE_SUFFIXES

DEFAULT_MAX_PIXELS = 4096 * 4096


class InvalidFrameError(ValueError):
    """A client frame that cannot be turned into pixels; the message says why."""


class PixelFormat(enum.Enum):
    BGR8 = "BGR8"
    RGB8 = "RGB8"
    GRAY8 = "GRAY8"

    @property
    def channels(self) -> int:
        return 1 if self is PixelFormat.GRAY8 else 3


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidFrameError(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidFrameError(f"image {width}x{height} exceeds the limit of {max_pixels} pixels")


def decode_encoded(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """JPEG/PNG bytes → HWC uint8 BGR. Raises InvalidFrameError for empty, unknown or broken data."""
    if not data:
        raise InvalidFrameError("empty frame: no image bytes")
    buffer = np.frombuffer(data, dtype=np.uint8)
    # Read the header first so a huge image is refused before it is decoded.
    if data[:3] == b"\xff\xd8\xff":
        kind = "JPEG"
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise InvalidFrameError("truncated JPEG: no end-of-image marker")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        kind = "PNG"
        if len(data) >= 24:
            _check_size(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), max_pixels)
    else:
        raise InvalidFrameError("bytes are not a JPEG or PNG image")
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise InvalidFrameError(f"corrupt {kind}: cannot decode")
    _check_size(image.shape[1], image.shape[0], max_pixels)
    return image


def decode_raw(
    data: bytes, width: int, height: int, fmt: PixelFormat | None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Raw row-major pixels → HWC uint8 BGR, after checking size, format and length."""
    if fmt is None:
        raise InvalidFrameError("raw image has an unknown or unspecified pixel format")
    _check_size(width, height, max_pixels)
    expected = width * height * fmt.channels
    if len(data) != expected:
        raise InvalidFrameError(f"raw {fmt.name} image {width}x{height} needs {expected} bytes, got {len(data)}")
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(height, width, fmt.channels)
    if fmt is PixelFormat.GRAY8:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if fmt is PixelFormat.RGB8:
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    return pixels.copy()


class SourceError(RuntimeError):
    """A source that cannot be opened or read; the message names the URI."""


@dataclass(frozen=True)
class CapturedFrame:
    index: int
    image: np.ndarray
    pts_s: float  # presentation time from the start of the source


def paced(images: Iterator[np.ndarray], fps: float, *, realtime: bool) -> Iterator[CapturedFrame]:
    """Number the frames and stamp them at `fps`; in realtime, hand each out no earlier than
    its time (as a live feed would arrive), else as fast as they are taken."""
    started = time.monotonic()
    for index, image in enumerate(images):
        pts = index / fps
        if realtime:
            delay = started + pts - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield CapturedFrame(index, image, pts)


def _capture_target(uri: str) -> str | int:
    return int(uri) if uri.isdigit() else uri


def is_live(uri: str) -> bool:
    """Network streams and capture devices are live; files are replayed."""
    return uri.isdigit() or ("://" in uri and not uri.startswith("file://"))


class VideoSource:
    """Frames of a video file, stream URL or device index, decoded with OpenCV/FFmpeg.

    `realtime=True` paces a file at its own frame rate, as a live feed would arrive.
    """

    def __init__(self, uri: str, *, realtime: bool = False, timeout_s: float = 10.0) -> None:
        self.uri = uri
        self.realtime = realtime
        if not is_live(uri) and not Path(uri).exists():
            raise SourceError(f"{uri}: no such file")
        target = _capture_target(uri)
        if isinstance(target, str) and "://" in target:
            # A network stream that stalls must fail a read, not hang the capture thread.
            ms = int(timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            self._cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        else:
            self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            raise SourceError(f"{uri}: cannot open (not a video OpenCV/FFmpeg can decode, or unreachable)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else 25.0
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None

    def __iter__(self) -> Iterator[CapturedFrame]:
        try:
            yield from paced(self._decoded(), self.fps, realtime=self.realtime)
        finally:
            self.close()

    def _decoded(self) -> Iterator[np.ndarray]:
        while True:
            ok, image = self._cap.read()
            if not ok or image is None:
                return
            yield image

    def close(self) -> None:
        self._cap.release()


class ImageSequenceSource:
    """A folder of still images played as video, in file-name order (`images/` inside it is
    used when present: the Kvasir-SEG layout). Images may differ in size, as frames of
    different videos do; `fps` sets the pace in realtime mode and the timestamps."""

    def __init__(self, folder: str, *, realtime: bool = False, fps: float = 25.0) -> None:
        root = Path(folder)
        if (root / "images").is_dir():
            root = root / "images"
        self.uri = folder
        self.realtime = realtime
        self.fps = fps
        self.paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.frame_count: int | None = len(self.paths)

    def __iter__(self) -> Iterator[CapturedFrame]:
        yield from paced(self._decoded(), self.fps, realtime=self.realtime)

    def _decoded(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:  # an unreadable file is skipped, as a decoder skips a broken frame
                yield image

    def close(self) -> None:
        pass


FrameSource = VideoSource | ImageSequenceSource


def open_source(uri: str, *, realtime: bool = False) -> FrameSource:
    """The source for a URI: a folder of images, or anything OpenCV/FFmpeg opens (file, URL, device)."""
    if not is_live(uri) and Path(uri).is_dir():
        return ImageSequenceSource(uri, realtime=realtime)
    return VideoSource(uri, realtime=realtime)
