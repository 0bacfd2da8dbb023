"""Soak: K client streams for M minutes against a running server, mixing valid frames,
bad frames and clients that hang up mid-stream, beside the ordinary clients that used to
break it (--adversarial, on by default): clients that cancel after a few answers, clients
that never read, an offline client sending as fast as it may, and oversized frames (4096x4096
JPEGs with overlays; a JPEG with thousands of scans). Every frame must be accounted for,
the server's memory must stay bounded, every stream slot must come back, live streams must
keep their budget, and the server must log no ERROR line.

    python -m benchmarks.soak --minutes 10 --streams 4 [--server ADDR --metrics URL] [--json OUT]

Without --server it starts `polypstream serve` itself (with --model). Each worker runs
streams of 20–120 frames at --fps (live: late frames may be dropped): 85 % valid JPEGs,
5 % random bytes, 5 % truncated JPEGs, 5 % raw pixels of the wrong length; one stream in
ten is abandoned halfway (the client closes its channel). Frames on abandoned streams that
get no answer are 'abandoned'; any other unanswered frame is 'lost' (must be 0).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
import numpy as np

from benchmarks.common import (
    StealSampler,
    command_line,
    device_name,
    endoscopy_frames,
    jpeg,
    scrape,
    start_server_process,
    write_result,
)
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream._proto.polypstream.v1 import segmenter_pb2_grpc as pb_grpc
from polypstream.client import SegmenterClient
from polypstream.stats import percentiles

RSS = "process_resident_memory_bytes"
CPU = "process_cpu_seconds_total"
ADVERSARIES = ("cancel", "mute", "offline", "oversized")


@dataclass
class Totals:
    sent: int = 0
    answered: dict[str, int] = field(default_factory=dict)
    abandoned: int = 0
    lost: int = 0
    streams: int = 0
    abandoned_streams: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, ms)
    stages: list[dict[str, float]] = field(default_factory=list)  # live answers' stages (OK and dropped)


def make_frame(rng: random.Random, encoded: list[bytes], stream_id: str, index: int) -> pb.Frame:
    roll = rng.random()
    frame = pb.Frame(stream_id=stream_id, index=index, client_time_ns=time.time_ns())
    if roll < 0.85:
        frame.encoded = rng.choice(encoded)
    elif roll < 0.90:
        frame.encoded = rng.randbytes(rng.randint(1, 300))
    elif roll < 0.95:
        good = rng.choice(encoded)
        frame.encoded = good[: rng.randint(1, len(good) - 1)]
    else:
        frame.raw.CopyFrom(pb.RawImage(width=64, height=48, format=pb.PIXEL_FORMAT_BGR8, data=b"\0" * 1000))
    return frame


def one_stream(address: str, rng: random.Random, encoded: list[bytes], fps: float, name: str, totals: Totals,
               lock: threading.Lock, started: float) -> None:  # fmt: skip
    count = rng.randint(20, 120)
    abandon_at = count // 2 if rng.random() < 0.1 else None
    sent = 0

    def frames() -> Iterator[pb.Frame]:
        nonlocal sent
        t0 = time.perf_counter()
        for i in range(count):
            delay = t0 + i / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent += 1
            yield make_frame(rng, encoded, name, i)

    answered: dict[str, int] = {}
    latencies: list[tuple[float, float]] = []
    stages: list[dict[str, float]] = []
    error = ""
    client = SegmenterClient(address)
    try:
        for n, answer in enumerate(client.segment(frames()), start=1):
            answered[answer.status] = answered.get(answer.status, 0) + 1
            if answer.status == "OK":
                latencies.append((time.perf_counter() - started, answer.latency_s * 1e3))
            if answer.status in ("OK", "DROPPED_LATE"):
                stages.append({**stage_times(answer.result), "t": time.perf_counter() - started})
            if abandon_at is not None and n >= abandon_at:
                break  # hang up with frames in flight
    except grpc.RpcError as exc:
        error = f"{name}: {exc.code().name}: {exc.details()}"
    finally:
        client.close()
    unanswered = sent - sum(answered.values())
    with lock:
        totals.streams += 1
        totals.sent += sent
        for status, n in answered.items():
            totals.answered[status] = totals.answered.get(status, 0) + n
        totals.latencies.extend(latencies)
        totals.stages.extend(stages)
        if abandon_at is not None:
            totals.abandoned_streams += 1
            totals.abandoned += unanswered
        else:
            totals.lost += unanswered
            if error:
                totals.errors.append(error)


STAGES = ("decode", "queue", "inference", "postprocess")


def stage_times(result: pb.FrameResult) -> dict[str, float]:
    """A live answer's status, batch size and server time by stage (ms); 'other' is the rest of
    its server time: waiting for a decoder, for the frame before it, for the event loop."""
    t = result.timing
    times = {"decode": t.decode_ms, "queue": t.queue_ms, "inference": t.inference_ms, "postprocess": t.postprocess_ms}
    return {
        "ok": float(result.status == pb.FRAME_STATUS_OK),
        "batch_size": float(t.batch_size),
        "server": t.server_ms,
        **times,
        "other": max(0.0, t.server_ms - sum(times.values())),
    }


def where_time_went(stages: list[dict[str, float]], budget_ms: float) -> dict[str, object]:
    """Mean time per stage (ms) of live answers: OK within the budget, OK past it, and dropped."""
    groups = {
        "ok_within_budget": [s for s in stages if s["ok"] and s["server"] <= budget_ms],
        "ok_past_budget": [s for s in stages if s["ok"] and s["server"] > budget_ms],
        "dropped_late": [s for s in stages if not s["ok"]],
    }
    keys = ("server", *STAGES, "other", "batch_size")
    return {
        name: {"frames": len(group), **{k: round(float(np.mean([s[k] for s in group])), 2) for k in keys}}
        if group
        else {"frames": 0}
        for name, group in groups.items()
    }


def live_windows(
    stages: list[dict[str, float]], steal: list[tuple[float, float, float]], window_s: float, budget_ms: float
) -> list[dict[str, float | None]]:
    """Per window of `window_s` (by when the answer came, "t"): the live answers (OK or dropped),
    the share of them OK within the budget, and the VM's CPU steal share over the window, from
    samples (t, steal, total) of /proc/stat's counters (None without two samples in reach)."""
    out: list[dict[str, float | None]] = []
    for i in range(int(max((s["t"] for s in stages), default=0.0) // window_s) + 1):
        lo, hi = i * window_s, (i + 1) * window_s
        group = [s for s in stages if lo <= s["t"] < hi]
        if not group:
            continue
        within = sum(1 for s in group if s["ok"] and s["server"] <= budget_ms)
        out.append({
            "t_s": round(lo, 1),
            "live_answers": len(group),
            "within_budget_share": round(within / len(group), 4),
            "steal": steal_share(steal, lo, hi),
        })  # fmt: skip
    return out


def steal_share(samples: list[tuple[float, float, float]], lo: float, hi: float) -> float | None:
    """The steal share from the last sample at or before `lo` to the first at or after `hi`; where
    the samples start after `lo` or end before `hi` (the first and last windows), over the part
    of the window they cover. None without two samples there."""
    before = [s for s in samples if s[0] <= lo] or [s for s in samples if s[0] < hi][:1]
    after = [s for s in samples if s[0] >= hi] or [s for s in samples if s[0] > lo][-1:]
    if not before or not after or after[0][2] == before[-1][2]:
        return None
    (_, steal0, total0), (_, steal1, total1) = before[-1], after[0]
    return round((steal1 - steal0) / (total1 - total0), 4)


def quiet_windows(windows: list[dict[str, float | None]], steal_below: float) -> dict[str, float | int | None]:
    """The live answers of the windows in which the VM's host took less than `steal_below` of
    the CPU, and the share of them within the budget: what the server does when the machine is
    its own. Every window counts in the headline share; this says how much of a miss was the host's."""
    quiet = [w for w in windows if w["steal"] is not None and w["steal"] < steal_below]
    answers = sum(int(w["live_answers"] or 0) for w in quiet)
    within = sum(float(w["within_budget_share"] or 0) * int(w["live_answers"] or 0) for w in quiet)
    return {
        "steal_below": steal_below,
        "windows": len(quiet),
        "of_windows": len(windows),
        "live_answers": answers,
        "within_budget_share": round(within / answers, 4) if answers else None,
    }


@dataclass
class Adversaries:
    cancels: int = 0
    non_readers: int = 0
    offline_sent: int = 0
    offline_answered: dict[str, int] = field(default_factory=dict)
    offline_errors: list[str] = field(default_factory=list)
    oversized: dict[str, int] = field(default_factory=dict)


def canceller(address: str, encoded: list[bytes], stop_at: float, rng: random.Random, adv: Adversaries) -> None:
    """Sends at 15 frames/s, reads a few answers and cancels: normal behaviour, over and over."""
    while time.monotonic() < stop_at:
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.SegmenterStub(channel)

        def frames() -> Iterator[pb.Frame]:
            for i in range(1000):
                yield pb.Frame(stream_id="cancel", index=i, encoded=encoded[i % len(encoded)])
                time.sleep(1 / 15)

        call = stub.Segment(frames())
        with contextlib.suppress(grpc.RpcError):
            for _ in range(rng.randint(1, 5)):
                next(call)
        call.cancel()
        adv.cancels += 1
        channel.close()
        time.sleep(0.5)


def non_reader(address: str, big: bytes, stop_at: float, hold_s: float, adv: Adversaries) -> None:
    """Sends 1080p frames at 10 frames/s asking for overlays, never reads one; hangs up after `hold_s`."""
    options = pb.FrameOptions(return_overlay=True, return_mask=True)
    while time.monotonic() < stop_at:
        channel = grpc.insecure_channel(address)

        def frames() -> Iterator[pb.Frame]:
            for i in range(10_000):
                yield pb.Frame(stream_id="mute", index=i, encoded=big, options=options)
                time.sleep(0.1)  # a live feed at 10 frames/s whose results nobody reads

        call = pb_grpc.SegmenterStub(channel).Segment(frames())
        time.sleep(min(hold_s, max(0.0, stop_at - time.monotonic())))
        call.cancel()
        adv.non_readers += 1
        channel.close()


def offline_client(address: str, encoded: list[bytes], stop_at: float, adv: Adversaries) -> None:
    """No-drop streams of 200 frames as fast as the server takes them: every one answered."""
    n = 0
    while time.monotonic() < stop_at:
        frames = [
            pb.Frame(stream_id=f"offline{n}", index=i, encoded=encoded[i % len(encoded)],
                     options=pb.FrameOptions(no_drop=True))
            for i in range(200)
        ]  # fmt: skip
        adv.offline_sent += len(frames)
        try:
            with SegmenterClient(address) as client:
                for answer in client.segment(iter(frames)):
                    adv.offline_answered[answer.status] = adv.offline_answered.get(answer.status, 0) + 1
        except grpc.RpcError as exc:
            adv.offline_errors.append(f"{exc.code().name}: {exc.details()}")
        n += 1


def oversized(address: str, big: bytes, crafted: bytes, stop_at: float, adv: Adversaries) -> None:
    """Every few seconds a 4096x4096 JPEG with overlay and mask, and a JPEG of 2,500 scans."""
    options = pb.FrameOptions(return_overlay=True, return_mask=True)
    n = 0
    while time.monotonic() < stop_at:
        frames = [
            pb.Frame(stream_id=f"big{n}", index=0, encoded=big, options=options),
            pb.Frame(stream_id=f"big{n}", index=1, encoded=crafted),
        ]
        try:
            with SegmenterClient(address) as client:
                for answer in client.segment(iter(frames)):
                    adv.oversized[answer.status] = adv.oversized.get(answer.status, 0) + 1
        except grpc.RpcError as exc:
            key = f"error {exc.code().name}"
            adv.oversized[key] = adv.oversized.get(key, 0) + 1
        n += 1
        time.sleep(5.0)


def crafted_jpeg(image: np.ndarray, scans: int) -> bytes:
    """A progressive JPEG whose last scan is repeated: thousands of scans in a small file."""
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    last = data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * scans + b"\xff\xd9"


def soak(address: str, metrics_url: str, *, streams: int, seconds: float, fps: float, seed: int,
         adversarial: tuple[str, ...] = ADVERSARIES, hold_s: float = 12.0,
         budget_ms: float = 40.0) -> dict[str, object]:  # fmt: skip
    encoded = [jpeg(f) for f in endoscopy_frames(24)]
    big_image = cv2.resize(endoscopy_frames(1)[0], (4096, 4096))
    big = jpeg(big_image)
    crafted = crafted_jpeg(np.full((4096, 4096, 3), 128, np.uint8), 2500)  # small file, 2,510 scans
    hd = jpeg(cv2.resize(big_image, (1920, 1080)))
    adv = Adversaries()
    with SegmenterClient(address) as client:
        info = client.model_info()  # which model served the soak, as the server says it
    totals, lock = Totals(), threading.Lock()
    rss: list[tuple[float, float]] = []
    server_cpu = scrape(metrics_url).get(CPU, 0.0)
    started, cpu = time.perf_counter(), time.process_time()
    sampler = StealSampler(started).start()  # the host's steal over the run and window by window
    stop_at = started + seconds

    def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        n = 0
        while time.perf_counter() < stop_at:
            one_stream(address, rng, encoded, fps, f"soak{k}-{n}", totals, lock, started)
            n += 1

    threads = [threading.Thread(target=worker, args=(k,), name=f"soak-{k}") for k in range(streams)]
    if adversarial:
        end = time.monotonic() + seconds
        rng = random.Random(seed)
        kinds = {
            "cancel": (canceller, (address, encoded, end, rng, adv)),
            "mute": (non_reader, (address, hd, end, hold_s, adv)),
            "offline": (offline_client, (address, encoded, end, adv)),
            "oversized": (oversized, (address, big, crafted, end, adv)),
        }
        threads += [threading.Thread(target=kinds[k][0], args=kinds[k][1]) for k in adversarial]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss.append((time.perf_counter() - started, scrape(metrics_url).get(RSS, 0.0)))
        for t in threads:
            t.join(timeout=max(1.0, seconds / 30))
    steal_samples = sampler.stop()
    end = scrape(metrics_url)
    wall = time.perf_counter() - started
    rss.append((wall, end.get(RSS, 0.0)))
    host_steal = steal_share(steal_samples, 0.0, wall)  # from the first sample to the last
    client_cores = round((time.process_time() - cpu) / wall, 2)
    server_cores = round((end.get(CPU, 0.0) - server_cpu) / wall, 2)
    time.sleep(2.0)  # the last streams' ends reach the server
    after = scrape(metrics_url)
    window = max(5.0, seconds / 20)
    over_time = []
    for i in range(int(wall // window) + 1):
        chunk = [ms for t, ms in totals.latencies if i * window <= t < (i + 1) * window]
        if chunk:
            over_time.append({"t_s": round(i * window, 1), "frames": len(chunk), **percentiles(chunk)})
    valid = max(1, sum(n for status, n in totals.answered.items() if status != "INVALID_FRAME"))
    server_ms = [s["server"] for s in totals.stages if s["ok"]]  # the OK frames' time in the server

    windows = live_windows(totals.stages, steal_samples, window, budget_ms)

    def within(latencies_ms: list[float]) -> float:
        """The share of the valid live frames answered OK within the budget."""
        return round(sum(1 for ms in latencies_ms if ms <= budget_ms) / valid, 4)

    # Memory growth: median RSS of the last fifth against the first fifth (single samples are noisy).
    fifth = max(1, len(rss) // 5)
    first = sorted(v for _, v in rss[:fifth])[fifth // 2]
    last = sorted(v for _, v in rss[-fifth:])[fifth // 2]
    return {
        "model": f"{info.name} {info.version}",
        "seconds": round(wall, 1),
        "cpu_steal_share": host_steal,
        "client_cpu_cores": client_cores,  # what this load generator took of the machine's cores
        "server_cpu_cores": server_cores,  # and what the server took (of os.cpu_count() here)
        "streams": streams,
        "fps_per_stream": fps,
        "stream_runs": totals.streams,
        "abandoned_streams": totals.abandoned_streams,
        "frames_sent": totals.sent,
        "answered": totals.answered,
        "abandoned": totals.abandoned,
        "lost": totals.lost,
        "errors": totals.errors[:20],
        "latency_ms": percentiles([ms for _, ms in totals.latencies]),
        "latency_over_time": over_time,
        "rss_mb": {
            "start": round(first / 2**20, 1),
            "end": round(last / 2**20, 1),
            "max": round(max(v for _, v in rss) / 2**20, 1),
        },
        "rss_growth_mb": round((last - first) / 2**20, 1),
        # Judged as the server judges a live frame (its deadline is the budget after it arrives);
        # the round trip as this client saw it is given too: here the clients, adversaries
        # included, share the machine and one Python process with the server's two cores.
        "live_ok_within_budget_share": within(server_ms),
        "live_ok_within_budget_share_client_side": within([ms for _, ms in totals.latencies]),
        "server_latency_ms": percentiles(server_ms),
        "live_mean_stage_ms": where_time_went(totals.stages, budget_ms),
        # Live frames by window, each with the CPU the VM's host took meanwhile, and the share
        # within budget in the windows where it took under 1 %: how much of a miss was the host's.
        "live_windows": windows,
        "quiet_windows": quiet_windows(windows, steal_below=0.01),
        "adversarial": {
            "cancelled_streams": adv.cancels,
            "non_reading_streams": adv.non_readers,
            "offline_sent": adv.offline_sent,
            "offline_answered": adv.offline_answered,
            "offline_lost": adv.offline_sent - sum(adv.offline_answered.values()),
            "offline_errors": adv.offline_errors[:20],
            "oversized_answers": adv.oversized,
        }
        if adversarial
        else None,
        "after": {
            "active_streams": after.get("polypstream_active_streams"),
            "frame_memory_bytes": after.get("polypstream_frame_memory_bytes"),
            "slow_client_aborts": after.get('polypstream_stream_aborts_total{reason="slow_client"}'),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", help="address of a running server (default: start one)")
    parser.add_argument("--metrics", help="its /metrics URL (needed with --server)")
    parser.add_argument("--model", default="fast", help="model for the server this starts")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, help="overrides --minutes (short runs)")
    parser.add_argument("--fps", type=float, default=25.0, help="frames/s per stream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--send-timeout", type=float, default=5.0, help="serve --send-timeout (server started here)")
    parser.add_argument(
        "--adversaries", default=",".join(ADVERSARIES), help="which clients run beside the live streams ('' for none)"
    )
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<device>-soak.json)")
    args = parser.parse_args()
    seconds = args.seconds or args.minutes * 60
    proc = None
    if args.server:
        if not args.metrics:
            parser.error("--server needs --metrics (the server's /metrics URL, for its memory)")
        address, metrics_url = args.server, args.metrics
    else:
        serve_args = ("--model", args.model, "--send-timeout", str(args.send_timeout))
        proc, address, metrics_url = start_server_process(*serve_args)
    server_log = ""
    try:
        report = soak(
            address, metrics_url, streams=args.streams, seconds=seconds, fps=args.fps, seed=args.seed,
            adversarial=tuple(k for k in args.adversaries.split(",") if k), hold_s=2 * args.send_timeout + 2,
        )  # fmt: skip
    finally:
        if proc is not None:
            proc.terminate()
            server_log = proc.communicate(timeout=60)[1]
    server = args.server or "started here: polypstream serve " + " ".join(serve_args)
    payload = {"benchmark": "soak", "device": device_name(), "server": server, **report}
    if proc is not None:
        lines = server_log.splitlines()
        errors = [i for i, line in enumerate(lines) if " ERROR " in line]
        payload["server_error_lines"] = len(errors)
        payload["server_error_examples"] = ["\n".join(lines[i : i + 25]) for i in errors[:3]]
    payload["command"] = command_line("benchmarks.soak", args)
    out = write_result("soak", payload, args.out)
    lat = report["latency_ms"]
    assert isinstance(lat, dict)
    print(
        f"{report['seconds']} s, {report['stream_runs']} streams ({report['abandoned_streams']} abandoned): "
        f"sent {report['frames_sent']}, answered {report['answered']}, abandoned {report['abandoned']}, "
        f"lost {report['lost']}; p99 {lat['p99']} ms; RSS {report['rss_mb']} (growth {report['rss_growth_mb']} MB); "
        f"live OK within budget {report['live_ok_within_budget_share']} (quiet windows {report['quiet_windows']}); "
        f"after {report['after']}; "
        f"adversarial {report['adversarial']}; server ERROR lines {payload.get('server_error_lines')}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
