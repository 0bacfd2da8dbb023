"""`polypstream serve | stream | demo`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
from prometheus_client import CollectorRegistry, start_http_server

from . import __version__, capture, workers
from ._proto.polypstream.v1 import segmenter_pb2 as pb
from .alerts import AlertRule, check_frame_rate, rule_for
from .capture import DEFAULT_FPS, CapturedFrame, FrameSource, Reopening, SourceError, endless, is_live, redact_uri
from .client import SERVER_GONE, Answer, SegmenterClient, SourceWatch, Stream, Watched
from .config import MIB, MIN_AREA_FRACTION, ConfigError, EngineConfig, ServerConfig, TlsFiles, env_default
from .corpus import plan_corpus, write_corpus
from .dataset import DatasetError
from .evaluate import evaluate
from .frames import FrameOptions
from .gpu import GpuError, Nvml, open_gpu
from .memory import release_freed_memory_promptly
from .metrics import Metrics
from .pipeline import Pipeline
from .plots import PlotUnavailableError, plot_alert_sweep, plot_replay
from .postprocess import draw_overlay
from .replay import Tally, replay
from .runner import ModelError, Runner, resolve_model
from .scores import SplitScores
from .security import TOKEN_ENV, SecurityConfigError, client_credentials, load_token, server_credentials
from .server import serve_in_thread, start_server
from .sources import SourceHub
from .stats import percentile
from .threads import opencv_on_the_calling_thread
from .ui import LiveView
from .video_sources import evaluate_videos
from .view import ViewHub
from .wire import polyp_from_proto

logger = logging.getLogger("polypstream")
SAMPLE_CLIP = Path(__file__).resolve().parent / "data" / "sample.mp4"


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


# The overlay video's container (by its file's suffix) and the codec written into it.
OVERLAY_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mkv": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}


def check_output(flag: str, path: Path, *, folder: bool = False) -> None:
    """Raise CliError (one line) unless what the command will write at `path` (for `folder`, in
    it) can be written there: checked before the work, so that a long replay does not end in a
    traceback with its report lost. Changes nothing: the folders are made when written to."""
    named = f"{flag} {path}" if flag else str(path)  # the flag and its value, or the path alone
    where = path if folder else path.parent
    if not folder and path.is_dir():
        raise CliError(f"{named}: is a folder; name a file")
    existing = where
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"{named}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"{named}: cannot write in {existing} (permission denied or a read-only file system)")


def check_overlay_output(flag: str, path: Path) -> None:
    """check_output, and a suffix that names a container the overlay video can be written in."""
    if path.suffix.lower() not in OVERLAY_CODECS:
        named = f"not {path.suffix!r}" if path.suffix else "its name has no suffix"
        raise CliError(f"{flag} {path}: the overlay video is written as {', '.join(OVERLAY_CODECS)}; {named}")
    check_output(flag, path)


def add_model_flags(g: argparse._ActionsContainer) -> None:
    """--model and --device, for every command that loads a model."""
    g.add_argument(
        "--model",
        default=env_default("MODEL", "") or None,
        help="fast, accurate or an ONNX path (default: accurate on CUDA, else fast)",
    )
    g.add_argument(
        "--device",
        choices=["auto", "cuda", "cpu"],
        default=env_default("DEVICE", "auto"),
        help="auto: CUDA when usable; cuda: fail without it",
    )


def add_alert_flags(parser: argparse.ArgumentParser) -> None:
    """--alert-min-seen, --alert-window, --alert-hold (see alerts.py)."""
    alerts = parser.add_argument_group(
        "alerts (a track alerts once seen in N of its last M frames, held H unseen; frames of 25 fps video, "
        "scaled to each stream's frame rate)"
    )
    default = AlertRule()
    for flag, env, fallback, text in (
        ("--alert-min-seen", "ALERT_MIN_SEEN", default.min_seen, "N: frames a track must be seen in"),
        ("--alert-window", "ALERT_WINDOW", default.window, "M: of its last this many frames"),
        ("--alert-hold", "ALERT_HOLD", default.hold, "H: unseen frames an alert outlasts"),
    ):
        value = env_default(env, "")
        alerts.add_argument(
            flag,
            type=int,
            default=int(value) if value else None,
            help=f"{text} (default: the model's own rule, else {fallback})",
        )


def frame_rate_flag(text: str) -> float:
    """--frame-rate: frames a second, 0 to say none."""
    try:
        fps = float(text)
        if fps != 0:
            check_frame_rate(fps)
    except ValueError as exc:  # ConfigError among them
        raise argparse.ArgumentTypeError(
            str(exc) if isinstance(exc, ConfigError) else f"not a number: {text!r}"
        ) from None
    return fps


def add_frame_rate_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--frame-rate",
        type=frame_rate_flag,
        metavar="FPS",
        help="the source's frames a second, sent so that the server's alert rule is scaled to it "
        "(default: what the source says, e.g. a video file's rate; 0: say none, for a device that reports a wrong one)",
    )


def alert_rule(args: argparse.Namespace, runner: Runner) -> AlertRule:
    """The rule the alert flags ask for, the model's own (else the default) for each part unset."""
    return rule_for(runner.contract.alert_rule, args.alert_min_seen, args.alert_window, args.alert_hold)


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    add_model_flags(g)
    g.add_argument("--max-batch", type=int, default=int(env_default("MAX_BATCH", "8")), help="largest inference batch")
    g.add_argument(
        "--budget-ms", type=float, default=float(env_default("BUDGET_MS", "40")), help="per-frame latency budget"
    )
    g.add_argument(
        "--max-wait-ms",
        type=float,
        default=float(env_default("MAX_WAIT_MS", "2")),
        help="longest a frame waits for a batch to fill",
    )
    g.add_argument(
        "--threads", type=int, default=int(env_default("THREADS", "0")), help="onnxruntime threads (0: default)"
    )
    g.add_argument(
        "--decode-workers",
        type=int,
        default=int(env_default("DECODE_WORKERS", "0")),
        help="threads decoding frames and drawing masks and overlays (0: one per CPU core)",
    )
    g.add_argument(
        "--offline-decode-workers",
        type=int,
        default=int(env_default("OFFLINE_DECODE_WORKERS", "0")),
        help="threads decoding no-drop frames, below the live ones (0: half the decode workers)",
    )
    g.add_argument(
        "--gil-switch-ms",
        type=float,
        default=float(env_default("GIL_SWITCH_MS", "0.5")),
        help="longest one thread holds Python's GIL while another waits for it (Python's own: 5)",
    )
    add_alert_flags(parser)
    g.add_argument(
        "--min-area-fraction",
        type=float,
        default=float(env_default("MIN_AREA_FRACTION", str(MIN_AREA_FRACTION))),
        help="regions smaller than this share of the frame are noise, not polyps",
    )


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model,
        device=args.device,
        max_batch=args.max_batch,
        budget_ms=args.budget_ms,
        max_wait_ms=args.max_wait_ms,
        threads=args.threads,
        min_area_fraction=args.min_area_fraction,
        decode_workers=args.decode_workers,
        offline_decode_workers=args.offline_decode_workers,
        gil_switch_ms=args.gil_switch_ms,
        alert_min_seen=args.alert_min_seen,
        alert_window=args.alert_window,
        alert_hold=args.alert_hold,
    )


def build_pipeline(config: EngineConfig, registry: CollectorRegistry, *, read_gpu: bool = False) -> Pipeline:
    """The model loaded and its pipeline; `read_gpu`: with the GPU's metrics where the model runs on one."""
    opencv_on_the_calling_thread()  # the pipeline's pools are the parallelism
    sys.setswitchinterval(config.gil_switch_ms / 1e3)  # for the whole process, as the GIL is
    path = resolve_model(config.model)
    runner = Runner(path, device=config.device, max_batch=config.max_batch, threads=config.threads)
    gpu = None
    if read_gpu and runner.provider == "CUDAExecutionProvider":
        try:
            gpu = open_gpu()
        except GpuError as exc:
            logger.warning("no GPU metrics: %s", exc)
    pipeline = Pipeline(runner, config, Metrics(registry), gpu=gpu)
    logger.info("model %s from %s; alerts: %s", model_words(runner, gpu), path, pipeline.default_alert_rule.counted())
    return pipeline


def model_words(runner: Runner, gpu: Nvml | None) -> str:
    """The model as "NAME VERSION on PROVIDER", with the GPU's name where it is read (log, first line)."""
    where = runner.provider if gpu is None else f"{runner.provider} ({gpu.name})"
    return f"{runner.contract.name} {runner.contract.version} on {where}"


def check_listen_address(flag: str, address: str) -> None:
    """Raise CliError (one line) unless `address` is HOST:PORT with a host that resolves, or unix:PATH."""
    if address.startswith("unix:"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise CliError(f"{flag} {address}: expected HOST:PORT (e.g. 127.0.0.1:50051) or unix:PATH")
    try:
        socket.getaddrinfo(host.strip("[]"), int(port))
    except (OSError, UnicodeError) as exc:
        raise CliError(f"{flag} {address}: cannot resolve '{host}' ({exc})") from exc


def check_port_free(address: str, flag: str = "--address") -> None:
    """Raise CliError (one line) when something already listens on HOST:PORT (`flag`'s): gRPC
    would log a line of its own before failing, and `serve` would load the model first."""
    if address.startswith("unix:") or workers.split_host_port(address)[1] == 0:
        return
    infos = workers.listen_addresses(address)
    refused: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a port in TIME_WAIT is free
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    why = "the port is in use (another server listens there)"
                    raise CliError(f"cannot listen on {address} ({flag}): {why}") from exc
                refused.append(exc)
    if refused and len(refused) == len(infos):  # gRPC needs one of the host's addresses
        raise CliError(f"cannot listen on {address} ({flag}): {refused[0].strerror or refused[0]}")


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return address.startswith("unix:") or host in ("127.0.0.1", "localhost", "::1")


def add_client_flags(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    g = parser.add_argument_group("connection")
    if several:
        g.add_argument("--server", action="append", default=[], help="host:port; repeat to spread over replicas")
    else:
        g.add_argument("--server", default=env_default("SERVER", ServerConfig.address), help="host:port or unix:PATH")
    g.add_argument("--tls-ca", type=Path, help="CA certificate to trust: connect with TLS")
    g.add_argument("--tls-cert", type=Path, help="client certificate (mTLS)")
    g.add_argument("--tls-key", type=Path, help="client key (mTLS)")
    g.add_argument("--token-file", type=Path, help=f"file holding the bearer token (default: ${TOKEN_ENV})")


STREAM_RECONNECT_HELP = (
    "when the server goes away mid-stream (a restart, a rolling update), how long to seek it again before "
    "ending; a file's unanswered frames are sent again, a live stream goes on from its newest frame; 0: end at once"
)


def add_wait_flags(parser: argparse.ArgumentParser, reconnect_help: str = STREAM_RECONNECT_HELP) -> None:
    """--connect-timeout and --reconnect: how long a client command waits for its server(s)."""
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the server")
    parser.add_argument("--reconnect", type=float, default=30.0, metavar="SECONDS", help=reconnect_help)


def check_reconnect(seconds: float, flag: str = "--reconnect") -> None:
    if not seconds >= 0:
        raise CliError(f"{flag} must be 0 or more seconds, got {seconds:g}")


def uses_tls(args: argparse.Namespace) -> bool:
    """Whether a client command was told to use TLS."""
    return bool(args.tls_ca or args.tls_cert or args.tls_key)


def connect(args: argparse.Namespace, address: str | None = None) -> SegmenterClient:
    credentials = None
    if uses_tls(args):
        credentials = client_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    return SegmenterClient(address or args.server, credentials=credentials, token=load_token(args.token_file))


# --- serve -------------------------------------------------------------------------------


WILDCARD_HOSTS = ("", "0.0.0.0", "[::]", "::", "*")


def check_distinct_ports(named: list[tuple[str, str]]) -> None:
    """Raise CliError (one line) when two of `serve`'s listeners (flag, HOST:PORT) would take the
    same port: the second would fail to bind after the model loaded, gRPC logging a line of its own."""
    # a malformed address is left to its own check
    tcp = [(flag, *parsed) for flag, address in named if (parsed := workers.host_port(address)) is not None]
    for i, (flag, host, port) in enumerate(tcp):
        for other, other_host, other_port in tcp[:i]:
            overlap = host == other_host or host in WILDCARD_HOSTS or other_host in WILDCARD_HOSTS
            if port and port == other_port and overlap:
                raise CliError(f"{flag} {host}:{port} takes the port of {other} {other_host}:{port}; give each its own")


def server_settings(args: argparse.Namespace) -> ServerConfig:
    """`serve`'s flags as a ServerConfig, after checking the addresses and reading the TLS files."""
    listeners = [("--address", args.address), ("--health-address", args.health_address),
                 ("--metrics-address", args.metrics_address), ("--ui", getattr(args, "ui", None) or "")]  # fmt: skip
    check_distinct_ports(listeners)
    for flag, address in listeners:
        if flag in ("--address", "--health-address") and address:
            check_listen_address(flag, address)
        elif workers.host_port(address) is None:  # none, or malformed: said where it is used
            continue
        if not workers.shares_port():  # a worker's siblings (and parent) hold it on purpose
            check_port_free(address, flag)  # before the model loads
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise CliError("--tls-cert and --tls-key go together")
        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
        server_credentials(tls)  # read the files now: a bad path fails at start, naming it
    elif args.tls_client_ca:
        raise CliError("--tls-client-ca needs --tls-cert and --tls-key")
    return ServerConfig(
        address=args.address,
        metrics_address=args.metrics_address,
        max_streams=args.max_streams,
        max_watchers=args.max_watchers,
        inflight_per_stream=args.inflight_per_stream,
        max_message_bytes=int(args.max_message_mb * MIB),
        grace_s=args.grace,
        send_timeout_s=args.send_timeout,
        max_pixels=args.max_pixels,
        memory_limit_bytes=int(args.memory_limit_mb * MIB),
        stream_memory_limit_bytes=int(args.stream_memory_limit_mb * MIB),
        health_address=args.health_address,
        tls=tls,
        token=load_token(args.token_file),
        shared_port=workers.shares_port(),
    )


def warn_if_exposed(address: str, config: ServerConfig) -> None:
    """A warning for a non-loopback address served without TLS or without a token."""
    tls, token = config.tls, config.token
    if not is_loopback(address) and (tls is None or token is None):
        logger.warning(
            "listening on %s without %s: frames are patient data; use TLS and a token off loopback",
            address,
            "TLS or a token" if tls is None and token is None else "TLS" if tls is None else "a token",
        )


def cmd_serve(args: argparse.Namespace) -> int:
    if args.workers != 1:
        return serve_workers(args)
    if workers.shares_port():  # a worker of `serve --workers`: ends with its parent
        try:
            workers.die_with_parent()
        except workers.WorkerError as exc:
            raise CliError(str(exc)) from exc
    server_config = server_settings(args)
    warn_if_exposed(server_config.address, server_config)
    if args.ui:
        check_listen_address("--ui", args.ui)
        if args.ui.startswith("unix:"):
            raise CliError(f"--ui {args.ui}: the live view needs HOST:PORT (e.g. 127.0.0.1:8080)")
        warn_if_exposed(args.ui, server_config)
    named = parse_sources(args.source)
    rates = parse_source_rates(args.source_frame_rate, named)
    release_freed_memory_promptly()
    registry = CollectorRegistry()
    pipeline = build_pipeline(engine_config(args), registry, read_gpu=workers.reports_gpu())
    sources = open_sources(named, pipeline, realtime=args.source_pacing == "realtime", rates=rates)
    pipeline.start()
    for hub in sources.values():
        if hub.live:
            hub.start()  # live feeds run whether or not anyone watches; files play per first subscriber
    metrics_url = ""
    if server_config.metrics_address:
        host, _, port = server_config.metrics_address.rpartition(":")
        try:
            http_server, _ = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
        except (OSError, ValueError) as exc:
            pipeline.stop()
            raise CliError(f"cannot serve metrics on {server_config.metrics_address}: {exc}") from exc
        metrics_url = f"http://{host or '127.0.0.1'}:{http_server.server_port}/metrics"
    live = start_live_view(args.ui, server_config, pipeline, sources) if args.ui else None
    try:
        asyncio.run(_serve(pipeline, server_config, metrics_url, sources, live.url if live else ""))
    finally:
        if live is not None:
            live.stop()
        for hub in sources.values():
            hub.stop()
        pipeline.stop()
    answered = sum(
        s.value
        for m in registry.collect()
        if m.name == "polypstream_frames"
        for s in m.samples
        if s.name.endswith("_total")
    )
    print(f"polypstream stopped: {answered:.0f} frames answered", flush=True)
    return 0


def serve_workers(args: argparse.Namespace) -> int:
    """`serve --workers N`: N `serve` processes on one port (service/workers.py)."""
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    config = server_settings(args)  # the addresses, TLS files and token checked once, here
    if args.source or args.source_frame_rate:
        raise CliError("--workers: a --source is read by one process; serve sources from a `serve` without --workers")
    if args.ui:
        raise CliError("--workers: the live view (--ui) shows one process's streams; serve it without --workers")
    if config.address.startswith("unix:"):
        raise CliError(f"--workers: {config.address}: workers share a TCP port (HOST:PORT), not a unix socket")
    engine_config(args)  # a bad engine setting or a missing model: one line, before any worker starts
    resolve_model(args.model)
    reserved: list[socket.socket] = []
    try:
        sock, address = workers.reserve_port(config.address)
        reserved.append(sock)
        health = ""
        if config.health_address:
            sock, health = workers.reserve_port(config.health_address)
            reserved.append(sock)
        shares = (config.metrics_address, args.decode_workers, args.threads, os.cpu_count() or 1)
        commands = [
            workers.worker_command(args.argv, i, args.workers, address, health, *shares) for i in range(args.workers)
        ]
        started = workers.start_workers(commands)
    except workers.WorkerError as exc:
        raise CliError(str(exc)) from exc
    finally:
        for sock in reserved:  # the workers listen on the ports now (or failed)
            sock.close()
    print(workers.serving_line(started, address, health), flush=True)
    return workers.supervise(started)


def parse_sources(specs: list[str]) -> dict[str, str]:
    """NAME=URI pairs (opened later, by their SourceHubs)."""
    sources: dict[str, str] = {}
    for spec in specs:
        name, sep, uri = spec.partition("=")
        if not sep or not name or not uri:
            raise CliError(f"--source expects NAME=URI, got '{redact_uri(spec)}'")
        if name in sources:
            raise CliError(f"--source name '{name}' given twice")
        sources[name] = uri
    return sources


def parse_source_rates(specs: list[str], named: dict[str, str]) -> dict[str, float]:
    """--source-frame-rate NAME=FPS pairs, each naming a --source."""
    rates: dict[str, float] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        if not sep or not name or not text:
            raise CliError(f"--source-frame-rate expects NAME=FPS, got '{spec}'")
        if name not in named:
            raise CliError(f"--source-frame-rate {spec}: no --source is named '{name}'")
        if name in rates:
            raise CliError(f"--source-frame-rate: source '{name}' given twice")
        try:
            rates[name] = frame_rate_flag(text)
        except argparse.ArgumentTypeError as exc:
            raise CliError(f"--source-frame-rate {spec}: {exc}") from None
    return rates


def open_sources(
    named: dict[str, str], pipeline: Pipeline, *, realtime: bool, rates: dict[str, float] | None = None
) -> dict[str, SourceHub]:
    """A SourceHub per NAME=URI, each source opened now: one that cannot be opened stops
    `serve` at start, naming it (the hubs keep what they opened for their capture threads).
    `rates`: frame rates the operator states, by source name."""
    hubs: dict[str, SourceHub] = {}
    for name, uri in named.items():
        hub = SourceHub(name, uri, pipeline, realtime=realtime, frame_rate=(rates or {}).get(name))
        try:
            hub.open()
        except SourceError as exc:
            for opened in hubs.values():
                opened.stop()
            raise CliError(f"source '{name}': {str(exc).replace(uri, hub.shown_uri)}") from exc
        hubs[name] = hub
    return hubs


def start_live_view(address: str, config: ServerConfig, pipeline: Pipeline, sources: dict[str, SourceHub]) -> LiveView:
    """The live view on `address`, with the gRPC port's token and TLS, fed by the pipeline."""
    runner = pipeline.runner
    c = runner.contract
    model = {
        "name": c.name,
        "version": c.version,
        "provider": runner.provider,
        "budget_ms": pipeline.config.budget_ms,
        "alerts": pipeline.default_alert_rule.counted(),  # scaled to each stream's rate, unless it sets its own
    }
    hub = ViewHub(model, sources, gpu=pipeline.gpu_state)
    try:
        live = LiveView(
            hub,
            address,
            token=config.token,
            tls=config.tls,
            send_timeout_s=config.send_timeout_s,
            rejected=pipeline.metrics.unauthenticated,
        )
    except OSError as exc:
        pipeline.stop()
        raise CliError(f"cannot serve the live view on {address}: {exc.strerror or exc}") from exc
    pipeline.view = hub
    pipeline.metrics.track_viewers(lambda: hub.viewers)
    live.start()
    return live


async def _serve(
    pipeline: Pipeline, config: ServerConfig, metrics_url: str, sources: dict[str, SourceHub], ui_url: str = ""
) -> None:
    try:
        running = await start_server(pipeline, config, sources)
    except (OSError, RuntimeError) as exc:
        raise CliError(f"cannot listen on {config.address}: {exc}") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = f", metrics on {metrics_url}" if metrics_url else ""
    if running.health_address:
        metrics += f", health on {running.health_address}"
    if ui_url:
        metrics += f", live view on {ui_url}"
    logger.info("serving polypstream.v1.Segmenter on %s%s", running.address, metrics)
    model = f"{model_words(pipeline.runner, pipeline.gpu)}; alerts {pipeline.default_alert_rule.counted()}"
    print(f"polypstream serving on {running.address}{metrics} (model {model})", flush=True)
    await stop.wait()
    logger.info("shutting down: finishing accepted frames (grace %.0f s)", config.grace_s)
    await running.shutdown(config.grace_s)


# --- stream ------------------------------------------------------------------------------


def show_progress(what: str, done: int, total: int, started: float) -> None:
    """`what`, the rate and the time left, on stderr: redrawn in place on a terminal, one line
    each in a log (no carriage returns in it)."""
    elapsed = time.monotonic() - started
    if done and elapsed > 0:
        rate = done / elapsed
        what += f" ({rate:.1f}/s, {max(0.0, (total - done) / rate):.0f} s left)"
    sys.stderr.write(f"\r{what}\x1b[K" if sys.stderr.isatty() else f"{what}\n")  # one write: one whole line
    sys.stderr.flush()


def end_progress() -> None:
    """End a progress line redrawn in place (on a terminal; a log has whole lines already)."""
    if sys.stderr.isatty():
        print(file=sys.stderr, flush=True)


@dataclass
class StreamSummary:
    frames: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    frames_with_polyps: int = 0
    detections: int = 0
    tracks: set[int] = field(default_factory=set)
    alerts: int = 0  # alerts started
    frames_alerting: int = 0  # frames showing an alert (a detected or a held polyp; a dropped frame's held ones)
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    flat_out: bool = False  # frames sent as fast as the server took them (not at the source's pace)
    interrupted: bool = False  # Ctrl-C: no more frames were sent; those sent were answered
    sent: int = 0  # frames handed to the call
    ended_early: str = ""  # the call's status when it ended before every frame sent was answered
    source: str = ""  # `watch`: the server-side source watched (no frame sent: no round trip)
    missed: int = 0  # `watch`: frames of the source between its first and last result without one
    reconnects: int = 0  # new calls after the server went away (client.Stream, client.SourceWatch)
    lost: int = 0  # `stream`, live: frames sent on a call that ended before answering them
    unsent: int = 0  # `stream`, live: frames read while no server answered, not sent
    skipped: int = 0  # `stream`, live: frames that aged out unsent while the call took frames too slowly
    source_gaps_s: list[float] = field(default_factory=list)  # `stream`, live: seconds of each stop it came back from
    source_lost: str = ""  # `stream`, live: the source stopped and did not come back (capture.Reopening.gave_up)
    last_index: int | None = None

    def add(self, answer: Watched) -> None:
        """Count one answer (or, for `watch`, one result of the source)."""
        self.frames += 1
        self.statuses[answer.status] = self.statuses.get(answer.status, 0) + 1
        r = answer.result
        if self.source and self.last_index is not None and r.index > self.last_index + 1:
            self.missed += r.index - self.last_index - 1
        self.last_index = r.index
        self.frames_alerting += any(p.alerting for p in r.polyps) or bool(r.held)
        if answer.status == "OK":
            if isinstance(answer, Answer):
                self.latencies_ms.append(answer.latency_s * 1e3)
            self.server_ms.append(r.timing.server_ms)
            self.detections += len(r.polyps)
            self.frames_with_polyps += bool(r.polyps)
            self.tracks.update(p.track_id for p in r.polyps)
            self.alerts += answer.alerts_started

    def as_dict(self) -> dict[str, object]:
        watched = {"source": self.source, "missed": self.missed} if self.source else {}
        return (
            watched
            | {
                "frames": self.frames,
                "statuses": self.statuses,
                "frames_with_polyps": self.frames_with_polyps,
                "polyp_detections": self.detections,
                "tracks": len(self.tracks),
                "alerts": self.alerts,
                "frames_alerting": self.frames_alerting,
                "latency_ms": {
                    "p50": percentile(self.latencies_ms, 50, 2),
                    "p99": percentile(self.latencies_ms, 99, 2),
                },
                "server_ms": {"p50": percentile(self.server_ms, 50, 2), "p99": percentile(self.server_ms, 99, 2)},
                "fps": round(self.frames / self.wall_s, 1) if self.wall_s else None,
                "interrupted": self.interrupted,
                "sent": self.sent,
                "ended_early": self.ended_early or None,
                "reconnects": self.reconnects,
            }
            | (
                {}
                if self.source
                else {
                    "lost": self.lost,
                    "unsent": self.unsent,
                    "skipped": self.skipped,
                    "source_reopens": len(self.source_gaps_s),
                    "source_gap_s": round(sum(self.source_gaps_s), 2),
                    "source_lost": self.source_lost or None,
                }
            )
        )

    def ended_early_line(self, written_to: Path) -> str:
        """What a stream that ended early leaves the user: why, and what was answered and kept."""
        return (
            f"the stream ended early ({self.ended_early}): {self.frames} of the {self.sent} frames sent were "
            f"answered, and no more were sent; their results are in {written_to}"
        )

    def line(self) -> str:
        d = self.as_dict()
        lat, srv = d["latency_ms"], d["server_ms"]
        assert isinstance(lat, dict) and isinstance(srv, dict)
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        # Sent flat out, a frame waits behind the ones before it: that is the client's queue, not service time.
        queueing = ", mostly queueing: frames were sent as fast as the server took them" if self.flat_out else ""
        interrupted = "interrupted: " if self.interrupted else ""
        found = (
            f"polyps in {self.frames_with_polyps} frames, {self.detections} detections, {len(self.tracks)} tracks, "
            f"{self.alerts} alerts (shown in {self.frames_alerting} frames)"
        )
        if self.source:  # no round trip: the server's time from reading the frame to its result
            missed = (
                f"; {self.missed} frames of the source between them have no result here (skipped by a live "
                "source under load, or lost while this watcher read too slowly)"
                if self.missed
                else ""
            )
            return (
                f"{interrupted}{self.frames} frames of source '{self.source}' ({statuses}); {found}; "
                f"server p50 {srv['p50']} ms, p99 {srv['p99']} ms; {d['fps']} frames/s{missed}{self.reconnect_words()}"
            )
        return (
            f"{interrupted}{self.frames} frames ({statuses}); {found}; latency p50 {lat['p50']} ms, "
            f"p99 {lat['p99']} ms{queueing} (server p50 {srv['p50']} ms, p99 {srv['p99']} ms); {d['fps']} frames/s"
            f"{self.skipped_words()}{self.reconnect_words()}{self.source_words()}"
        )

    def skipped_words(self) -> str:
        """What a call slower than its live source cost: the frames that aged out unsent (client.Stream's keep_up)."""
        if not self.skipped:
            return ""
        return (
            f"; {self.skipped} frames of the source skipped: they aged out unsent, the call taking frames more slowly "
            "than the source made them (a slow link or server)"
        )

    def source_words(self) -> str:
        """What stops of a live source cost a stream: the seconds it delivered no frame."""
        if not self.source_gaps_s:
            return ""
        times = len(self.source_gaps_s)
        return (
            f"; the source stopped and came back {times} time{'s' * (times != 1)} "
            f"({sum(self.source_gaps_s):.1f} s without frames)"
        )

    def reconnect_words(self) -> str:
        """What the server going away cost a stream (nothing, for a file: its frames were sent again)."""
        if not (self.reconnects or self.lost or self.unsent):
            return ""
        words = f"; reconnected {self.reconnects} time{'s' * (self.reconnects != 1)}"
        if self.lost or self.unsent:
            words += (
                f", {self.lost + self.unsent} frames of the source have no result ({self.lost} sent and not "
                f"answered when the server went away, {self.unsent} read while none answered)"
            )
        return words


def decode_jpeg(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


class OverlayVideo:
    """The overlay video `stream` writes: each answer's overlay, or the frame sent when the
    answer has none (a dropped or invalid frame), with the boxes of the alerts it says are on
    (`held`: a frame dropped late does not blink an alert off); opened at the first picture's size."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self._writer: cv2.VideoWriter | None = None

    def write(self, overlay_jpeg: bytes, original: np.ndarray | None, held: Sequence[pb.Polyp] = ()) -> None:
        picture = decode_jpeg(overlay_jpeg) if overlay_jpeg else original
        if picture is None:
            return
        if not overlay_jpeg and held:
            picture = draw_overlay(picture, None, [polyp_from_proto(p) for p in held])
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter.fourcc(*OVERLAY_CODECS.get(self.path.suffix.lower(), "mp4v"))
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (picture.shape[1], picture.shape[0]))
            if not self._writer.isOpened():  # checked before streaming; a full disk or a codec missing from OpenCV
                raise CliError(f"cannot write the overlay video {self.path}: OpenCV could not open a writer for it")
        self._writer.write(picture)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


def stream_video(
    client: SegmenterClient,
    source: FrameSource,
    jsonl_path: Path,
    overlay_path: Path | None,
    *,
    stream_id: str,
    no_drop: bool,
    allow_view: bool = False,
    reconnect_s: float = 0.0,
    source_reconnect_s: float | None = None,
) -> StreamSummary:
    """Send every frame of `source`, write one JSON line per answer and, if asked, the overlay
    video; a server that goes away is sought again for up to `reconnect_s` (client.Stream), and
    a live source that stops is opened again for up to `source_reconnect_s` (capture.Reopening;
    None: its stop ends the stream unremarked)."""
    options = FrameOptions(
        return_overlay=overlay_path is not None, no_drop=no_drop, allow_view=allow_view, frame_rate=source.frame_rate
    )
    video = OverlayVideo(overlay_path, source.fps) if overlay_path is not None else None
    stop = threading.Event()

    def report(words: str) -> None:
        print(f"polypstream stream: {words}", file=sys.stderr, flush=True)

    live = is_live(source.uri)
    feed: FrameSource | Reopening = source
    if source_reconnect_s is not None and endless(source):
        feed = Reopening(source, source_reconnect_s, stop=stop, report=report)

    def frames() -> Iterator[CapturedFrame]:
        for captured in feed:
            if stop.is_set():  # Ctrl-C: send no more; what was sent is still answered and written
                return
            yield captured

    paced = source.realtime or live  # frames come at the source's pace (else as fast as the call takes them)
    summary = StreamSummary(flat_out=not paced)
    stream = Stream(
        client, frames(), stream_id, options, reconnect_s=reconnect_s, stop=stop, report=report, keep_up=paced
    )
    started = time.perf_counter()
    jsonl_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with jsonl_path.open("w") as out, ctrl_c_sets(stop):
            for sent, answer in stream:
                out.write(json.dumps(answer.to_json()) + "\n")
                summary.add(answer)
                if video is not None:  # an answer without an overlay (dropped, invalid): the frame sent
                    overlay = answer.result.overlay_jpeg
                    video.write(overlay, None if overlay else decode_jpeg(sent.encoded), answer.result.held)
    except grpc.RpcError as exc:  # the server went away, or ended the call (draining): what it answered is kept
        if not summary.frames:
            raise  # refused (a token, say), nothing answered: the status alone says it
        summary.ended_early = ended_words(exc, reconnect_s)
    finally:
        if video is not None:
            video.close()
        summary.sent, summary.reconnects = stream.sent, stream.reconnects
        summary.lost, summary.unsent, summary.skipped = stream.lost, stream.unsent, stream.skipped
        if isinstance(feed, Reopening):
            summary.source_gaps_s, summary.source_lost = feed.gaps_s, feed.gave_up
    summary.wall_s = time.perf_counter() - started
    summary.interrupted = stop.is_set()
    return summary


def rpc_status(exc: grpc.RpcError) -> tuple[grpc.StatusCode | None, str | None]:
    """A failed call's status code and details (an RpcError that is not a call has neither)."""
    code = exc.code() if hasattr(exc, "code") else None
    return code, exc.details() if hasattr(exc, "details") else str(exc)


def ended_words(exc: grpc.RpcError, reconnect_s: float) -> str:
    """Why a call ended early, as the summary says it; where its server was sought again in
    vain for `reconnect_s`, that too."""
    code, details = rpc_status(exc)
    gave_up = f"; no server answered within {reconnect_s:g} s" if code in SERVER_GONE and reconnect_s > 0 else ""
    return f"{code.name if code is not None else 'error'}: {details}{gave_up}"


@contextlib.contextmanager
def ctrl_c_sets(stop: threading.Event) -> Iterator[None]:
    """While inside, a first Ctrl-C sets `stop` (the caller winds down cleanly); a second one
    interrupts as usual. Only in the main thread (elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def open_source(uri: str, realtime: bool) -> FrameSource:
    try:
        return capture.open_source(uri, realtime=realtime)
    except SourceError as exc:
        raise CliError(str(exc)) from exc


def something_listens(address: str) -> bool:
    """Whether a TCP connection to a client's HOST:PORT (or dns:///HOST:PORT) is accepted: then
    what did not answer gRPC there is no server that is down. False where it cannot tell (unix:)."""
    parsed = workers.host_port(address.removeprefix("dns:///").removeprefix("ipv4:"))
    if parsed is None or (":" in parsed[0].strip("[]") and not parsed[0].startswith("[")):  # another scheme
        return False
    host, port = parsed
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def unanswered(address: str, tls: bool) -> str:
    """Why no gRPC connection was made to `address`, as far as the client can tell."""
    if not something_listens(address):
        return "is `polypstream serve` running there?"
    if tls:
        return (
            "something listens there, but the TLS handshake failed or it is no gRPC server: --tls-ca must hold "
            "the CA that signed the server's certificate, which must name this host, and the server must use TLS"
        )
    return (
        "something listens there but answers no plaintext gRPC: if the server uses TLS, pass --tls-ca "
        "(and --tls-cert/--tls-key where it asks for client certificates)"
    )


def wait_for_server(client: SegmenterClient, address: str, timeout_s: float, *, tls: bool = False) -> None:
    """Wait for the server's channel to be ready, saying so when it takes a moment."""
    try:
        client.wait_ready(min(1.0, timeout_s))
        return
    except grpc.FutureTimeoutError:
        print(f"polypstream: waiting up to {timeout_s:g} s for the server at {address}…", file=sys.stderr, flush=True)
    try:
        client.wait_ready(max(0.0, timeout_s - 1.0))
    except grpc.FutureTimeoutError as exc:
        why = unanswered(address, tls)
        raise CliError(
            f"no polypstream server answered at {address} within {timeout_s:g} s "
            f"({why}{' ' if why.endswith('?') else '; '}--server sets the address, --connect-timeout the wait)"
        ) from exc


def cmd_stream(args: argparse.Namespace) -> int:
    check_output("--jsonl", args.jsonl)
    if args.overlay is not None:
        check_overlay_output("--overlay", args.overlay)
    check_reconnect(args.reconnect)
    check_reconnect(args.source_reconnect, "--source-reconnect")
    source = open_source(args.source, realtime=args.realtime)
    if args.frame_rate is not None:
        source.frame_rate = args.frame_rate
    no_drop = not (args.live or is_live(args.source))
    with connect(args) as client:
        wait_for_server(client, args.server, args.connect_timeout, tls=uses_tls(args))
        summary = stream_video(
            client,
            source,
            args.jsonl,
            args.overlay,
            stream_id=args.stream_id or Path(redact_uri(args.source)).stem,
            no_drop=no_drop,
            allow_view=args.allow_view,
            reconnect_s=args.reconnect,
            source_reconnect_s=args.source_reconnect,
        )
    print(summary.line())
    if summary.ended_early:
        print(f"polypstream stream: error: {summary.ended_early_line(args.jsonl)}", file=sys.stderr)
        return 1
    if summary.source_lost and args.source_reconnect > 0:
        print(
            f"polypstream stream: error: {summary.source_lost}; the stream's {summary.frames} results are in "
            f"{args.jsonl}",
            file=sys.stderr,
        )
        return 1
    if summary.source_lost:  # --source-reconnect 0: the stream ends with its source, as asked
        print(f"polypstream stream: {summary.source_lost}: the stream ends with it", file=sys.stderr)
    return 130 if summary.interrupted else 0


# --- watch -------------------------------------------------------------------------------


def cmd_watch(args: argparse.Namespace) -> int:
    if args.source is None:
        return list_sources(args)
    if args.jsonl is None:
        raise CliError(f"--jsonl is needed to watch source '{args.source}': the file its results go to")
    check_output("--jsonl", args.jsonl)
    if args.overlay is not None:
        check_overlay_output("--overlay", args.overlay)
    if args.seconds is not None and not args.seconds > 0:
        raise CliError(f"--seconds must be more than 0, got {args.seconds:g}")
    check_reconnect(args.reconnect)
    with connect(args) as client:
        wait_for_server(client, args.server, args.connect_timeout, tls=uses_tls(args))
        info = find_source(client, args.source, args.server)
        summary = watch_source(client, info, args.jsonl, args.overlay, seconds=args.seconds, reconnect_s=args.reconnect)
    print(summary.line())
    if summary.ended_early:
        print(
            f"polypstream watch: error: the watch ended early ({summary.ended_early}); the {summary.frames} results "
            f"received are in {args.jsonl}",
            file=sys.stderr,
        )
        return 1
    return 130 if summary.interrupted else 0


def list_sources(args: argparse.Namespace) -> int:
    """`watch` without a source: the server's sources, one line each."""
    with connect(args) as client:
        wait_for_server(client, args.server, args.connect_timeout, tls=uses_tls(args))
        infos = client.sources(timeout=args.connect_timeout)
    if not infos:
        print(f"the server at {args.server} reads no sources of its own (`serve --source NAME=URI` gives it one)")
        return 0
    rows = [("SOURCE", "STATE", "FRAMES", "WATCHERS", "FPS", "URI")] + [
        (i.name, i.state, str(i.frames), str(i.subscribers), f"{i.frame_rate:g}" if i.frame_rate else "-", i.uri)
        for i in infos
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def find_source(client: SegmenterClient, name: str, address: str) -> pb.SourceInfo:
    """The server's SourceInfo of `name`; CliError (one line) when it has none by that name or
    the source has already played to its end."""
    infos = client.sources()
    info = next((i for i in infos if i.name == name), None)
    if info is None:
        has = f"its sources: {', '.join(i.name for i in infos)}" if infos else "it reads no sources of its own"
        raise CliError(f"the server at {address} has no source named '{name}' ({has})")
    if info.state == "ended":
        raise CliError(
            f"source '{name}' has ended: a file source plays once, from its first watcher to its end "
            f"({info.frames} frames); restart the server to play it again"
        )
    return info


def watch_source(
    client: SegmenterClient,
    info: pb.SourceInfo,
    jsonl_path: Path,
    overlay_path: Path | None,
    *,
    seconds: float | None,
    reconnect_s: float = 0.0,
) -> StreamSummary:
    """Write one JSON line per result of a server-side source and, if asked, the overlay video,
    until the source ends, `seconds` pass, or Ctrl-C. A live source's watch is carried over a
    server that goes away for up to `reconnect_s` (client.SourceWatch); a file source's is not
    (a restarted server would play the file again from its start)."""

    def report(words: str) -> None:
        print(f"polypstream watch: {words}", file=sys.stderr, flush=True)

    options = FrameOptions(return_overlay=overlay_path is not None)
    carried = reconnect_s if is_live(info.uri) else 0.0
    watch = SourceWatch(client, info.name, options, reconnect_s=carried, report=report)
    video = OverlayVideo(overlay_path, info.frame_rate or DEFAULT_FPS) if overlay_path is not None else None
    summary = StreamSummary(source=info.name)
    stop, done = threading.Event(), threading.Event()
    deadline = None if seconds is None else time.monotonic() + seconds

    def told() -> bool:
        return stop.is_set() or (deadline is not None and time.monotonic() >= deadline)

    def cancel_when_told() -> None:  # Ctrl-C or --seconds: a call blocked on its next result ends now
        while not done.wait(0.05):
            if told():
                watch.cancel()
                return

    started = time.perf_counter()
    jsonl_path.parent.mkdir(parents=True, exist_ok=True)
    canceller = threading.Thread(target=cancel_when_told, name="polypstream-watch-cancel", daemon=True)
    try:
        with jsonl_path.open("w") as out, ctrl_c_sets(stop):
            canceller.start()
            for answer in watch:
                out.write(json.dumps(answer.to_json()) + "\n")
                summary.add(answer)
                if video is not None:  # frames the server did not segment have no overlay: none is written
                    video.write(answer.result.overlay_jpeg, None)
    except grpc.RpcError as exc:
        code, _ = rpc_status(exc)
        if not (code == grpc.StatusCode.CANCELLED and told()):
            if not summary.frames and code != grpc.StatusCode.UNAVAILABLE:
                raise  # refused (a token, say), nothing received: the status alone says it
            summary.ended_early = ended_words(exc, carried)
    finally:
        done.set()
        if video is not None:
            video.close()
        summary.reconnects = watch.reconnects
    summary.wall_s = time.perf_counter() - started
    summary.interrupted = stop.is_set()
    return summary


# --- demo --------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    check_output("--out", args.out, folder=True)
    source_uri = str(args.source or SAMPLE_CLIP)
    source = open_source(source_uri, realtime=not args.fast)
    if args.frame_rate is not None:
        source.frame_rate = args.frame_rate
    registry = CollectorRegistry()
    pipeline = build_pipeline(engine_config(args), registry)
    pipeline.start()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="polypstream-") as tmp:
            config = ServerConfig(address=f"unix:{tmp}/segmenter.sock", metrics_address="")
            with serve_in_thread(pipeline, config) as running, SegmenterClient(running.address) as client:
                info = client.model_info()
                print(f"model {info.name} {info.version} ({info.input_width}x{info.input_height}) on {info.provider}")
                summary = stream_video(
                    client,
                    source,
                    args.out / "results.jsonl",
                    args.out / "overlay.mp4",
                    stream_id=Path(redact_uri(source_uri)).stem,
                    no_drop=True,
                )
    finally:
        pipeline.stop()
    (args.out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=1) + "\n")
    print(summary.line())
    if summary.ended_early:
        print(f"polypstream demo: error: {summary.ended_early_line(args.out / 'results.jsonl')}", file=sys.stderr)
        return 1
    print(f"wrote {args.out / 'results.jsonl'}, {args.out / 'overlay.mp4'} and {args.out / 'summary.json'}")
    return 130 if summary.interrupted else 0


# --- replay ------------------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            check_output(flag, path)
    check_reconnect(args.reconnect)
    started = time.monotonic()

    def progress(tally: Tally, total: int) -> None:
        show_progress(f"{tally.videos}/{total} videos, {tally.sent} frames", tally.videos, total, started)

    try:
        report = _replay_on_servers(args, progress) if args.server else _replay_in_process(args, progress)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    end_progress()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        try:
            plot_replay(report, args.plot)
        except PlotUnavailableError as exc:
            raise CliError(str(exc)) from exc
    lat = report["latency_ms"]
    assert isinstance(lat, dict)
    dice = (
        f"; temporal Dice {report['dice']:.4f} over {report['dice_frames']} frames"
        if report["dice"] is not None
        else ""
    )
    mismatches = report["frame_count_mismatches"]
    assert isinstance(mismatches, list)
    if mismatches:
        print(f"{len(mismatches)} videos disagree with the metadata CSV, e.g. {mismatches[0]}", file=sys.stderr)
    interrupted = "interrupted: " if report["interrupted"] else ""
    print(
        f"{interrupted}{report['videos']} of {report['videos_found']} videos, {report['frames']} frames at "
        f"{report['fps']} frames/s; latency p50 {lat['p50']} ms, p99 {lat['p99']} ms; dropped {report['dropped']}, "
        f"errors {report['errors']}{dice}"
    )
    accounting = report["accounting"]
    assert isinstance(accounting, dict)
    for line in replay_problems(report, args.reconnect):
        print(line, file=sys.stderr)
    if report["interrupted"]:
        return 130
    complete = accounting["all_accounted"] and not report["videos_not_replayed"]
    return 0 if complete and not report["errors"] and not report["failed_videos"] else 1


def replay_problems(report: dict[str, object], reconnect_s: float) -> list[str]:
    """What went wrong in a replay, a line each: failed videos, and servers lost and what it cost."""
    lines = []
    if report["failed_videos"]:
        messages = report["error_messages"]
        assert isinstance(messages, list)
        lines.append(f"{report['failed_videos']} videos failed, e.g. {messages[0]}")
    lost = report["servers_lost"]
    assert isinstance(lost, list)
    gone = f"no server answered within {reconnect_s:g} s (--reconnect) at {', '.join(lost)}"
    if report["videos_not_replayed"]:
        lines.append(f"{report['videos_not_replayed']} videos not replayed: {gone}")
    elif lost:
        lines.append(f"{gone}: the other servers replayed its videos")
    return lines


def _replay_on_servers(args: argparse.Namespace, progress: Callable[[Tally, int], None]) -> dict[str, object]:
    """`replay --server ...`: each server must answer before the first video is sent."""
    for address in args.server:
        with connect(args, address) as client:
            wait_for_server(client, address, args.connect_timeout, tls=uses_tls(args))
    connect_to = functools.partial(connect, args)

    def tell(words: str) -> None:
        end_progress()
        print(f"polypstream replay: {words}", file=sys.stderr, flush=True)

    return replay(
        args.corpus,
        args.server,
        streams=args.streams,
        connect=connect_to,
        progress=progress,
        reconnect_s=args.reconnect,
        tell=tell,
    )


def _replay_in_process(args: argparse.Namespace, progress: Callable[[Tally, int], None]) -> dict[str, object]:
    pipeline = build_pipeline(engine_config(args), CollectorRegistry())
    pipeline.start()
    try:
        with tempfile.TemporaryDirectory(prefix="polypstream-") as tmp:
            config = ServerConfig(address=f"unix:{tmp}/segmenter.sock", metrics_address="")
            with serve_in_thread(pipeline, config) as running:
                return replay(args.corpus, [running.address], streams=args.streams, progress=progress)
    finally:
        pipeline.stop()


# --- corpus ------------------------------------------------------------------------------


def cmd_corpus(args: argparse.Namespace) -> int:
    if args.out.is_dir() and any(args.out.iterdir()):
        raise CliError(f"{args.out}: exists and is not empty (choose a new folder)")
    existed = args.out.exists()
    check_output("", args.out, folder=True)
    plans = plan_corpus(args.videos, args.seconds, args.fps, args.seed)
    written = 0

    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        nonlocal written
        written = done
        show_progress(f"{done}/{total} videos", done, total, started)

    try:
        write_corpus(args.out, args.source, plans, seed=args.seed, progress=progress)
    except DatasetError as exc:
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:
        # Half a corpus is no corpus (its CSV and ground truth would disagree with its videos),
        # and a non-empty folder would block the rerun: take back what was written.
        if existed:
            for child in args.out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(args.out, ignore_errors=True)
        end_progress()
        print(
            f"polypstream corpus: interrupted after {written} of {len(plans)} videos; "
            f"removed what was written to {args.out}",
            file=sys.stderr,
        )
        return 130
    end_progress()
    frames = sum(p.frames for p in plans)
    print(
        f"wrote {len(plans)} videos ({frames} frames) to {args.out}; a stand-in for HyperKvasir, made from Kvasir-SEG"
    )
    return 0


# --- health ------------------------------------------------------------------------------


def cmd_health(args: argparse.Namespace) -> int:
    with connect(args) as client:
        try:
            status = client.health(timeout=args.timeout)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            print(
                f"UNREACHABLE: no polypstream server answered at {args.server} within {args.timeout:g} s "
                f"({unanswered(args.server, uses_tls(args))})"
            )
            return 1
    print(status)
    return 0 if status == "SERVING" else 1


# --- eval --------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    path = resolve_model(args.model)
    runner = Runner(path, device=args.device, max_batch=args.batch, spin=True)
    tally = SplitScores()
    started = time.monotonic()
    interrupted = False

    def progress(done: int, total: int) -> None:
        show_progress(f"{done}/{total} images", done, total, started)

    try:
        scores = evaluate(runner, args.data, args.split, tally=tally, progress=progress)
    except DatasetError as exc:
        raise CliError(str(exc)) from exc
    except KeyboardInterrupt:  # the images scored so far are still a result
        interrupted, scores = True, tally.as_dict()
    end_progress()
    c = runner.contract
    if args.json:
        print(json.dumps({**scores, "model": c.name, "version": c.version, "interrupted": interrupted}))
    else:
        if interrupted:
            print(f"interrupted: scores of the {scores['images']} images done so far", file=sys.stderr)
        print(f"{c.name} {c.version} on {scores['images']} images of {args.split or args.data}:")
        for key in ("dice", "iou", "precision", "recall", "box_precision", "box_recall"):
            value = scores[key]
            shown = "not measured (no ground-truth boxes in the data)" if value is None else f"{value:.4f}"
            print(f"  {key:<14} {shown}")
    return 130 if interrupted else 0


def cmd_eval_video(args: argparse.Namespace) -> int:
    if args.plot:
        if not args.sweep:
            raise CliError("--plot draws the sweep: add --sweep")
        check_output("--plot", args.plot)
    runner = Runner(resolve_model(args.model), device=args.device, max_batch=8, spin=True)
    started = time.monotonic()

    def progress(what: str) -> None:
        print(f"{what} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)

    rule = alert_rule(args, runner)
    report = evaluate_videos(
        [Path(s) for s in args.sources], runner, rule, fps=args.fps, sweep=args.sweep, progress=progress
    )
    report["model"] = f"{runner.contract.name} {runner.contract.version}"
    interrupted = bool(report["interrupted"])
    if interrupted:
        print(f"interrupted: the report covers the {report['videos']} videos done so far", file=sys.stderr)
    if args.plot:
        plot_alert_sweep(report, args.plot)
    if args.json:
        print(json.dumps(report))
        return 130 if interrupted else 0
    r = report
    print(f"{r['model']}, alerts {rule.counted()}: {r['frames']} frames ({r['minutes']} min), {r['polyps']} polyps")
    print(f"  per-polyp sensitivity {r['per_polyp_sensitivity']}, per-frame sensitivity {r['per_frame_sensitivity']}, "
          f"per-frame precision {r['per_frame_precision']}")  # fmt: skip
    print(f"  first detection ms {r['first_detection_ms']}")
    print(f"  false-positive activations {r['fp_activations']} of {r['activations']} ({r['fp_per_minute']} per minute)")
    if "chosen_rule" in r:
        print(f"  chosen by the fixed rule over the sweep: {AlertRule(**r['chosen_rule'])}")  # type: ignore[arg-type]
    return 130 if interrupted else 0


# --- main --------------------------------------------------------------------------------


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, except where there is none to show (no value,
    an on/off flag) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, []) or action.nargs == 0 or "default" in text:
            return text
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """A command's parser: its --help shows every option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def _add_serve(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """serve: the gRPC server, its sources, limits and security, and the engine."""
    serve = sub.add_parser("serve", help="run the gRPC server and the metrics endpoint")
    serve.add_argument("--address", default=env_default("ADDRESS", ServerConfig.address), help="host:port or unix:PATH")
    serve.add_argument(
        "--workers",
        type=int,
        default=int(env_default("WORKERS", "1")),
        help="server processes sharing the port, each with its own model session, GIL and metrics port "
        "(metrics port + i); limits are per worker; not with --source or --ui (default: 1)",
    )
    serve.add_argument(
        "--metrics-address",
        default=env_default("METRICS_ADDRESS", ServerConfig.metrics_address),
        help="host:port; empty for none",
    )
    serve.add_argument(
        "--max-streams",
        type=int,
        default=int(env_default("MAX_STREAMS", str(ServerConfig.max_streams))),
        help="concurrent Segment streams; more are refused (RESOURCE_EXHAUSTED)",
    )
    serve.add_argument(
        "--max-watchers",
        type=int,
        default=int(env_default("MAX_WATCHERS", str(ServerConfig.max_watchers))),
        help="concurrent Watch calls of the server's sources; more are refused (RESOURCE_EXHAUSTED)",
    )
    serve.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME=URI",
        help="a video file, URL or device to Watch; repeatable",
    )
    serve.add_argument(
        "--source-frame-rate",
        action="append",
        default=[],
        metavar="NAME=FPS",
        help="source NAME's frames a second, for the alert rule and ListSources, where the source reports "
        "none or a wrong one (0: none); not its pace; repeatable",
    )
    serve.add_argument(
        "--ui",
        nargs="?",
        const="127.0.0.1:8080",
        default=env_default("UI", "") or None,
        metavar="HOST:PORT",
        help="serve the live view (a web page of the sources and of client streams that allow it) here; "
        "alone: 127.0.0.1:8080 (default: off)",
    )
    serve.add_argument(
        "--source-pacing",
        choices=["realtime", "fast"],
        default="realtime",
        help="file sources: own frame rate or flat out",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=float(env_default("GRACE_S", str(ServerConfig.grace_s))),
        help="seconds to finish accepted frames on SIGTERM",
    )
    serve.add_argument(
        "--send-timeout",
        type=float,
        default=float(env_default("SEND_TIMEOUT_S", str(ServerConfig.send_timeout_s))),
        help="a client that reads no result for this many seconds loses its stream or Watch call",
    )
    _add_limit_flags(serve)
    _add_security_flags(serve)
    add_engine_flags(serve)
    serve.set_defaults(func=cmd_serve)


def _add_limit_flags(serve: argparse.ArgumentParser) -> None:
    """What one stream and all streams together may hold in the server."""
    limits = serve.add_argument_group("limits")
    c = ServerConfig
    table: tuple[tuple[str, str, type, float, str], ...] = (
        ("--inflight-per-stream", "INFLIGHT_PER_STREAM", int, c.inflight_per_stream,
         "frames of one stream in the server at once; past it the stream is read no further"),
        ("--max-message-mb", "MAX_MESSAGE_MB", float, c.max_message_bytes // MIB,
         "largest gRPC message each way, in MiB; larger ones get RESOURCE_EXHAUSTED"),
        ("--max-pixels", "MAX_PIXELS", int, c.max_pixels,
         "largest frame (width x height) decoded; larger ones are INVALID_FRAME"),
        ("--memory-limit-mb", "MEMORY_LIMIT_MB", float, c.memory_limit_bytes // MIB,
         "MiB that frames of all client streams may hold together; past it, streams are read more slowly"),
        ("--stream-memory-limit-mb", "STREAM_MEMORY_LIMIT_MB", float, c.stream_memory_limit_bytes // MIB,
         "MiB that frames of one client stream may hold"),
    )  # fmt: skip
    for flag, env, kind, default, text in table:
        limits.add_argument(flag, type=kind, default=kind(env_default(env, str(default))), help=text)


def _add_security_flags(serve: argparse.ArgumentParser) -> None:
    """TLS, the bearer token and the plaintext health port."""
    security = serve.add_argument_group("security")
    security.add_argument(
        "--health-address",
        default=env_default("HEALTH_ADDRESS", ""),
        help="also serve grpc.health.v1 alone, in plaintext, here (for probes); empty: none",
    )
    security.add_argument("--tls-cert", type=Path, help="server certificate (PEM): serve TLS")
    security.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    security.add_argument("--tls-client-ca", type=Path, help="CA of client certificates: require mTLS")
    security.add_argument("--token-file", type=Path, help=f"file holding the bearer token (default: ${TOKEN_ENV})")


def _add_stream(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """stream: a source sent to a running server."""
    stream = sub.add_parser("stream", help="send a video file, stream URL or device to a server")
    stream.add_argument("source", help="video file, rtsp:// / http:// URL, or capture device index")
    add_client_flags(stream)
    stream.add_argument("--jsonl", type=Path, required=True, help="one JSON line per frame")
    stream.add_argument("--overlay", type=Path, help="write a video with mask and boxes drawn")
    stream.add_argument("--stream-id", help="default: the source's file name")
    stream.add_argument(
        "--live",
        action="store_true",
        help="let the server drop late frames and, where frames come at the source's pace (a URL or device, or "
        "--realtime), the client skip those the link cannot take in time (default for URLs and devices)",
    )
    stream.add_argument("--realtime", action="store_true", help="send a file at its own frame rate")
    stream.add_argument(
        "--allow-view", action="store_true", help="let the server's live view (serve --ui) show this stream"
    )
    add_wait_flags(stream)
    stream.add_argument(
        "--source-reconnect",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a live source (a URL or device without a frame count) that stops delivering frames: how long to "
        "try opening it again before ending (exit 1); its frames go on being numbered; 0: end with it (exit 0)",
    )
    add_frame_rate_flag(stream)
    stream.set_defaults(func=cmd_stream)


def _add_watch(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """watch: a server-side source's results, recorded."""
    watch = sub.add_parser(
        "watch", help="record the results of a source the server reads itself (serve --source); alone, list them"
    )
    watch.add_argument("source", nargs="?", help="the source's name (default: list the server's sources)")
    add_client_flags(watch)
    watch.add_argument("--jsonl", type=Path, help="one JSON line per result (needed with a source)")
    watch.add_argument("--overlay", type=Path, help="write a video of the overlays (mask and boxes drawn)")
    watch.add_argument("--seconds", type=float, help="stop after this many seconds (default: when the source ends)")
    add_wait_flags(
        watch,
        "a live source's watch: when the server goes away (a restart, a rolling update), how long to seek it "
        "again before ending (a file source's ends: a new server would play it again from its start); 0: end at once",
    )
    watch.set_defaults(func=cmd_watch)


def _add_demo(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """demo: the bundled clip through an in-process server."""
    demo = sub.add_parser("demo", help="serve and stream the bundled sample clip in one process")
    demo.add_argument("--out", type=Path, required=True, help="folder for results.jsonl, overlay.mp4, summary.json")
    demo.add_argument("--source", help="another video (a file, URL or device) instead of the bundled sample")
    demo.add_argument(
        "--fast",
        action="store_true",
        help="send frames as fast as the server takes them (default: at the clip's frame rate, as a live feed)",
    )
    add_frame_rate_flag(demo)
    add_engine_flags(demo)
    demo.set_defaults(func=cmd_demo)


def _add_replay(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """replay: every video of a folder, accounted for."""
    replay_ = sub.add_parser(
        "replay", help="run every video of a folder through the service and account for every frame"
    )
    replay_.add_argument("corpus", type=Path, help="a video, or a folder searched recursively (HyperKvasir layout)")
    replay_.add_argument("--streams", type=int, default=4, help="concurrent streams")
    replay_.add_argument("--json", type=Path, help="write the report here")
    replay_.add_argument(
        "--plot", type=Path, help="write a PNG: latency CDF and per-stage breakdown (needs matplotlib)"
    )
    add_client_flags(replay_, several=True)
    add_wait_flags(replay_)
    add_engine_flags(replay_)  # used when no --server is given: an in-process server
    replay_.set_defaults(func=cmd_replay)


def _add_corpus(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """corpus: a HyperKvasir-shaped stand-in."""
    corpus = sub.add_parser("corpus", help="write a HyperKvasir-shaped stand-in corpus made from Kvasir-SEG images")
    corpus.add_argument("out", type=Path, help="new folder")
    corpus.add_argument("--from", dest="source", type=Path, required=True, help="Kvasir-SEG layout folder")
    corpus.add_argument("--videos", type=int, default=374, help="how many videos (HyperKvasir has 374)")
    corpus.add_argument("--seconds", type=float, default=2.0, help="median video length (the real median is 83 s)")
    corpus.add_argument("--fps", type=float, help="one frame rate for all (default: the official mix)")
    corpus.add_argument("--seed", type=int, default=0, help="random seed: the same seed, the same corpus")
    corpus.set_defaults(func=cmd_corpus)


def _add_health(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """health: exit 0 when SERVING."""
    health = sub.add_parser("health", help="exit 0 when the server reports SERVING (for container health checks)")
    add_client_flags(health)
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    health.set_defaults(func=cmd_health)


def _add_eval(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """eval: scores of a model on a Kvasir-SEG folder."""
    evaluate_ = sub.add_parser("eval", help="Dice/IoU/precision/recall and box metrics on a Kvasir-SEG folder")
    evaluate_.add_argument("--data", type=Path, required=True, help="folder with images/, masks/, kavsir_bboxes.json")
    evaluate_.add_argument("--split", type=Path, help="file of image ids, one per line (default: every image)")
    add_model_flags(evaluate_)
    evaluate_.add_argument("--batch", type=int, default=8, help="images per model run")
    evaluate_.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate_.set_defaults(func=cmd_eval)


def _add_eval_video(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """eval-video: per-polyp and per-minute metrics of a model and an alert rule on labelled video."""
    video = sub.add_parser(
        "eval-video", help="per-polyp sensitivity, first-detection delay and false alarms per minute on labelled video"
    )
    video.add_argument(
        "sources", nargs="+", help="a video with a .boxes.json sidecar, a frame folder with frames.txt, or a corpus"
    )
    add_model_flags(video)
    add_alert_flags(video)
    video.add_argument("--fps", type=float, default=25.0, help="frame rate of frame folders")
    video.add_argument(
        "--sweep", action="store_true", help="also every rule of the sweep, and the one the fixed rule picks"
    )
    video.add_argument("--plot", type=Path, help="with --sweep: a PNG of false alarms against sensitivity and delay")
    video.add_argument("--json", action="store_true", help="print one JSON object")
    video.set_defaults(func=cmd_eval_video)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polypstream", description="Real-time polyp segmentation of colonoscopy video over gRPC."
    )
    parser.add_argument("--version", action="version", version=f"polypstream {__version__}")
    parser.add_argument("--log-level", default=env_default("LOG_LEVEL", "WARNING"), help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)

    for add in (
        _add_serve,
        _add_stream,
        _add_watch,
        _add_demo,
        _add_replay,
        _add_corpus,
        _add_health,
        _add_eval,
        _add_eval_video,
    ):
        add(sub)
    return parser


def quiet_video_libraries() -> None:
    """Keep FFmpeg's and OpenCV's own messages off stderr: failures reach the user as our one
    line (which URI, why). The environment wins: set OPENCV_FFMPEG_LOGLEVEL=16 and
    OPENCV_LOG_LEVEL=WARNING to see their messages again."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read when FFmpeg is first used
    if "OPENCV_LOG_LEVEL" not in os.environ:  # OpenCV read it when it was imported
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: `serve --workers` passes it on
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_video_libraries()
    try:
        return int(args.func(args))
    except (CliError, ConfigError, DatasetError, ModelError, SecurityConfigError) as exc:  # the user's to fix
        print(f"polypstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code, details = rpc_status(exc)
        print(f"polypstream {args.command}: error: server answered {code}: {details}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"polypstream {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # stdout closed early (`| head`): not this command's failure
    except OSError as exc:  # a file it could not read or write (a full disk, say)
        logger.debug("%s failed", args.command, exc_info=True)
        print(f"polypstream {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
