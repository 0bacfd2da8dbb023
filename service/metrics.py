"""Every Prometheus metric of polypstream, defined in one place against one registry.

Names follow Prometheus conventions: prefix `polypstream_`, seconds and bytes, `_total`
for counters (the client library appends it), and only low-cardinality labels (status,
stage, reason, source name, RPC method): never stream or frame ids.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from .frames import FRAME_STAGES
from .gpu import GpuReading

# Per-frame stages take milliseconds: the client library's default buckets start at 5 ms.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
)  # fmt: skip
# The GIL wait: tenths of a millisecond with room to spare, the switch interval (0.5 ms in
# `serve`, Python's default 5 ms) and more when saturated.
GIL_WAIT_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# decode: bytes → model input; queue: waiting for a batch; inference: the batch's model run;
# postprocess: mask → boxes (+ overlay); server: receipt → result ready; send: result ready →
# handed to gRPC (encoding included); end_to_end: receipt → handed to gRPC.
STAGES = (*FRAME_STAGES, "send", "end_to_end")  # and the gRPC side of each answer
# late: missed its deadline; live_skip: a live source was behind and kept the freshest frame;
# slow_subscriber: a Watch subscriber's queue was full and lost its oldest result.
# stream_closed: queued when its client hung up, so never run.
DROP_REASONS = ("late", "live_skip", "slow_subscriber", "stream_closed")
STATUSES = ("OK", "INVALID_FRAME", "DROPPED_LATE", "FAILED")
REFUSAL_REASONS = ("limit", "watch_limit", "shutting_down")


class Metrics:
    """The service's metrics; tests pass a fresh CollectorRegistry."""

    def __init__(self, registry: CollectorRegistry, *, process: bool = True) -> None:
        self.registry = registry
        if process:  # process_resident_memory_bytes, process_cpu_seconds_total, ... (Linux)
            ProcessCollector(registry=registry)
        self.frames = Counter(
            "polypstream_frames",
            "Frames answered, by status and by origin (grpc for client streams, else the source name).",
            ["status", "source"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "polypstream_stage_seconds",
            "Time a frame spends in each server stage.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "polypstream_batch_size", "Frames per inference batch.", buckets=BATCH_BUCKETS, registry=registry
        )
        self.batches = Counter(
            "polypstream_batches", "Inference batches run, by outcome.", ["outcome"], registry=registry
        )
        self.queue_depth = Gauge("polypstream_queue_depth", "Frames waiting for a batch.", registry=registry)
        self.active_streams = Gauge("polypstream_active_streams", "Open Segment streams.", registry=registry)
        self.subscribers = Gauge("polypstream_subscribers", "Open Watch subscriptions.", registry=registry)
        self.dropped = Counter(
            "polypstream_dropped_frames",
            "Frames or results not delivered as segmented, by reason and origin.",
            ["reason", "source"],
            registry=registry,
        )
        self.stream_aborts = Counter(
            "polypstream_stream_aborts",
            "Segment streams and Watch calls the server ended early, by reason (slow_client: a stream's client "
            "stopped reading results; slow_watcher: a watcher did).",
            ["reason"],
            registry=registry,
        )
        self.streams_refused = Counter(
            "polypstream_streams_refused",
            "Segment streams and Watch calls refused at their start, by reason (limit: --max-streams open; "
            "watch_limit: --max-watchers open; shutting_down).",
            ["reason"],
            registry=registry,
        )
        self.source_reconnects = Counter(
            "polypstream_source_reconnects",
            "Times a live server-side source was reopened after it stopped.",
            ["source"],
            registry=registry,
        )
        self.unauthenticated = Counter(
            "polypstream_unauthenticated_requests",
            "Calls refused for a missing or invalid bearer token, by RPC method.",
            ["method"],
            registry=registry,
        )
        self.frame_memory = Gauge(
            "polypstream_frame_memory_bytes",
            "Bytes reserved by frames of client streams: image bytes, pixels, masks and overlays not yet sent.",
            registry=registry,
        )
        self.frame_memory_limit = Gauge(
            "polypstream_frame_memory_limit_bytes",
            "The most bytes frames of client streams may reserve, all streams together (--memory-limit-mb).",
            registry=registry,
        )
        self.view_viewers = Gauge(
            "polypstream_view_viewers", "Pages connected to the live view (serve --ui).", registry=registry
        )
        self.view_pictures = Counter(
            "polypstream_view_pictures",
            "Pictures drawn for the live view (none while no page is ready for one).",
            registry=registry,
        )
        self.gil_wait = Histogram(
            "polypstream_gil_wait_seconds",
            "How much later than asked a thread of the server that slept ran Python again, sampled 100 "
            "times a second: the wait for the GIL (and for a free core). Tenths of a ms with room; the GIL's "
            "switch interval (--gil-switch-ms) and more when Python work saturates the process.",
            buckets=GIL_WAIT_BUCKETS,
            registry=registry,
        )
        self.model = Info("polypstream_model", "The model being served.", registry=registry)
        # Each frame observes several stages: their children looked up once (labels() takes a lock
        # and builds a key: 0.9 µs a call, seven calls a frame).
        self.stage = {stage: self.stage_seconds.labels(stage) for stage in STAGES}
        for outcome in ("ok", "failed"):
            self.batches.labels(outcome)
        for status in STATUSES:
            self.frames.labels(status, "grpc")
        for reason in DROP_REASONS:
            self.dropped.labels(reason, "grpc")
        for reason in REFUSAL_REASONS:
            self.streams_refused.labels(reason)

    def track_frame_memory(self, held: Callable[[], float], limit: int) -> None:
        """Read the bytes frames hold at scrape time; publish the limit."""
        self.frame_memory.set_function(held)
        self.frame_memory_limit.set(limit)

    def track_viewers(self, viewers: Callable[[], float]) -> None:
        """Read the live view's connected pages at scrape time."""
        self.view_viewers.set_function(viewers)

    def track_gpu(self, name: str, uuid: str) -> GpuMetrics:
        """Register the GPU's metrics (only a server whose model runs on a GPU it can read has them)."""
        return GpuMetrics(self.registry, name, uuid)

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        """Read the batcher's queue depth at scrape time."""
        self.queue_depth.set_function(depth)


class GpuMetrics:
    """The GPU the model runs on, the whole device (other processes count too), from NVML."""

    def __init__(self, registry: CollectorRegistry, name: str, uuid: str) -> None:
        self.busy = Counter(
            "polypstream_gpu_busy_seconds",
            "Time a kernel ran on the GPU, any process's (NVML's utilization, read every 0.5 s, times the time "
            "since the reading before): rate() is the share of time it was busy. A GPU busy all the time "
            "is the limit; a small model's launches can keep it busy without filling it.",
            registry=registry,
        )
        self.memory_used = Gauge(
            "polypstream_gpu_memory_used_bytes", "GPU memory in use, every process's.", registry=registry
        )
        self.memory_total = Gauge("polypstream_gpu_memory_total_bytes", "GPU memory in all.", registry=registry)
        Info("polypstream_gpu", "The GPU the model runs on.", registry=registry).info({"name": name, "uuid": uuid})
        self.name = name
        self.last: GpuReading | None = None  # the newest reading (the live view shows it)

    def record(self, reading: GpuReading, seconds: float) -> None:
        """One reading, standing for the `seconds` since the one before."""
        self.last = reading
        if reading.busy is not None:
            self.busy.inc(reading.busy * seconds)
        self.memory_used.set(reading.memory_used)
        self.memory_total.set(reading.memory_total)

    def state(self) -> dict[str, object] | None:
        """The newest reading for the live view: the GPU's name, its busy share (None where it has
        none of its own) and memory in GiB (as its name counts it: an H100 80GB has 80 GiB); None
        before the first reading."""
        last = self.last
        if last is None:
            return None
        gib = 2**30
        return {"name": self.name, "busy": last.busy, "memory_used_gib": round(last.memory_used / gib, 2),
                "memory_total_gib": round(last.memory_total / gib, 2)}  # fmt: skip
