from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_BGR8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB8: _ClassVar[PixelFormat]
    PIXEL_FORMAT_GRAY8: _ClassVar[PixelFormat]

class FrameStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_STATUS_UNSPECIFIED: _ClassVar[FrameStatus]
    FRAME_STATUS_OK: _ClassVar[FrameStatus]
    FRAME_STATUS_INVALID_FRAME: _ClassVar[FrameStatus]
    FRAME_STATUS_DROPPED_LATE: _ClassVar[FrameStatus]
    FRAME_STATUS_FAILED: _ClassVar[FrameStatus]
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_BGR8: PixelFormat
PIXEL_FORMAT_RGB8: PixelFormat
PIXEL_FORMAT_GRAY8: PixelFormat
FRAME_STATUS_UNSPECIFIED: FrameStatus
FRAME_STATUS_OK: FrameStatus
FRAME_STATUS_INVALID_FRAME: FrameStatus
FRAME_STATUS_DROPPED_LATE: FrameStatus
FRAME_STATUS_FAILED: FrameStatus

class RawImage(_message.Message):
    __slots__ = ("width", "height", "format", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    format: PixelFormat
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[PixelFormat, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class FrameOptions(_message.Message):
    __slots__ = ("return_mask", "return_overlay", "no_drop", "mask_at_model_resolution", "alert_min_seen", "alert_window", "alert_hold", "allow_view", "frame_rate")
    RETURN_MASK_FIELD_NUMBER: _ClassVar[int]
    RETURN_OVERLAY_FIELD_NUMBER: _ClassVar[int]
    NO_DROP_FIELD_NUMBER: _ClassVar[int]
    MASK_AT_MODEL_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    ALERT_MIN_SEEN_FIELD_NUMBER: _ClassVar[int]
    ALERT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    ALERT_HOLD_FIELD_NUMBER: _ClassVar[int]
    ALLOW_VIEW_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_FIELD_NUMBER: _ClassVar[int]
    return_mask: bool
    return_overlay: bool
    no_drop: bool
    mask_at_model_resolution: bool
    alert_min_seen: int
    alert_window: int
    alert_hold: int
    allow_view: bool
    frame_rate: float
    def __init__(self, return_mask: _Optional[bool] = ..., return_overlay: _Optional[bool] = ..., no_drop: _Optional[bool] = ..., mask_at_model_resolution: _Optional[bool] = ..., alert_min_seen: _Optional[int] = ..., alert_window: _Optional[int] = ..., alert_hold: _Optional[int] = ..., allow_view: _Optional[bool] = ..., frame_rate: _Optional[float] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("stream_id", "index", "encoded", "raw", "client_time_ns", "options")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    index: int
    encoded: bytes
    raw: RawImage
    client_time_ns: int
    options: FrameOptions
    def __init__(self, stream_id: _Optional[str] = ..., index: _Optional[int] = ..., encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., client_time_ns: _Optional[int] = ..., options: _Optional[_Union[FrameOptions, _Mapping]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Polyp(_message.Message):
    __slots__ = ("box", "score", "area", "track_id", "alerting")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    ALERTING_FIELD_NUMBER: _ClassVar[int]
    box: Box
    score: float
    area: int
    track_id: int
    alerting: bool
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., score: _Optional[float] = ..., area: _Optional[int] = ..., track_id: _Optional[int] = ..., alerting: _Optional[bool] = ...) -> None: ...

class AlertEvent(_message.Message):
    __slots__ = ("track_id", "kind")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[AlertEvent.Kind]
        KIND_START: _ClassVar[AlertEvent.Kind]
        KIND_END: _ClassVar[AlertEvent.Kind]
    KIND_UNSPECIFIED: AlertEvent.Kind
    KIND_START: AlertEvent.Kind
    KIND_END: AlertEvent.Kind
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    track_id: int
    kind: AlertEvent.Kind
    def __init__(self, track_id: _Optional[int] = ..., kind: _Optional[_Union[AlertEvent.Kind, str]] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("decode_ms", "queue_ms", "batch_size", "inference_ms", "postprocess_ms", "server_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    SERVER_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    queue_ms: float
    batch_size: int
    inference_ms: float
    postprocess_ms: float
    server_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., batch_size: _Optional[int] = ..., inference_ms: _Optional[float] = ..., postprocess_ms: _Optional[float] = ..., server_ms: _Optional[float] = ...) -> None: ...

class FrameResult(_message.Message):
    __slots__ = ("stream_id", "index", "status", "error", "polyps", "mask_png", "overlay_jpeg", "timing", "width", "height", "client_time_ns", "mask_width", "mask_height", "held", "alert_events")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    POLYPS_FIELD_NUMBER: _ClassVar[int]
    MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_JPEG_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    MASK_WIDTH_FIELD_NUMBER: _ClassVar[int]
    MASK_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    ALERT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    index: int
    status: FrameStatus
    error: str
    polyps: _containers.RepeatedCompositeFieldContainer[Polyp]
    mask_png: bytes
    overlay_jpeg: bytes
    timing: Timing
    width: int
    height: int
    client_time_ns: int
    mask_width: int
    mask_height: int
    held: _containers.RepeatedCompositeFieldContainer[Polyp]
    alert_events: _containers.RepeatedCompositeFieldContainer[AlertEvent]
    def __init__(self, stream_id: _Optional[str] = ..., index: _Optional[int] = ..., status: _Optional[_Union[FrameStatus, str]] = ..., error: _Optional[str] = ..., polyps: _Optional[_Iterable[_Union[Polyp, _Mapping]]] = ..., mask_png: _Optional[bytes] = ..., overlay_jpeg: _Optional[bytes] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., client_time_ns: _Optional[int] = ..., mask_width: _Optional[int] = ..., mask_height: _Optional[int] = ..., held: _Optional[_Iterable[_Union[Polyp, _Mapping]]] = ..., alert_events: _Optional[_Iterable[_Union[AlertEvent, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("source", "options")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    source: str
    options: FrameOptions
    def __init__(self, source: _Optional[str] = ..., options: _Optional[_Union[FrameOptions, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "input_width", "input_height", "provider", "threshold", "max_batch", "budget_ms", "path", "alert_rule")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ALERT_RULE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    input_width: int
    input_height: int
    provider: str
    threshold: float
    max_batch: int
    budget_ms: float
    path: str
    alert_rule: AlertRule
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., input_width: _Optional[int] = ..., input_height: _Optional[int] = ..., provider: _Optional[str] = ..., threshold: _Optional[float] = ..., max_batch: _Optional[int] = ..., budget_ms: _Optional[float] = ..., path: _Optional[str] = ..., alert_rule: _Optional[_Union[AlertRule, _Mapping]] = ...) -> None: ...

class AlertRule(_message.Message):
    __slots__ = ("min_seen", "window", "hold", "frame_rate")
    MIN_SEEN_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_FIELD_NUMBER: _ClassVar[int]
    min_seen: int
    window: int
    hold: int
    frame_rate: float
    def __init__(self, min_seen: _Optional[int] = ..., window: _Optional[int] = ..., hold: _Optional[int] = ..., frame_rate: _Optional[float] = ...) -> None: ...

class ListSourcesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SourceInfo(_message.Message):
    __slots__ = ("name", "uri", "state", "frames", "subscribers", "frame_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    FRAME_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    uri: str
    state: str
    frames: int
    subscribers: int
    frame_rate: float
    def __init__(self, name: _Optional[str] = ..., uri: _Optional[str] = ..., state: _Optional[str] = ..., frames: _Optional[int] = ..., subscribers: _Optional[int] = ..., frame_rate: _Optional[float] = ...) -> None: ...

class ListSourcesResponse(_message.Message):
    __slots__ = ("sources",)
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[SourceInfo]
    def __init__(self, sources: _Optional[_Iterable[_Union[SourceInfo, _Mapping]]] = ...) -> None: ...
