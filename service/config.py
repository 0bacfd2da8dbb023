"""Configuration, one frozen dataclass per stage; filled from CLI flags, which default to
POLYPSTREAM_* environment variables. Nothing is read at import time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Config imports nothing of the package: every stage may import it without loading another's
# libraries (the pipeline needs no grpc, the client no onnxruntime).
MIB = 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096  # the largest frame (width x height) decoded
MIN_AREA_FRACTION = 0.001  # regions smaller than this share of the frame are noise, not polyps
# The largest batch allowed: its input buffer is allocated whole (1,024 frames of 352² float32
# are 1.5 GB) and every size up to it is warmed up on CUDA; the benchmarks' best sizes are ≤ 64.
MAX_BATCH = 1024


class ConfigError(ValueError):
    """A setting out of its range: the user's to fix (the CLI says so in one line)."""


MAX_ALERT_WINDOW = 64


def check_alert_rule(min_seen: int | None, window: int | None, hold: int | None) -> None:
    """An alert rule (alerts.py) that can be met: 1 <= min_seen <= window <= 64, 0 <= hold <= 64.
    A part that is None is not set here (it will be the model's): the others are checked alone."""
    low = 1 if min_seen is None else min_seen
    high = MAX_ALERT_WINDOW if window is None else window
    if not 1 <= low <= high <= MAX_ALERT_WINDOW:
        n, m = ("the model's" if v is None else v for v in (min_seen, window))
        raise ConfigError(f"alert rule: need 1 <= min_seen ({n}) <= window ({m}) <= {MAX_ALERT_WINDOW}")
    if hold is not None and not 0 <= hold <= MAX_ALERT_WINDOW:
        raise ConfigError(f"alert rule: hold must be 0..{MAX_ALERT_WINDOW} frames, got {hold}")


def env_default(name: str, fallback: str) -> str:
    """The value of POLYPSTREAM_<NAME>, else `fallback` (used for CLI flag defaults)."""
    return os.environ.get(f"POLYPSTREAM_{name}", fallback)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the server: its certificate and key, and optionally a client CA (mTLS);
    `security.server_credentials` reads them."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class EngineConfig:
    """Model, batching and post-processing settings."""

    model: str | None = None  # fast | accurate | path; None: accurate on CUDA, else fast
    device: str = "auto"  # auto | cuda | cpu
    max_batch: int = 8
    budget_ms: float = 40.0
    max_wait_ms: float = 2.0
    threads: int = 0  # onnxruntime intra-op threads; 0: its default
    min_area_fraction: float = MIN_AREA_FRACTION  # regions smaller than this share of the frame are noise
    decode_workers: int = 0  # 0: one per CPU core
    # No-drop (offline) frames are decoded on a pool of their own, below the live frames; 0: half
    # the decode workers. A server that replays (no live streams) may give them every core.
    offline_decode_workers: int = 0
    # How long a thread may hold the GIL while another waits for it (sys.setswitchinterval);
    # Python's 5 ms let a saturated event loop make every native call of the batcher and the
    # decoders wait up to 5 ms to come back (benchmarks/README.md, "The GIL's switch interval").
    gil_switch_ms: float = 0.5
    # Alerts (alerts.py): seen in alert_min_seen of the last alert_window frames to start, held
    # alert_hold unseen frames; per stream, FrameOptions may set each. None: the model's own rule
    # (`polypstream.alert_rule`, chosen for it on a stand-in corpus of its validation images by
    # video_eval.choose_rule: benchmarks/README.md, "Clinical alerts"), else alerts.AlertRule()'s.
    alert_min_seen: int | None = None
    alert_window: int | None = None
    alert_hold: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ConfigError(f"max_batch must be 1 to {MAX_BATCH}, got {self.max_batch}")
        if self.budget_ms <= 0:
            raise ConfigError(f"budget_ms must be positive, got {self.budget_ms}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must not be negative, got {self.max_wait_ms}")
        if self.decode_workers < 0 or self.offline_decode_workers < 0:
            raise ConfigError("decode_workers and offline_decode_workers must not be negative (0: the default)")
        if not 0 < self.gil_switch_ms <= 1000:
            raise ConfigError(f"gil_switch_ms must be above 0 and at most 1000, got {self.gil_switch_ms:g}")
        check_alert_rule(self.alert_min_seen, self.alert_window, self.alert_hold)


@dataclass(frozen=True)
class ServerConfig:
    """Network-facing settings of `polypstream serve`."""

    address: str = "127.0.0.1:50051"
    metrics_address: str = "127.0.0.1:8000"  # empty: no metrics endpoint
    max_streams: int = 64
    max_watchers: int = 64  # concurrent Watch calls, all sources together
    inflight_per_stream: int = 16
    max_message_bytes: int = 32 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    # What frames of client streams may hold (image bytes, decoded pixels, masks and
    # overlays not yet sent), all streams together and per stream (see service/memory.py).
    memory_limit_bytes: int = 1024 * MIB
    stream_memory_limit_bytes: int = 256 * MIB
    grace_s: float = 10.0
    send_timeout_s: float = 10.0  # a client that reads no result for this long loses its stream
    health_address: str = ""  # plaintext port serving only grpc.health.v1 (for probes); empty: none
    tls: TlsFiles | None = None  # None: plaintext (keep the address on loopback then)
    token: str | None = None  # bearer token every call but health must carry
    shared_port: bool = False  # a worker of `serve --workers`: its siblings listen on the same port

    def __repr__(self) -> str:  # never print the token
        return f"ServerConfig(address={self.address!r}, tls={self.tls!r}, token={'***' if self.token else None})"

    def __post_init__(self) -> None:
        if min(self.max_streams, self.max_watchers, self.inflight_per_stream) < 1:
            raise ConfigError("max_streams, max_watchers and inflight_per_stream must be at least 1")
        if not 1 <= self.stream_memory_limit_bytes <= self.memory_limit_bytes:
            raise ConfigError(
                f"the per-stream memory limit ({self.stream_memory_limit_bytes / MIB:g} MiB) must be positive "
                f"and at most the total ({self.memory_limit_bytes / MIB:g} MiB)"
            )
