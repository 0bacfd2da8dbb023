"""Wires the stages: decode/preprocess → batcher → runner → post-processing → results.

The Pipeline owns the batcher thread and the per-stream trackers; callers hand it decoded
frames and get exactly one Result per frame through a callback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

import cv2
import numpy as np

from .alerts import AlertRule, Alerts, rule_for
from .batcher import STREAM_CLOSED, Batcher, Queued, ResultCallback, ServiceTimeEstimator
from .config import EngineConfig
from .frames import Frame, FrameOptions, Polyp, Result, Status, Timing
from .gpu import GpuProbe, Nvml
from .metrics import GpuMetrics, Metrics
from .postprocess import IouTracker, draw_overlay, locate_polyps, probability_to_mask, warm_up_drawing
from .runner import Runner
from .threads import GilProbe, background_worker, name_os_thread
from .view import ViewHub

logger = logging.getLogger(__name__)

# A batch's probability maps at least this large have their regions found on several threads:
# at 352² (accurate) a map's connected-regions pass takes 0.3 ms without the GIL, and a batch of
# 32 took 14.1 ms on one thread against 8.2 ms on two; at 128² (fast) the GIL-held Python around
# it outweighs the pass, and two threads were slower (a batch of 32: 2.6 ms on one, 3.3 on two).
PARALLEL_REGIONS_MIN_PIXELS = 200 * 200
VIEW_MAX_WIDTH = 960  # the live view's pictures are at most this wide (a monitor tile, not the frame)
VIEW_MIN_SIZE = (640, 360)  # and a viewed client JPEG is decoded at least this large (or in full)


@dataclass
class _StreamState:
    tracker: IouTracker
    alerts: Alerts | None = None  # made with the stream's first frame (its options choose the rule)
    alert_words: str | None = None  # that rule as the live view shows it, with the stream's rate


class Pipeline:
    """The engine behind every RPC: one runner, one batcher, trackers per stream."""

    def __init__(
        self, runner: Runner, config: EngineConfig, metrics: Metrics, *, capacity: int = 1024, gpu: Nvml | None = None
    ) -> None:
        """`gpu`: the GPU the model runs on, read for its metrics while the pipeline runs (closed by `stop`)."""
        self.runner = runner
        self.config = config
        self.metrics = metrics
        self.budget_s = config.budget_ms / 1e3
        # The server's alert rule: each part as configured, else the model's (ConfigError if they clash).
        self.default_alert_rule = rule_for(
            runner.contract.alert_rule, config.alert_min_seen, config.alert_window, config.alert_hold
        )
        self.batcher = Batcher(
            self._process,
            max_batch=min(config.max_batch, runner.max_batch),
            max_wait_s=config.max_wait_ms / 1e3,
            capacity=capacity,
            estimator=ServiceTimeEstimator(),
            discard=lambda frame: frame.stream_key not in self._streams,
            # While live streams are active, offline work runs in slices of a quarter of the
            # budget: a live frame arriving meanwhile still has three quarters left.
            offline_slice_s=self.budget_s / 4,
        )
        workers = config.decode_workers or os.cpu_count() or 2
        self.decode_workers = workers
        self.decode_pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="polypstream-decode", initializer=name_os_thread
        )
        # Offline (no-drop) frames are decoded on their own, smaller pool: a client sending as
        # fast as it may keeps it busy, never the queue that live frames wait in.
        self.offline_decode_workers = config.offline_decode_workers or max(1, workers // 2)
        self.offline_decode_pool = ThreadPoolExecutor(
            max_workers=self.offline_decode_workers,
            thread_name_prefix="polypstream-offline",
            initializer=background_worker,
        )
        # Frame-sized masks and overlays (and the live view's pictures) are drawn and encoded on
        # a pool of their own: a 4096x4096 overlay takes a second, and in the decode pool's queue
        # every other stream's next frame would wait behind it.
        self.render_pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="polypstream-render", initializer=background_worker
        )
        # A batch's polyp regions are found on several threads when its maps are large (the
        # connected-regions pass runs without the GIL); the batcher's thread takes a share too.
        self.region_shares = workers  # the pool's threads and the batcher's
        self.regions_pool = ThreadPoolExecutor(
            max_workers=max(1, workers - 1), thread_name_prefix="polypstream-regions", initializer=name_os_thread
        )
        # How long threads wait to run Python again: the GIL's load (polypstream_gil_wait_seconds).
        self.gil_probe = GilProbe(metrics.gil_wait.observe)
        self.gpu = gpu
        self.gpu_metrics: GpuMetrics | None = None
        self.gpu_probe: GpuProbe | None = None
        if gpu is not None:
            self.gpu_metrics = metrics.track_gpu(gpu.name, gpu.uuid)
            self.gpu_probe = GpuProbe(gpu.read, self.gpu_metrics.record)
        self._streams: dict[str, _StreamState] = {}
        self.view: ViewHub | None = None  # the live view (serve --ui), when there is one
        self._lock = threading.Lock()
        metrics.track_queue_depth(lambda: self.batcher.depth)
        c = runner.contract
        metrics.model.info(
            {
                "name": c.name,
                "version": c.version,
                "provider": runner.provider,
                "input": f"{c.input_width}x{c.input_height}",
            }
        )

    def start(self) -> None:
        """Warm the model and the drawing threads up (seeding the batcher's time estimates),
        then accept frames."""
        # Masks and overlays are drawn on the render pool: without this, a stream's first
        # overlay pays OpenCV's per-thread font loading (~30 ms) inside its latency budget.
        on_every_thread(self.render_pool, self.decode_workers, warm_up_drawing)
        for size, seconds in self.runner.warm_up().items():
            self.batcher.estimator.observe(size, seconds)
        one = self.batcher.estimator.estimate(1)
        if one > self.budget_s:
            logger.warning(
                "one frame takes %.1f ms on %s, over the %.1f ms budget: live frames will be dropped; "
                "raise --budget-ms or use a faster model",
                one * 1e3, self.runner.provider, self.config.budget_ms,
            )  # fmt: skip
        self.batcher.start()
        self.gil_probe.start()
        if self.gpu_probe is not None:
            self.gpu_probe.start()

    def gpu_state(self) -> dict[str, object] | None:
        """The GPU's newest reading, for the live view (None without a GPU read, or before its first reading)."""
        return None if self.gpu_metrics is None else self.gpu_metrics.state()

    def stop(self) -> None:
        """Answer every accepted frame, then stop the worker threads."""
        self.gil_probe.stop()
        if self.gpu_probe is not None:
            self.gpu_probe.stop()
        if self.gpu is not None:
            self.gpu.close()
        self.batcher.stop()
        self.regions_pool.shutdown(wait=True)
        self.decode_pool.shutdown(wait=True)
        self.offline_decode_pool.shutdown(wait=True)
        self.render_pool.shutdown(wait=True)

    def make_frame(
        self,
        stream_key: str,
        stream_id: str,
        index: int,
        image: np.ndarray,
        received_at: float,
        *,
        options: FrameOptions = FrameOptions(),
        client_time_ns: int = 0,
        decode_s: float = 0.0,
        original_size: tuple[int, int] | None = None,
    ) -> Frame:
        """A Frame with its model input computed (call from a decode worker, not the event loop).

        `original_size` is the frame's (width, height) when `image` was decoded smaller."""
        start = time.perf_counter()
        tensor = self.runner.preprocess(image)
        decode_s += time.perf_counter() - start
        self.metrics.stage["decode"].observe(decode_s)
        return Frame(
            stream_key=stream_key,
            stream_id=stream_id,
            index=index,
            image=image,
            received_at=received_at,
            deadline=received_at + self.budget_s,
            options=options,
            client_time_ns=client_time_ns,
            decode_s=decode_s,
            tensor=tensor,
            original_size=original_size,
        )

    def submit(self, frame: Frame, on_done: ResultCallback, *, origin: str = "grpc") -> None:
        """Queue a frame; `on_done` gets its Result exactly once (from a worker thread).

        Raises batcher.QueueFullError / BatcherStoppedError when the frame is not accepted.
        """

        def finish(result: Result) -> None:
            self.record(result, origin)
            if self.view is not None:
                self.view.observe(
                    frame.stream_key,
                    frame.stream_id,
                    result,
                    frame.options.allow_view,
                    alerts=self._alert_words(frame.stream_key),
                )
            on_done(result)

        def finish_rendered(result: Result) -> None:
            finish(self._rendered(result))

        def done(result: Result) -> None:  # on the batcher's thread
            if result.status is Status.DROPPED_LATE:  # the alerts on stay on screen while held, not advanced
                result = replace(result, held=self._showing(frame.stream_key, frame.index))
            if result.render is None:
                finish(result)
                return
            try:  # drawing a frame-sized mask or overlay must not hold up the next batch
                self.render_pool.submit(finish_rendered, result)
            except RuntimeError:  # the pool is shut down: draw it here
                finish_rendered(result)

        self.batcher.submit(frame, done)

    def _rendered(self, result: Result) -> Result:
        assert result.render is not None
        try:
            return result.render()
        except Exception as exc:
            logger.exception("drawing the mask or overlay of %s#%d failed", result.stream_id, result.index)
            return replace(result, status=Status.FAILED, error=f"drawing the mask or overlay failed: {exc}",
                           polyps=(), render=None)  # fmt: skip

    def record(self, result: Result, origin: str) -> None:
        """Count a result and observe its timings (also for results made outside the batcher)."""
        m = self.metrics
        m.frames.labels(result.status.value, origin).inc()
        if result.status is Status.DROPPED_LATE:
            m.dropped.labels("late", origin).inc()
        elif result.status is Status.FAILED and result.error == STREAM_CLOSED:
            m.dropped.labels("stream_closed", origin).inc()
        if result.status is Status.OK:
            t = result.timing
            m.stage["queue"].observe(t.queue_s)
            m.stage["inference"].observe(t.inference_s)
            m.stage["postprocess"].observe(t.postprocess_s)
        m.stage["server"].observe(result.timing.server_s)

    def open_stream(self, stream_key: str) -> None:
        """Start a stream's state (tracker, alerts); its frames are processed until it is closed."""
        with self._lock:
            self._streams[stream_key] = _StreamState(IouTracker())

    def close_stream(self, stream_key: str) -> None:
        """Forget a finished stream; its frames still queued are discarded, not run."""
        with self._lock:
            self._streams.pop(stream_key, None)
        if self.view is not None:
            self.view.forget(stream_key)

    def alert_rule(self, options: FrameOptions) -> AlertRule:
        """The alert rule a frame's options ask for: the server's, scaled to the stream's frame
        rate if it says it, for each part unset. Raises ConfigError for an impossible one."""
        o = options
        base = self.default_alert_rule.at_rate(o.frame_rate or None)
        return rule_for(base, o.alert_min_seen, o.alert_window, o.alert_hold, whose="the server")

    def _stream(self, frame: Frame) -> _StreamState:
        with self._lock:
            # A stream closed while its batch ran gets throwaway state: nothing is kept.
            state = self._streams.get(frame.stream_key) or _StreamState(IouTracker())
        if state.alerts is None:  # the stream's first frame sets its alert rule
            state.alerts = Alerts(self.alert_rule(frame.options))
            rate = frame.options.frame_rate
            state.alert_words = f"{state.alerts.rule}, " + (f"at {rate:g} fps" if rate else "frame rate not said")
        return state

    def _state_of(self, stream_key: str) -> _StreamState | None:
        with self._lock:
            return self._streams.get(stream_key)

    def _showing(self, stream_key: str, index: int) -> tuple[Polyp, ...]:
        """The stream's alerting tracks at their last box whose hold lasts to frame `index` (on
        the batcher's thread, the only one that changes alert state)."""
        state = self._state_of(stream_key)
        return state.alerts.showing(index) if state is not None and state.alerts is not None else ()

    def _alert_words(self, stream_key: str) -> str | None:
        state = self._state_of(stream_key)
        return state.alert_words if state is not None else None

    def _process(self, batch: list[Queued], launched_at: float) -> list[Result]:
        start = time.perf_counter()
        tensors = [q.frame.tensor for q in batch]
        if any(t is None for t in tensors):
            raise RuntimeError("frame queued without a model input")
        try:
            probs = self.runner.run([t for t in tensors if t is not None])
        except Exception:
            self.metrics.batches.labels("failed").inc()
            raise
        inference_s = time.perf_counter() - start
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batches.labels("ok").inc()
        regions = self._regions(batch, probs)
        return [
            self._postprocess(q, prob, found, launched_at, inference_s, len(batch))
            for q, prob, found in zip(batch, probs, regions, strict=True)
        ]

    def _regions(self, batch: list[Queued], probs: np.ndarray) -> list[tuple[list[Polyp], float]]:
        """Each frame's polyps and the seconds finding them took, in batch order: on the
        regions pool and this thread together when the maps are large enough to gain by it."""
        contract = self.runner.contract

        def find(indices: range) -> list[tuple[list[Polyp], float]]:
            found = []
            for i in indices:
                start = time.perf_counter()
                frame = batch[i].frame
                polyps = locate_polyps(
                    probs[i], frame.width, frame.height, contract.threshold,
                    min_area_fraction=self.config.min_area_fraction, min_score=contract.min_region_score,
                )  # fmt: skip
                found.append((polyps, time.perf_counter() - start))
            return found

        n = len(batch)
        shares = min(n, self.region_shares)
        if shares < 2 or probs[0].size < PARALLEL_REGIONS_MIN_PIXELS:
            return find(range(n))
        try:
            others = [self.regions_pool.submit(find, range(k, n, shares)) for k in range(1, shares)]
        except RuntimeError:  # the pool is shut down: the server is stopping
            return find(range(n))
        parts = [find(range(0, n, shares))] + [f.result() for f in others]
        return [parts[i % shares][i // shares] for i in range(n)]

    def _postprocess(
        self,
        queued: Queued,
        prob: np.ndarray,
        regions: tuple[list[Polyp], float],
        launched_at: float,
        inference_s: float,
        size: int,
    ) -> Result:
        frame = queued.frame
        found, finding_s = regions
        start = time.perf_counter() - finding_s  # its post-processing began with finding its regions
        width, height = frame.width, frame.height
        contract = self.runner.contract
        state = self._stream(frame)
        assert state.alerts is not None
        alert = state.alerts.update(state.tracker.update(found), frame.index)
        options = frame.options
        mask = None  # the frame-resolution mask and the overlay are drawn later, off this thread
        if options.return_mask and options.mask_at_model_resolution and not options.return_overlay:
            mask = prob > contract.threshold
        result = Result(
            stream_id=frame.stream_id,
            index=frame.index,
            status=Status.OK,
            polyps=alert.polyps,
            held=alert.held,
            alert_events=alert.events,
            width=width,
            height=height,
            timing=Timing(
                decode_s=frame.decode_s,
                queue_s=launched_at - queued.enqueued_at,
                batch_size=size,
                inference_s=inference_s,
                postprocess_s=time.perf_counter() - start,
                server_s=time.monotonic() - frame.received_at,
            ),
            mask=mask,
            client_time_ns=frame.client_time_ns,
        )
        if options.return_overlay or (options.return_mask and mask is None):
            result = replace(result, render=partial(self._render, result, frame, prob))
        if options.allow_view and self.view is not None and self.view.claim_picture(frame.stream_key):
            try:
                self.render_pool.submit(self._draw_view, frame, prob, result.polyps, result.held)
            except RuntimeError:  # the pool is shut down: the server is stopping
                self.view.unclaim(frame.stream_key)
        return result

    def _render(self, result: Result, frame: Frame, prob: np.ndarray) -> Result:
        """`result` with the mask and overlay its frame asked for (the frame-resolution mask is
        made only if one of them needs it); the time taken counts as post-processing."""
        start = time.perf_counter()
        options, threshold = frame.options, self.runner.contract.threshold
        full_mask = None
        if options.return_overlay or (options.return_mask and not options.mask_at_model_resolution):
            full_mask = probability_to_mask(prob, frame.width, frame.height, threshold)[0]
        mask = None
        if options.return_mask:
            mask = prob > threshold if options.mask_at_model_resolution else full_mask
        overlay = draw_reported(frame.image, full_mask, result.polyps, result.held) if options.return_overlay else None
        timing = replace(
            result.timing,
            postprocess_s=result.timing.postprocess_s + time.perf_counter() - start,
            server_s=time.monotonic() - frame.received_at,
        )
        return replace(result, mask=mask, overlay=overlay, timing=timing, render=None)

    def _draw_view(self, frame: Frame, prob: np.ndarray, polyps: tuple[Polyp, ...], held: tuple[Polyp, ...]) -> None:
        """Draw the live view's picture of a frame (on a worker, apart from the frame's answer)
        at most VIEW_MAX_WIDTH wide, as the overlay would show it, and hand it to the view with
        every polyp of the frame (alerting or not) in the picture's pixels."""
        assert self.view is not None
        try:
            image_h, image_w = frame.image.shape[:2]
            scale = min(1.0, VIEW_MAX_WIDTH / image_w)
            width, height = max(1, round(image_w * scale)), max(1, round(image_h * scale))
            image = (
                frame.image if scale == 1.0 else cv2.resize(frame.image, (width, height), interpolation=cv2.INTER_AREA)
            )
            sx, sy = width / frame.width, height / frame.height
            polyps = tuple(_scaled(p, sx, sy) for p in polyps)
            held = tuple(_scaled(p, sx, sy) for p in held)
            mask = probability_to_mask(prob, width, height, self.runner.contract.threshold)[0]
            picture = draw_reported(image, mask, polyps, held)
            jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
            self.metrics.view_pictures.inc()
            self.view.publish(frame.stream_key, frame.index, jpeg, polyps, held)
        except Exception:
            logger.exception("drawing the live view of %s#%d failed", frame.stream_id, frame.index)
            self.view.unclaim(frame.stream_key)


def draw_reported(
    image: np.ndarray, mask: np.ndarray | None, polyps: tuple[Polyp, ...], held: tuple[Polyp, ...]
) -> np.ndarray:
    """The overlay of what is reported as alerting (the gRPC overlay and the live view's picture
    alike): boxes of alerting and held polyps, and the mask only inside those found in this frame."""
    shown = tuple(p for p in polyps if p.alerting)
    return draw_overlay(image, mask, shown + held, mask_within=shown)


def _scaled(polyp: Polyp, sx: float, sy: float) -> Polyp:
    x, y, w, h = polyp.box
    box = (round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy)))
    return replace(polyp, box=box)


def on_every_thread(pool: ThreadPoolExecutor, workers: int, work: Callable[[], None], timeout_s: float = 10.0) -> None:
    """Run `work` once on each of the pool's `workers` threads (starting them).

    Each task waits for all the others to start before it returns, so no thread takes two; a
    pool that cannot start them all within `timeout_s` still gets as many as it started."""
    barrier = threading.Barrier(workers)

    def once() -> None:
        work()
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout_s)

    for future in [pool.submit(once) for _ in range(workers)]:
        future.result()
