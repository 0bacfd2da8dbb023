"""The values that flow between stages: Frame in, Result out (frozen, no behaviour)."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class Status(enum.Enum):
    """How a frame was answered; mirrors polypstream.v1.FrameStatus."""

    OK = "OK"
    INVALID_FRAME = "INVALID_FRAME"
    DROPPED_LATE = "DROPPED_LATE"
    FAILED = "FAILED"


@dataclass(frozen=True)
class FrameOptions:
    """What a client asks for with a frame; the fields are polypstream.v1.FrameOptions'."""

    return_mask: bool = False
    return_overlay: bool = False
    no_drop: bool = False
    mask_at_model_resolution: bool = False
    # The stream's alert rule, each part None for the server's default (read from a stream's first frame).
    alert_min_seen: int | None = None
    alert_window: int | None = None
    alert_hold: int | None = None
    allow_view: bool = False  # the live view (serve --ui) may show this frame
    # The stream's frames a second (0: not said): the server's alert rule is scaled to it.
    frame_rate: float = 0.0


@dataclass(frozen=True, eq=False)
class Frame:
    """A decoded frame: HWC uint8 BGR pixels plus where it came from and when it is due.

    `received_at` and `deadline` are `time.monotonic()` seconds; `stream_key` identifies
    one stream inside the server (per RPC or per source), `stream_id` is the client's name.
    `image` may have been decoded at a reduced scale (enough for the model); `width` and
    `height` are always the frame's own size, in which results are reported.
    """

    stream_key: str
    stream_id: str
    index: int
    image: np.ndarray
    received_at: float
    deadline: float
    options: FrameOptions = FrameOptions()
    client_time_ns: int = 0
    decode_s: float = 0.0
    tensor: np.ndarray | None = None  # the model input (CHW float32), filled by the decode stage
    original_size: tuple[int, int] | None = None  # (width, height) when `image` is reduced

    @property
    def width(self) -> int:
        return self.original_size[0] if self.original_size else self.image.shape[1]

    @property
    def height(self) -> int:
        return self.original_size[1] if self.original_size else self.image.shape[0]


@dataclass(frozen=True)
class Polyp:
    """One connected polyp region: box (x, y, w, h) in original pixels."""

    box: tuple[int, int, int, int]
    score: float
    area: int
    track_id: int = 0
    alerting: bool = False  # its track alerts (see alerts.py): what a monitor should show


FRAME_STAGES = ("decode", "queue", "inference", "postprocess", "server")  # what Timing holds for each frame


@dataclass(frozen=True)
class AlertEvent:
    """An alert of one track starting or ending (see alerts.py)."""

    track_id: int
    kind: str  # "start" or "end"


@dataclass(frozen=True)
class Timing:
    decode_s: float = 0.0
    queue_s: float = 0.0
    batch_size: int = 0
    inference_s: float = 0.0
    postprocess_s: float = 0.0
    server_s: float = 0.0


@dataclass(frozen=True, eq=False)
class Result:
    """The answer to one Frame. `mask` (HW bool) is kept when asked for: at the frame's
    resolution, or at the model's when the frame's options say so."""

    stream_id: str
    index: int
    status: Status
    error: str = ""
    polyps: tuple[Polyp, ...] = ()
    width: int = 0
    height: int = 0
    timing: Timing = field(default_factory=Timing)
    mask: np.ndarray | None = None
    overlay: np.ndarray | None = None
    client_time_ns: int = 0
    held: tuple[Polyp, ...] = ()  # alerting tracks not detected in this frame, at their last box
    alert_events: tuple[AlertEvent, ...] = ()  # alerts that started or ended with this frame
    # Set while the frame-resolution mask or overlay asked for is still to be drawn: the
    # pipeline calls it on a worker (never the batcher's thread) before anyone sees the Result.
    render: Callable[[], Result] | None = None


def unserved_result(frame: Frame, status: Status, error: str, now: float, enqueued_at: float | None = None) -> Result:
    """The answer to a decoded frame the model did not run on (dropped, failed or refused) at
    `now` (monotonic seconds); `enqueued_at` when it waited in the batcher's queue."""
    return Result(
        stream_id=frame.stream_id,
        index=frame.index,
        status=status,
        error=error,
        width=frame.width,
        height=frame.height,
        timing=Timing(
            decode_s=frame.decode_s,
            queue_s=0.0 if enqueued_at is None else now - enqueued_at,
            server_s=now - frame.received_at,
        ),
        client_time_ns=frame.client_time_ns,
    )


def invalid_result(stream_id: str, index: int, message: str, received_at: float, client_time_ns: int = 0) -> Result:
    """The answer to a frame that could not be decoded (or broke its stream's rules)."""
    return Result(
        stream_id=stream_id,
        index=index,
        status=Status.INVALID_FRAME,
        error=message,
        timing=Timing(server_s=time.monotonic() - received_at),
        client_time_ns=client_time_ns,
    )
