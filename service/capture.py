"""The capture stage: turning client bytes, video files, streams and devices into pixels.

Client frames arrive as JPEG/PNG bytes or raw pixels; `decode_encoded` and `decode_raw`
check them and say precisely what is wrong. `VideoSource` reads anything OpenCV/FFmpeg
opens (a file, an RTSP/HTTP URL, a capture device index); `Reopening` opens a live one
again when it stops (a camera's encoder restarting, a network drop, a capture card replugged).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .config import DEFAULT_MAX_PIXELS
from .dataset import IMAGE_SUFFIXES


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


DEFAULT_FPS = 25.0  # the pace of a video that says no frame rate of its own
STREAM_TIMEOUT_S = 10.0  # how long opening a network stream, or a read of one, may take before it fails
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame: carries the image size
_UNSIZED_MARKERS = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM: no length field
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# An ordinary JPEG has a few dozen segments before its frame header (APPn, DQT, DHT, COM);
# more is a crafted file, and walking it would cost time before anything is decoded.
MAX_JPEG_HEADER_SEGMENTS = 256
# Each scan of a progressive JPEG is a pass over every block of the image, whatever scale it
# is decoded at (at 4096x4096: ~12 ms per scan here). An ordinary progressive JPEG has about
# 10 scans; a crafted one may repeat a refinement scan thousands of times. A JPEG may have at
# most this many scans, and at most JPEG_SCAN_PIXELS_PER_LIMIT x `max_pixels` scans x pixels,
# so the costliest frame admitted costs at most ~1.6x an ordinary progressive frame of the
# largest size admitted.
MAX_JPEG_SCANS = 64
JPEG_SCAN_PIXELS_PER_LIMIT = 16


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    sof_offset: int  # where the frame header starts: scans come after it


def jpeg_header(data: bytes) -> JpegHeader:
    """The JPEG's frame header (size, position), found without decoding."""
    pos = 2  # after the start-of-image marker
    segments = 0
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        segments += 1
        if segments > MAX_JPEG_HEADER_SEGMENTS:
            raise InvalidFrameError(f"JPEG has more than {MAX_JPEG_HEADER_SEGMENTS} segments before its frame header")
        if marker in _UNSIZED_MARKERS:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: image data before any frame header
            break
        if marker in _SOF_MARKERS:
            if pos + 9 > len(data):
                break
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            return JpegHeader(width, height, pos)
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    raise InvalidFrameError("corrupt JPEG: no frame header")


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header, without decoding it."""
    header = jpeg_header(data)
    return header.width, header.height


def count_scan_markers(data: bytes, start: int = 0) -> int:
    """How many times 0xFF 0xDA (start of scan) occurs in `data` from `start`: what
    `data.count(b"\xff\xda", start)` says, in a fifth of its time on a 1080p JPEG (0.017 against
    0.086 ms here), and without holding the GIL (numpy lets it go over large arrays), which the
    decode workers share with the rest of the server."""
    tail = np.frombuffer(data, dtype=np.uint8)[start:]
    return int(np.count_nonzero((tail[:-1] == 0xFF) & (tail[1:] == 0xDA)))


def check_jpeg_scans(data: bytes, header: JpegHeader, max_pixels: int) -> None:
    """Refuse a JPEG whose scans would cost far more to decode than an ordinary one.

    Counts start-of-scan markers after the frame header: entropy-coded data never holds
    0xFF 0xDA (a 0xFF there is followed by 0x00 or a restart marker), so the count is exact
    but for segment bytes between scans (tables), which can only make it larger."""
    scans = count_scan_markers(data, header.sof_offset)
    limit = min(MAX_JPEG_SCANS, JPEG_SCAN_PIXELS_PER_LIMIT * max_pixels // (header.width * header.height))
    if scans > limit:
        raise InvalidFrameError(
            f"JPEG {header.width}x{header.height} has {scans} scans; at most {limit} are decoded at this size"
        )


def is_jpeg(data: bytes) -> bool:
    return data[:3] == _JPEG_MAGIC


def is_png(data: bytes) -> bool:
    return data[:8] == _PNG_MAGIC


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of JPEG or PNG bytes from their header, or None when it cannot be read
    (decoding then says what is wrong)."""
    try:
        if is_jpeg(data):
            return jpeg_size(data)
    except InvalidFrameError:
        return None
    if is_png(data) and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


# JPEG can be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain, which is several times
# cheaper than decoding in full and resizing; the model never sees the difference.
_REDUCED_DECODES = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def _jpeg_reduction(width: int, height: int, min_size: tuple[int, int] | None) -> tuple[int, int]:
    """(factor, imdecode flag) of the smallest decode that still covers `min_size` (width, height)."""
    if min_size is not None:
        for factor, flag in _REDUCED_DECODES:
            if -(-width // factor) >= min_size[0] and -(-height // factor) >= min_size[1]:
                return factor, flag
    return 1, cv2.IMREAD_COLOR


def jpeg_decoded_size(width: int, height: int, min_size: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) that `decode_encoded(min_size=...)` gives a JPEG of this size."""
    factor, _ = _jpeg_reduction(width, height, min_size)
    return -(-width // factor), -(-height // factor)


def decode_encoded(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *, min_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """JPEG/PNG bytes → (HWC uint8 BGR pixels, (width, height) of the encoded image).

    With `min_size`, a JPEG is decoded at the smallest DCT scale whose pixels still cover
    that size (for a model input, say); otherwise, and for PNG, in full. The size limit is
    checked from the header, before anything is decoded. Raises InvalidFrameError for
    empty, unknown, oversized or broken data.
    """
    if not data:
        raise InvalidFrameError("empty frame: no image bytes")
    buffer = np.frombuffer(data, dtype=np.uint8)
    factor, flag = 1, cv2.IMREAD_COLOR
    if is_jpeg(data):
        kind = "JPEG"
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise InvalidFrameError("truncated JPEG: no end-of-image marker")
        header = jpeg_header(data)
        width, height = header.width, header.height
        _check_size(width, height, max_pixels)
        check_jpeg_scans(data, header, max_pixels)
        factor, flag = _jpeg_reduction(width, height, min_size)
    elif is_png(data):
        kind = "PNG"
        if len(data) >= 24:
            _check_size(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), max_pixels)
    else:
        raise InvalidFrameError("bytes are not a JPEG or PNG image")
    image = cv2.imdecode(buffer, flag)
    if image is None:
        raise InvalidFrameError(f"corrupt {kind}: cannot decode")
    decoded_height, decoded_width = image.shape[:2]
    _check_size(decoded_width, decoded_height, max_pixels)
    if factor == 1:
        return image, (decoded_width, decoded_height)
    if (decoded_height, decoded_width) == (-(-width // factor), -(-height // factor)) and width != height:
        width, height = height, width  # turned upright by its EXIF orientation while decoding
    return image, (width, height)


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


def redact_uri(uri: str) -> str:
    """The URI as it may be shown: user info (`user:password@`) replaced by `***@`."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    authority_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:authority_end]
    if "@" not in authority:
        return uri
    return f"{scheme}://***@{authority.rsplit('@', 1)[1]}{rest[authority_end:]}"


def is_live(uri: str) -> bool:
    """Network streams and capture devices are live; files are replayed."""
    return uri.isdigit() or ("://" in uri and not uri.startswith("file://"))


class VideoSource:
    """Frames of a video file, stream URL or device index, decoded with OpenCV/FFmpeg.

    `realtime=True` paces a file at its own frame rate, as a live feed would arrive.
    """

    def __init__(
        self,
        uri: str,
        *,
        realtime: bool = False,
        timeout_s: float = STREAM_TIMEOUT_S,
        open_timeout_s: float | None = None,
    ) -> None:
        self.uri = uri
        self.realtime = realtime
        shown = redact_uri(uri)
        if not is_live(uri) and not Path(uri).exists():
            raise SourceError(f"{shown}: no such file")
        target = _capture_target(uri)
        if isinstance(target, str) and "://" in target:
            # A network stream that stalls must fail a read, not hang the capture thread.
            read_ms, open_ms = int(timeout_s * 1000), int((open_timeout_s or timeout_s) * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]
            self._cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        else:
            self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            raise SourceError(f"{shown}: cannot open (not a video OpenCV/FFmpeg can decode, or unreachable)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.frame_rate = fps if 0 < fps < 1000 else 0.0  # as the source says it; 0: it does not
        self.fps = self.frame_rate or DEFAULT_FPS  # the pace and timestamps
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

    def __init__(self, folder: str, *, realtime: bool = False, fps: float = DEFAULT_FPS) -> None:
        root = Path(folder)
        if (root / "images").is_dir():
            root = root / "images"
        self.uri = folder
        self.realtime = realtime
        self.fps = fps
        self.frame_rate = fps  # images have no rate of their own: the one they are paced at
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

REOPEN_PAUSES_S = (0.25, 0.5, 1.0, 2.0)  # between tries to open a stopped live source again (then 2 s apart)
STALL_S = 1.0  # a live source that delivers no frame for this long has stalled...
BURST_S = 0.005  # ...and the frames that come this close after it, at once, are the stall's leftovers


def endless(source: FrameSource) -> bool:
    """Whether a source has no end of its own: a stream URL or a capture device that gives no
    frame count (a video file served over HTTP has one, and its end is its end)."""
    return is_live(source.uri) and source.frame_count is None


class Reopening:
    """A live source opened again when it stops delivering frames.

    A live feed has no end of its own: when its reads stop (the encoder restarted, the network
    dropped, a capture card was replugged; a stalled stream fails a read after VideoSource's
    timeout), it is opened again, at once and then REOPEN_PAUSES_S apart, for up to `window_s`
    seconds from when its reads stopped. Its frames are numbered on across the gap (one source,
    one sequence, as the server numbers its own sources); `pts_s` is the time since its first
    frame. Past the window (at once with `window_s` 0) it ends, and `gave_up` says why. `stop`
    (Ctrl-C) ends a wait at once; `report` is told, in words, when it stops and when it is back.

    `gaps_s` holds, per return, the seconds it delivered no new frame: from its last frame before
    the stop to its first one after. A stalled stream's decoder hands out the frames it still
    held only when the read fails, at once and many seconds late: a wait of STALL_S or more
    followed by such a burst counts from before the wait."""

    def __init__(
        self,
        source: FrameSource,
        window_s: float,
        *,
        stop: threading.Event | None = None,
        report: Callable[[str], None] | None = None,
        opener: Callable[[float], FrameSource] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self._source: FrameSource | None = source
        self.uri = source.uri
        self._window_s = window_s
        self._stop = stop or threading.Event()
        self._report = report or (lambda words: None)
        self._open = opener or (lambda timeout_s: VideoSource(source.uri, open_timeout_s=timeout_s))
        self._clock = clock
        self._wait = wait or self._stop.wait  # True: stopped (the fakes of tests move their clock)
        self.gaps_s: list[float] = []
        self.gave_up = ""  # why it ended: it stopped, and did not deliver again within the window
        self._last_at: float | None = None  # when its last frame came
        self._quiet_from: float | None = None  # a stall's start, while the frames after it come in a burst
        self._stopped_at: float | None = None  # when its reads stopped; None while it delivers
        self._stopped = ""  # that, in words
        self._tries = 0  # to open it again, since it stopped
        self._error = ""  # why the last try failed

    @property
    def reopens(self) -> int:
        """Times it stopped and delivered frames again."""
        return len(self.gaps_s)

    def __iter__(self) -> Iterator[CapturedFrame]:
        index, first_at = 0, self._clock()
        while not self._stop.is_set():
            if self._source is not None:
                for captured in self._source:
                    now = self._clock()
                    self._arrived(now, index)
                    first_at = now if index == 0 else first_at
                    yield CapturedFrame(index, captured.image, now - first_at)
                    index += 1
                    if self._stop.is_set():
                        return
                self._source = None
            if not self._reopened(index):
                return

    def _arrived(self, now: float, index: int) -> None:
        """Note a frame's arrival at `now`: the end of a stop (said), or of a stall."""
        since = self._quiet_from if self._quiet_from is not None else self._last_at
        if self._stopped_at is not None:
            gap = now - (since if since is not None else self._stopped_at)
            self.gaps_s.append(gap)
            self._report(f"the source is back after {gap:.1f} s without frames; frames go on from {index}")
            self._stopped_at, self._tries, self._quiet_from = None, 0, None
        elif self._last_at is not None:
            waited = now - self._last_at
            if waited >= STALL_S:
                self._quiet_from = self._last_at
            elif waited > BURST_S:
                self._quiet_from = None
        self._last_at = now

    def _reopened(self, index: int) -> bool:
        """Open the stopped source again, trying until it opens (True), its window passes or
        `stop` is set (False). A source that opens and delivers nothing is the same stop."""
        if self._stopped_at is None:
            self._stopped_at = self._clock()
            since = self._quiet_from if self._quiet_from is not None else self._last_at
            quiet_s = self._stopped_at - since if since is not None else 0.0
            none_for = f" (no new frame for {quiet_s:.1f} s)" if quiet_s >= STALL_S else ""
            self._stopped = f"the source stopped delivering frames {f'after frame {index - 1}' if index else 'at once'}"
            if self._window_s <= 0:
                self.gave_up = self._stopped
                return False
            self._report(f"{self._stopped}{none_for}; opening it again for up to {self._window_s:g} s")
        while True:
            if self._tries:
                pause = REOPEN_PAUSES_S[min(self._tries, len(REOPEN_PAUSES_S)) - 1]
                if self._stopped_at + self._window_s - self._clock() <= pause:
                    last = f"last try: {self._error}" if self._error else "it opened again, but delivered no frame"
                    self.gave_up = f"{self._stopped} and did not come back within {self._window_s:g} s ({last})"
                    return False
                if self._wait(pause):
                    return False
            self._tries += 1
            left = self._stopped_at + self._window_s - self._clock()
            try:
                self._source = self._open(min(STREAM_TIMEOUT_S, max(left, 0.1)))
            except SourceError as exc:
                self._error = str(exc).replace(self.uri, redact_uri(self.uri))
            else:
                self._error = ""
                return True


def open_source(uri: str, *, realtime: bool = False) -> FrameSource:
    """The source for a URI: a folder of images, or anything OpenCV/FFmpeg opens (file, URL, device)."""
    if not is_live(uri) and Path(uri).is_dir():
        return ImageSequenceSource(uri, realtime=realtime)
    return VideoSource(uri, realtime=realtime)
