"""The CLI end to end, as a user runs it: real processes, real ports, real files."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from benchmarks.common import scrape, start_serve, start_server_process
from benchmarks.service_latency import run_streams
from polypstream.cli import build_parser
from polypstream.runner import cuda_available
from tests.conftest import KVASIR_FIXTURES, wait_for, write_clip
from tests.ffmpeg_stream import free_port, listening, serve_stream

ROOT = Path(__file__).resolve().parents[2]


def polypstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polypstream", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


# A test run started in the background by a shell without job control (`cmd &`, nohup) inherits
# SIGINT ignored, and so would every process spawned here: Ctrl-C could not be tested. A handler
# (unlike "ignore") is reset to the default in a child, so the CLI sees Ctrl-C as a user's shell
# would deliver it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SPAWNED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def no_process_outlives_its_test() -> Iterator[None]:
    """A test that fails while its CLI still runs must not leave it eating the CPU of later tests."""
    yield
    while SPAWNED:
        proc = SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def spawn(*args: str) -> subprocess.Popen[str]:
    """`polypstream ARGS` running in the background, its output piped; killed after the test if
    it still runs then."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "polypstream", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    SPAWNED.append(proc)
    return proc


def first_progress_line(proc: subprocess.Popen[str], counting: str = "videos") -> str:
    """The first progress line on the command's stderr (not a terminal: one line per step)."""
    assert proc.stderr is not None
    line = ""
    while counting not in line:
        line = proc.stderr.readline()
        assert line, "the command ended before it reported progress"
    return line


@pytest.fixture
def server(tiny_model: Path) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """`polypstream serve` on free ports; yields (process, gRPC address, metrics URL)."""
    proc, address, metrics_url = start_server_process("--model", str(tiny_model), "--grace", "5")
    yield proc, address, metrics_url
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=20)  # reaps the process and closes its pipes


def test_demo_writes_results_overlay_and_summary(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "demo"
    done = polypstream("demo", "--out", str(out), "--model", str(tiny_model))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(64))
    assert {line["status"] for line in lines} == {"OK"}
    assert all({"box", "score", "track_id"} <= set(p) for line in lines for p in line["polyps"])
    video = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 64
    assert "64 frames (OK 64)" in done.stdout and "latency p50" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 64
    assert done.stdout.strip().splitlines()[-1] == (
        f"wrote {out / 'results.jsonl'}, {out / 'overlay.mp4'} and {out / 'summary.json'}"
    )


@pytest.mark.skipif(not (ROOT / "models" / "fast.onnx").is_file(), reason="no shipped model yet")
def test_demo_runs_on_the_shipped_default_model(tmp_path: Path) -> None:
    done = polypstream("demo", "--out", str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "polyp-unet" in done.stdout
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 64
    # The clip is made of four polyp images: a real model finds polyps in most frames.
    found = sum(bool(json.loads(line)["polyps"]) for line in lines)
    assert found >= 32, f"polyps found in only {found} of 64 frames"


def test_serve_stream_metrics_and_sigterm(server: tuple[subprocess.Popen[str], str, str], tmp_path: Path) -> None:
    proc, address, metrics_url = server
    clip = write_clip(tmp_path / "clip.avi", frames=12, fps=50.0)
    done = polypstream("stream", str(clip), "--server", address, "--jsonl", str(tmp_path / "out.jsonl"),
                       "--overlay", str(tmp_path / "overlay.avi"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(12))
    assert all(line["status"] == "OK" and len(line["polyps"]) == 1 for line in lines)
    # The clip's 50 fps went with it: the server's 2 of 2 frames (of 25 fps video) is 3 of 3 here.
    assert [line["polyps"][0]["alerting"] for line in lines] == [False, False] + [True] * 10
    assert lines[0]["latency_ms"] > 0 and lines[0]["stream_id"] == "clip"
    assert int(cv2.VideoCapture(str(tmp_path / "overlay.avi")).get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert "ms, mostly queueing: frames were sent as fast as the server took them (server p50" in done.stdout

    metrics = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    assert 'polypstream_frames_total{source="grpc",status="OK"} 12.0' in metrics
    assert "polypstream_stage_seconds_bucket" in metrics

    health = polypstream("health", "--server", address)
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_frame_rate_says_the_rate_for_the_alert_rule_where_the_source_does_not(
    server: tuple[subprocess.Popen[str], str, str], tmp_path: Path
) -> None:
    # A 10 fps clip said to be 50 fps (a capture card that reports a wrong rate): the server's
    # 2 of 2 frames is 3 of 3; said to be none (0): 2 of 2 as it is.
    _, address, _ = server
    clip = write_clip(tmp_path / "clip.avi", frames=6, fps=10.0)

    def alerting(rate: str) -> list[bool]:
        out = tmp_path / f"{rate}.jsonl"
        done = polypstream("stream", str(clip), "--server", address, "--jsonl", str(out), "--frame-rate", rate)
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["polyps"][0]["alerting"] for line in out.read_text().splitlines()]

    assert alerting("50") == [False, False, True, True, True, True]
    assert alerting("0") == [False, True, True, True, True, True]
    bad = polypstream(
        "stream", str(clip), "--server", address, "--jsonl", str(tmp_path / "x.jsonl"), "--frame-rate", "-5"
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        "polypstream stream: error: argument --frame-rate: "
        "frame rate must be more than 0 and at most 1000 frames a second, got -5"
    )


def test_sigterm_mid_stream_answers_what_was_read_and_exits_zero(
    server: tuple[subprocess.Popen[str], str, str], tmp_path: Path
) -> None:
    proc, address, _ = server
    clip = write_clip(tmp_path / "clip.avi", frames=200, fps=20)  # 10 s at its own rate
    out = tmp_path / "out.jsonl"
    command = ["stream", str(clip), "--server", address, "--realtime", "--jsonl", str(out), "--reconnect", "1"]
    stream = spawn(*command)
    deadline = time.monotonic() + 30
    while (not out.exists() or len(out.read_text().splitlines()) < 10) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    server_out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    client_out, client_err = stream.communicate(timeout=30)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # no server came back within --reconnect: one line saying so and why, how many of the frames
    # sent were answered, and where they are
    ended = r"UNAVAILABLE: server shutting down: every frame it read was answered; send the rest elsewhere"
    said = re.fullmatch(
        rf"polypstream stream: the stream's call ended \({ended}\); trying the server again for up to 1 s; the \d+ "
        r"frames? sent and not answered will be sent again\n"
        rf"polypstream stream: error: the stream ended early \({ended}; no server answered within 1 s\): (\d+) of "
        r"the (\d+) frames sent were answered, and no more "
        rf"were sent; their results are in {re.escape(str(out))}\n",
        client_err,
    )
    assert stream.returncode == 1 and said is not None, client_err
    assert int(said.group(1)) == len(lines) <= int(said.group(2))
    assert client_out.startswith(f"{len(lines)} frames (OK {len(lines)})")  # the summary of what was answered
    answered = int(re.search(r"stopped: (\d+) frames answered", server_out).group(1))  # type: ignore[union-attr]
    assert 10 <= len(lines) == answered < 200  # every frame the server read reached the client
    assert [line["index"] for line in lines] == list(range(len(lines)))


def restarted_under(
    client: subprocess.Popen[str], server: subprocess.Popen[str], address: str, *serve_args: str
) -> tuple[str, str]:
    """Restart `server` under a running `client` command: SIGTERM (it drains and exits), then a
    new `serve SERVE_ARGS` at the same address; the client's (stdout, stderr) once it ends."""
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=30)
    restarted, _ = start_serve(*serve_args, "--address", address)
    try:
        return client.communicate(timeout=120)
    finally:
        restarted.terminate()
        restarted.communicate(timeout=30)


def test_a_stream_goes_on_when_its_server_restarts_and_every_frame_is_answered_once(
    server: tuple[subprocess.Popen[str], str, str], tmp_path: Path, tiny_model: Path
) -> None:
    proc, address, _ = server
    clip = write_clip(tmp_path / "clip.avi", frames=100, fps=20)  # 5 s at its own rate
    out = tmp_path / "out.jsonl"
    stream = spawn("stream", str(clip), "--server", address, "--realtime", "--jsonl", str(out))
    wait_for_lines(out, 10)
    client_out, client_err = restarted_under(stream, proc, address, "--model", str(tiny_model))
    assert stream.returncode == 0, client_err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(100)) and {line["status"] for line in lines} == {"OK"}
    told = client_err.splitlines()
    assert len(told) == 2, client_err
    assert told[0].startswith("polypstream stream: the stream's call ended (UNAVAILABLE: server shutting down")
    assert re.fullmatch(r"polypstream stream: reconnected after \d+\.\d s; the stream goes on", told[1])
    assert client_out.startswith("100 frames (OK 100)") and client_out.rstrip().endswith("; reconnected 1 time")


def test_ctrl_c_on_stream_sends_no_more_and_summarises_what_was_answered(
    server: tuple[subprocess.Popen[str], str, str], tmp_path: Path
) -> None:
    _, address, _ = server
    clip = write_clip(tmp_path / "clip.avi", frames=200, fps=20)  # 10 s at its own rate
    out = tmp_path / "out.jsonl"
    command = ["stream", str(clip), "--server", address, "--realtime", "--jsonl", str(out)]
    stream = spawn(*command)
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:  # created as streaming starts
        time.sleep(0.05)
    time.sleep(1.0)  # about 20 frames sent
    stream.send_signal(signal.SIGINT)
    client_out, client_err = stream.communicate(timeout=30)
    assert stream.returncode == 130, client_err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0 < len(lines) < 200 and [line["index"] for line in lines] == list(range(len(lines)))
    (summary,) = client_out.strip().splitlines()
    assert summary.startswith(f"interrupted: {len(lines)} frames (OK {len(lines)})")


def wait_for_lines(path: Path, n: int) -> None:
    """Until `path` holds `n` whole lines (a command writing results as they come)."""
    wait_for(lambda: path.exists() and path.read_text().count("\n") >= n, 60, f"{path} holding {n} lines")


def test_watch_lists_the_servers_sources_and_records_one_to_its_end(tmp_path: Path, tiny_model: Path) -> None:
    short = write_clip(tmp_path / "short.avi", frames=12, fps=50.0)
    long = write_clip(tmp_path / "long.avi", frames=400, fps=20.0)
    sources = ["--source", f"short={short}", "--source", f"long={long}"]
    proc, address, _ = start_server_process("--model", str(tiny_model), *sources)
    SPAWNED.append(proc)
    listed = polypstream("watch", "--server", address)
    assert listed.returncode == 0, listed.stderr
    assert [line.split() for line in listed.stdout.splitlines()] == [
        ["SOURCE", "STATE", "FRAMES", "WATCHERS", "FPS", "URI"],
        ["short", "idle", "0", "0", "50", str(short)],  # files play from their first watcher
        ["long", "idle", "0", "0", "20", str(long)],
    ]
    out, overlay = tmp_path / "short.jsonl", tmp_path / "short-overlay.avi"
    done = polypstream("watch", "short", "--server", address, "--jsonl", str(out), "--overlay", str(overlay))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["stream_id"], line["index"], line["status"]) for line in lines] == [
        ("short", i, "OK") for i in range(12)
    ]
    assert all(len(line["polyps"]) == 1 and "latency_ms" not in line for line in lines)  # no frame sent, no round trip
    video = cv2.VideoCapture(str(overlay))
    assert (int(video.get(cv2.CAP_PROP_FRAME_COUNT)), video.get(cv2.CAP_PROP_FPS)) == (12, 50.0)
    assert done.stdout.startswith("12 frames of source 'short' (OK 12); polyps in 12 frames, 12 detections, 1 tracks")
    assert "have no result" not in done.stdout
    again = polypstream("watch", "short", "--server", address, "--jsonl", str(tmp_path / "again.jsonl"))
    assert (again.returncode, again.stderr) == (
        2,
        "polypstream watch: error: source 'short' has ended: a file source plays once, from its first watcher to its "
        "end (12 frames); restart the server to play it again\n",
    )
    unknown = polypstream("watch", "nope", "--server", address, "--jsonl", str(tmp_path / "x.jsonl"))
    assert (unknown.returncode, unknown.stderr) == (
        2,
        f"polypstream watch: error: the server at {address} has no source named 'nope' (its sources: short, long)\n",
    )
    nowhere = polypstream("watch", "long", "--server", address)
    assert (nowhere.returncode, nowhere.stderr) == (
        2,
        "polypstream watch: error: --jsonl is needed to watch source 'long': the file its results go to\n",
    )
    assert not (tmp_path / "x.jsonl").exists()
    proc.terminate()
    proc.communicate(timeout=30)


def test_a_stated_source_frame_rate_scales_its_alert_rule_and_is_listed(tmp_path: Path, tiny_model: Path) -> None:
    # One 10 fps clip served twice: as it is, and said to be 50 fps (a capture card that reports
    # a wrong rate). The server's 2 of 2 frames at 25 fps stays 2 of 2 at 10 fps, 3 of 3 at 50.
    clip = write_clip(tmp_path / "clip.avi", frames=6, fps=10.0)
    sources = ["--source", f"own={clip}", "--source", f"said={clip}", "--source-frame-rate", "said=50"]
    proc, address, _ = start_server_process("--model", str(tiny_model), *sources)
    SPAWNED.append(proc)
    listed = polypstream("watch", "--server", address)
    assert [line.split()[4] for line in listed.stdout.splitlines()] == ["FPS", "10", "50"]

    def alerting(name: str) -> list[bool]:
        out = tmp_path / f"{name}.jsonl"
        done = polypstream("watch", name, "--server", address, "--jsonl", str(out))
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["polyps"][0]["alerting"] for line in out.read_text().splitlines()]

    assert alerting("own") == [False, True, True, True, True, True]
    assert alerting("said") == [False, False, True, True, True, True]
    proc.terminate()
    proc.communicate(timeout=30)
    unnamed = [*sources[:2], "--source-frame-rate", "said=50", "--address", "127.0.0.1:0", "--metrics-address", ""]
    refused = polypstream("serve", "--model", str(tiny_model), *unnamed)
    assert (refused.returncode, refused.stderr) == (
        2,
        "polypstream serve: error: --source-frame-rate said=50: no --source is named 'said'\n",
    )


def test_watch_ends_on_ctrl_c_after_its_seconds_and_when_the_server_shuts_down(
    tmp_path: Path, tiny_model: Path
) -> None:
    long = write_clip(tmp_path / "long.avi", frames=400, fps=20.0)  # 20 s at its own pace
    proc, address, _ = start_server_process("--model", str(tiny_model), "--source", f"long={long}", "--grace", "30")
    SPAWNED.append(proc)
    first = tmp_path / "first.jsonl"
    watcher = spawn("watch", "long", "--server", address, "--jsonl", str(first))
    wait_for_lines(first, 5)
    watcher.send_signal(signal.SIGINT)
    out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 130, err
    indices = [json.loads(line)["index"] for line in first.read_text().splitlines()]
    assert indices == list(range(len(indices)))
    assert out.startswith(f"interrupted: {len(indices)} frames of source 'long' (OK {len(indices)})")

    timed = tmp_path / "timed.jsonl"
    done = polypstream("watch", "long", "--server", address, "--jsonl", str(timed), "--seconds", "0.5")
    assert done.returncode == 0, done.stderr
    indices = [json.loads(line)["index"] for line in timed.read_text().splitlines()]
    assert indices[0] > 0 and indices == list(range(indices[0], indices[0] + len(indices)))  # it played on meanwhile
    assert done.stdout.startswith(f"{len(indices)} frames of source 'long'") and len(indices) < 400

    last = tmp_path / "last.jsonl"
    watcher = spawn("watch", "long", "--server", address, "--jsonl", str(last))
    wait_for_lines(last, 3)
    proc.send_signal(signal.SIGTERM)
    out, err = watcher.communicate(timeout=30)  # before: the grace (30 s) or the file's end, whichever came first
    assert watcher.returncode == 1, err
    indices = [json.loads(line)["index"] for line in last.read_text().splitlines()]
    assert err == (
        "polypstream watch: error: the watch ended early (UNAVAILABLE: server shutting down: source 'long' reads no "
        f"more frames; those it read were sent); the {len(indices)} results received are in {last}\n"
    )
    proc.communicate(timeout=30)  # reaps it and closes its pipes
    assert proc.returncode == 0
    assert indices == list(range(indices[0], indices[0] + len(indices))) and indices[-1] < 399


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")
def test_watch_of_a_live_source_goes_on_when_its_server_restarts(tmp_path: Path, tiny_model: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", frames=20, fps=20)
    port = free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    ffmpeg = serve_stream(clip, port)  # FFmpeg serves one client: a new one for the new server
    try:
        wait_for(lambda: listening(port), what="FFmpeg listening")
        proc, address, _ = start_server_process("--model", str(tiny_model), "--source", f"scope={url}")
        out = tmp_path / "scope.jsonl"
        watching = spawn("watch", "scope", "--server", address, "--jsonl", str(out), "--seconds", "10")
        wait_for_lines(out, 5)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        ffmpeg.wait(timeout=30)  # its client has gone
        ffmpeg = serve_stream(clip, port)
        wait_for(lambda: listening(port), what="FFmpeg listening again")
        restarted, _ = start_serve("--model", str(tiny_model), "--address", address, "--source", f"scope={url}")
        try:
            said, told = watching.communicate(timeout=60)
        finally:
            restarted.terminate()
            restarted.communicate(timeout=30)
    finally:
        ffmpeg.kill()
        ffmpeg.wait(timeout=30)
    assert watching.returncode == 0, told  # it ran its 10 s
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    indices = [line["index"] for line in lines]
    # each server counts its source's frames from when it opened it: one step back, where the new one's begin
    (restart,) = [i for i in range(1, len(indices)) if indices[i] < indices[i - 1]]
    first, then = indices[:restart], indices[restart:]
    rising = all(a < b for part in (first, then) for a, b in itertools.pairwise(part))
    assert rising and len(first) >= 5 and len(then) >= 5, indices
    told_lines = told.splitlines()
    assert told_lines[0].startswith("polypstream watch: the watch ended (UNAVAILABLE: server shutting down")
    assert re.fullmatch(r"polypstream watch: reconnected after \d+\.\d s; the watch goes on", told_lines[1])
    assert said.rstrip().endswith("; reconnected 1 time")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")
def test_a_live_source_that_stops_is_opened_again_and_the_stream_ends_when_it_does_not_come_back(
    server: tuple[subprocess.Popen[str], str, str], tmp_path: Path
) -> None:
    _, address, _ = server
    clip = write_clip(tmp_path / "clip.avi", frames=20, fps=20)
    port = free_port()
    url = f"http://127.0.0.1:{port}/live.ts"
    out = tmp_path / "live.jsonl"
    ffmpeg = serve_stream(clip, port)
    try:
        wait_for(lambda: listening(port), what="FFmpeg listening")
        stream = spawn("stream", url, "--server", address, "--jsonl", str(out), "--source-reconnect", "10")
        assert stream.stderr is not None
        wait_for_lines(out, 10)
        ffmpeg.kill()  # the encoder goes away...
        ffmpeg.wait(timeout=30)
        stopped = stream.stderr.readline()
        ffmpeg = serve_stream(clip, port)  # ...and comes back
        back = stream.stderr.readline()
        wait_for_lines(out, out.read_text().count("\n") + 10)
        ffmpeg.kill()  # for good
        ffmpeg.wait(timeout=30)
        said, told = stream.communicate(timeout=60)
    finally:
        ffmpeg.kill()
        ffmpeg.wait(timeout=30)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    indices = [line["index"] for line in lines]
    # numbered on across the gap; a frame a newer one replaced before the call took it is skipped, and counted
    skipped = re.search(r"; (\d+) frames of the source skipped: ", said)
    assert indices == sorted(set(indices)) and indices[0] == 0
    assert indices[-1] + 1 - len(indices) == (int(skipped.group(1)) if skipped else 0), said
    first_stop = re.fullmatch(
        r"polypstream stream: the source stopped delivering frames after frame (\d+); "
        r"opening it again for up to 10 s\n",
        stopped,
    )
    came_back = re.fullmatch(
        r"polypstream stream: the source is back after (\d+\.\d) s without frames; frames go on from (\d+)\n", back
    )
    assert first_stop is not None and came_back is not None, (stopped, back)
    assert int(came_back.group(2)) == int(first_stop.group(1)) + 1
    assert stream.returncode == 1, told
    last = indices[-1]
    assert told.splitlines()[-1] == (
        f"polypstream stream: error: the source stopped delivering frames after frame {last} and did not come back "
        f"within 10 s (last try: {url}: cannot open (not a video OpenCV/FFmpeg can decode, or unreachable)); the "
        f"stream's {len(lines)} results are in {out}"
    )
    assert said.rstrip().endswith(f"; the source stopped and came back 1 time ({came_back.group(1)} s without frames)")
    assert "mostly queueing" not in said  # a live source's frames come at its pace, not flat out


def test_ctrl_c_on_demo_stops_sending_and_writes_what_was_answered(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "demo"
    demo = spawn("demo", "--out", str(out), "--model", str(tiny_model))  # 64 frames at 10 fps: 6.4 s
    assert demo.stdout is not None
    assert demo.stdout.readline().startswith("model ")  # the server is up; frames are being sent
    time.sleep(1.0)
    demo.send_signal(signal.SIGINT)
    client_out, client_err = demo.communicate(timeout=30)
    assert demo.returncode == 130, client_err
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert 0 < len(lines) < 64 and [line["index"] for line in lines] == list(range(len(lines)))
    assert client_out.splitlines()[0].startswith(f"interrupted: {len(lines)} frames (OK {len(lines)})")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["frames"] == len(lines)


def test_metrics_move_during_a_live_stream(server: tuple[subprocess.Popen[str], str, str], tmp_path: Path) -> None:
    _, address, metrics_url = server
    clip = write_clip(tmp_path / "clip.avi", frames=40, fps=10)  # 4 s at its own rate
    stream = spawn("stream", str(clip), "--server", address, "--realtime", "--jsonl", str(tmp_path / "out.jsonl"))
    ok = 'polypstream_frames_total{source="grpc",status="OK"}'
    seen: list[dict[str, float]] = []
    deadline = time.monotonic() + 60
    while stream.poll() is None and time.monotonic() < deadline:
        seen.append(scrape(metrics_url))
        time.sleep(0.5)
    _, err = stream.communicate(timeout=60)
    assert stream.returncode == 0, err
    during = [s for s in seen if 0 < s.get(ok, 0) < 40]
    assert len(during) >= 2, "no scrape landed while the stream ran"
    assert during[0]["polypstream_active_streams"] == 1
    assert during[-1][ok] > during[0][ok]  # the counter moves while frames flow
    after = scrape(metrics_url)
    assert after[ok] == 40 and after["polypstream_active_streams"] == 0
    assert after['polypstream_stage_seconds_count{stage="end_to_end"}'] == 40
    assert after["process_resident_memory_bytes"] > 0


def test_token_from_a_file_for_serve_and_from_the_environment_for_clients(tmp_path: Path, tiny_model: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("e2e-secret\n")
    proc, address, _ = start_server_process("--model", str(tiny_model), "--token-file", str(token_file))
    try:
        assert "e2e-secret" not in " ".join(proc.args)  # never on the command line
        clip = write_clip(tmp_path / "clip.avi", frames=3)
        args = ["stream", str(clip), "--server", address, "--jsonl", str(tmp_path / "o.jsonl")]
        refused = polypstream(*args)
        assert refused.returncode == 1 and refused.stdout == ""  # refused before any answer: no summary
        assert refused.stderr == (
            "polypstream stream: error: server answered StatusCode.UNAUTHENTICATED: missing or invalid bearer token\n"
        )
        env = {**os.environ, "POLYPSTREAM_TOKEN": "e2e-secret"}
        done = subprocess.run(
            [sys.executable, "-m", "polypstream", *args], capture_output=True, text=True, env=env, cwd=ROOT
        )
        assert done.returncode == 0, done.stderr
    finally:
        proc.kill()
        proc.communicate(timeout=20)


def test_a_stream_sent_with_allow_view_is_listed_by_the_live_view(tmp_path: Path, tiny_model: Path) -> None:
    proc, at = start_serve("--model", str(tiny_model), "--ui", "127.0.0.1:0")
    try:
        state_url = at["ui"] + "api/state"
        clip = write_clip(tmp_path / "scope-7.avi", frames=80)  # 8 s at 10 fps
        args = ["stream", str(clip), "--server", at["grpc"]]
        jsonl = tmp_path / "o.jsonl"

        def listed() -> list[str]:
            return [s["name"] for s in json.load(urllib.request.urlopen(state_url, timeout=10))["streams"]]

        names: list[list[str]] = []
        for allow in ([], ["--allow-view"]):
            sender = spawn(*args, "--realtime", "--jsonl", str(jsonl), *allow)
            # answers written (the JSONL is flushed every few lines), or the stream already listed
            deadline = time.monotonic() + 60
            while not (listed() or (jsonl.exists() and jsonl.stat().st_size)) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)  # a second more of frames answered
            names.append(listed())
            sender.kill()
            sender.communicate(timeout=20)
            jsonl.unlink(missing_ok=True)
        assert names == [[], ["scope-7"]]
    finally:
        proc.kill()
        proc.communicate(timeout=20)


def test_replay_in_process_writes_a_report(tmp_path: Path, tiny_model: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "a").mkdir(parents=True)
    write_clip(corpus / "a" / "one.avi", frames=6)
    write_clip(corpus / "two.avi", frames=4)
    report_path, plot = tmp_path / "replay.json", tmp_path / "replay.png"
    command = ["replay", str(corpus), "--model", str(tiny_model), "--streams", "2", "--json", str(report_path)]
    done = polypstream(*command, "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(report_path.read_text())
    assert (report["videos"], report["frames"], report["errors"]) == (2, 10, 0)
    assert report["accounting"]["all_accounted"] is True
    assert "2 videos, 10 frames" in done.stdout


@pytest.mark.parametrize("where", ["in-process", "over --server"])
def test_ctrl_c_on_replay_stops_it_with_a_partial_report_and_exit_130(
    tmp_path: Path, tiny_model: Path, where: str, request: pytest.FixtureRequest
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(20):
        write_clip(corpus / f"v{k:02d}.avi", frames=300)
    report_path = tmp_path / "replay.json"
    if where == "in-process":
        engine = ["--model", str(tiny_model)]
    else:
        engine = ["--server", request.getfixturevalue("server")[1]]
    proc = spawn("replay", str(corpus), *engine, "--streams", "2", "--json", str(report_path))
    line = first_progress_line(proc)
    assert re.match(r"[12]/20 videos, \d+ frames \(\d+\.\d/s, \d+ s left\)$", line), line
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert out.strip().splitlines()[-1].startswith("interrupted: ")
    report = json.loads(report_path.read_text())
    assert report["interrupted"] is True and report["videos"] < 20
    assert report["accounting"]["all_accounted"] is True and report["frame_count_mismatches"] == [], (
        report["accounting"],
        report["error_messages"],
        report["frame_count_mismatches"],
    )


def test_corpus_prints_progress_and_nothing_of_opencv(tmp_path: Path) -> None:
    out = tmp_path / "stand-in"
    done = polypstream("corpus", str(out), "--from", str(KVASIR_FIXTURES), "--videos", "10", "--seconds", "0.3")
    assert done.returncode == 0, done.stderr
    assert len(list(out.rglob("*.mpg"))) == 1  # the MPEG program stream OpenCV's writer complains about
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 10 and "\r" not in done.stderr  # not a terminal: one line each, nothing redrawn
    for n, line in enumerate(lines, start=1):
        assert re.fullmatch(rf"{n}/10 videos \(\d+\.\d/s, \d+ s left\)", line), line


def test_ctrl_c_on_corpus_leaves_nothing_that_blocks_a_rerun(tmp_path: Path) -> None:
    out = tmp_path / "stand-in"
    command = ["corpus", str(out), "--from", str(KVASIR_FIXTURES), "--videos", "200", "--seconds", "2"]
    proc = spawn(*command)
    first_progress_line(proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert re.search(r"polypstream corpus: interrupted after \d+ of 200 videos; removed what was written", err)
    assert not out.exists()
    rerun = polypstream(*command[:-4], "--videos", "1", "--seconds", "0.5")
    assert rerun.returncode == 0, rerun.stderr


def test_stream_errors_are_one_line_and_nonzero(server: tuple[subprocess.Popen[str], str, str], tmp_path: Path) -> None:
    _, address, _ = server
    missing = polypstream(
        "stream", str(tmp_path / "nope.mp4"), "--server", address, "--jsonl", str(tmp_path / "o.jsonl")
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"polypstream stream: error: {tmp_path / 'nope.mp4'}: no such file"]
    clip = write_clip(tmp_path / "clip.avi", frames=2)
    unreachable = polypstream("stream", str(clip), "--server", "127.0.0.1:1", "--jsonl", str(tmp_path / "o.jsonl"),
                              "--connect-timeout", "2")  # fmt: skip
    assert unreachable.returncode == 2
    assert unreachable.stderr.strip().splitlines() == [
        "polypstream: waiting up to 2 s for the server at 127.0.0.1:1…",
        "polypstream stream: error: no polypstream server answered at 127.0.0.1:1 within 2 s (is `polypstream serve` "
        "running there? --server sets the address, --connect-timeout the wait)",
    ]


def test_replay_against_a_server_that_is_not_there_ends_in_one_line_before_it_starts(tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    write_clip(folder / "a.avi", frames=40)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    done = polypstream("replay", str(folder), "--server", address, "--connect-timeout", "1")
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith(
        f"polypstream replay: error: no polypstream server answered at {address} within 1 s (is `polypstream serve` "
        "running there? --server sets the address, --connect-timeout the wait)\n"
    )


def replay_corpus(folder: Path, videos: int = 8, frames: int = 300) -> Path:
    folder.mkdir()
    for i in range(videos):
        write_clip(folder / f"v{i}.avi", frames=frames)
    return folder


def test_replay_goes_on_through_a_server_restart_and_answers_every_frame(
    server: tuple[subprocess.Popen[str], str, str], tmp_path: Path, tiny_model: Path
) -> None:
    proc, address, _ = server
    folder = replay_corpus(tmp_path / "videos")
    replaying = spawn("replay", str(folder), "--server", address, "--streams", "2", "--json", str(tmp_path / "r.json"))
    first_progress_line(replaying)  # a first video done
    out, err = restarted_under(replaying, proc, address, "--model", str(tiny_model))
    assert replaying.returncode == 0, err
    assert out.startswith("8 of 8 videos, 2400 frames") and "errors 0" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["accounting"] == {"sent": 2400, "answered": 2400, "ok": 2400, "errors": 0, "all_accounted": True}
    assert report["reconnects"] >= 1 and report["servers_lost"] == [] and report["videos_not_replayed"] == 0
    assert "reconnected after" in err and "FATAL" not in err


def test_replay_whose_server_does_not_come_back_says_what_it_did_not_replay_and_does_not_abort(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Left reading a video (native code) in gRPC's thread as the process exited, the CLI once
    # aborted ("FATAL: exception not rethrown", exit 134): run twice.
    folder = replay_corpus(tmp_path / "videos", frames=600)
    for _ in range(2):
        proc, address, _ = start_server_process("--model", str(tiny_model))
        json_path = str(tmp_path / "r.json")
        replaying = spawn(
            "replay", str(folder), "--server", address, "--streams", "1", "--reconnect", "1", "--json", json_path
        )
        first_progress_line(replaying)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        _, err = replaying.communicate(timeout=60)
        assert replaying.returncode == 1 and "FATAL" not in err, err
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["servers_lost"] == [address] and report["accounting"]["all_accounted"]
        left = report["videos_found"] - report["videos"]
        assert left == report["videos_not_replayed"] > 0
        assert err.rstrip().endswith(
            f"{left} videos not replayed: no server answered within 1 s (--reconnect) at {address}"
        )


def test_health_without_a_server_says_none_answered() -> None:
    done = polypstream("health", "--server", "127.0.0.1:1", "--timeout", "1")
    assert done.returncode == 1
    assert done.stdout.strip() == (
        "UNREACHABLE: no polypstream server answered at 127.0.0.1:1 within 1 s (is `polypstream serve` running there?)"
    )


def test_every_option_says_what_it_does_and_its_default() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in commands.choices.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help"
    serve_help = " ".join(polypstream("serve", "--help").stdout.split())
    assert (
        "--max-streams MAX_STREAMS concurrent Segment streams; more are refused (RESOURCE_EXHAUSTED) (default: 64)"
        in (serve_help)
    )
    assert "--budget-ms BUDGET_MS per-frame latency budget (default: 40.0)" in serve_help
    assert "(default: None)" not in serve_help and "(default: [])" not in serve_help


def test_version_comes_from_the_package_metadata() -> None:
    found = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert found is not None
    version = found.group(1)
    done = polypstream("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"polypstream {version}")


@pytest.mark.parametrize("problem", ["missing", "corrupt", "wrong-shape"])
def test_serve_refuses_a_bad_model_with_one_line(tmp_path: Path, problem: str) -> None:
    from tests.tiny_model import build_tiny_model

    path = tmp_path / "model.onnx"
    if problem == "corrupt":
        path.write_bytes(b"this is not onnx")
    elif problem == "wrong-shape":
        build_tiny_model(path, metadata={"polypstream.input_size": "128x128"})
    done = polypstream("serve", "--model", str(path), "--address", "127.0.0.1:0", "--metrics-address", "")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"polypstream serve: error: {path}")


def test_serve_refuses_a_source_that_cannot_open(tmp_path: Path, tiny_model: Path) -> None:
    missing = tmp_path / "gone.avi"
    done = polypstream(
        "serve",
        "--model",
        str(tiny_model),
        "--source",
        f"scope={missing}",
        "--address",
        "127.0.0.1:0",
        "--metrics-address",
        "",
    )  # not the default port: a server of the developer's may listen there
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"polypstream serve: error: source 'scope': {missing}: no such file"]


def test_serve_refuses_a_stream_url_that_does_not_answer(tiny_model: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/live.ts"  # nothing listens there
    done = polypstream(
        "serve",
        "--model",
        str(tiny_model),
        "--source",
        f"scope={url}",
        "--address",
        "127.0.0.1:0",
        "--metrics-address",
        "",
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"polypstream serve: error: source 'scope': {url}: cannot open")


def test_a_second_serve_on_a_port_in_use_fails_naming_the_address(
    server: tuple[subprocess.Popen[str], str, str], tiny_model: Path
) -> None:
    _, address, _ = server  # a running serve holds the port (gRPC would share it: SO_REUSEPORT)
    in_use = "polypstream serve: error: cannot listen on {} ({}): the port is in use (another server listens there)"
    for flag in ("--address", "--health-address", "--metrics-address", "--ui"):
        flags = ["--address", "127.0.0.1:0", "--metrics-address", "", flag, address]  # the last --address wins
        done = polypstream("serve", "--model", str(tiny_model), *flags, timeout=60)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [in_use.format(address, flag)]  # one line, before the model


def test_two_listeners_of_one_serve_on_one_port_are_refused_in_one_line(tiny_model: Path) -> None:
    # the second would fail to bind after the model loaded, with a gRPC core line before ours
    for flags, said in (
        (["--health-address", "127.0.0.1:50071"], "--health-address 127.0.0.1:50071 takes the port of --address"),
        (["--metrics-address", "0.0.0.0:50071"], "--metrics-address 0.0.0.0:50071 takes the port of --address"),
        (["--metrics-address", "127.0.0.1:50072", "--ui", "127.0.0.1:50072"], "--ui 127.0.0.1:50072 takes the port of"),
    ):
        done = polypstream("serve", "--model", str(tiny_model), "--address", "127.0.0.1:50071", *flags, timeout=60)
        assert done.returncode == 2
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(f"polypstream serve: error: {said}") and line.endswith("; give each its own")


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("garbage", "expected HOST:PORT (e.g. 127.0.0.1:50051) or unix:PATH"),
        ("127.0.0.1:99999", "expected HOST:PORT (e.g. 127.0.0.1:50051) or unix:PATH"),
    ],
)
def test_serve_refuses_a_malformed_address_with_one_line(tiny_model: Path, address: str, why: str) -> None:
    done = polypstream("serve", "--model", str(tiny_model), "--address", address, "--metrics-address", "")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()  # no raw gRPC core line before it
    assert line.startswith(f"polypstream serve: error: --address {address}: {why}")


def test_serve_refuses_a_live_view_address_it_cannot_use_with_one_line(tiny_model: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            f"127.0.0.1:{port}": f"cannot listen on 127.0.0.1:{port} (--ui): the port is in use "
            "(another server listens there)",
            "unix:/tmp/view.sock": "--ui unix:/tmp/view.sock: the live view needs HOST:PORT (e.g. 127.0.0.1:8080)",
        }
        for address, why in cases.items():
            done = polypstream("serve", "--model", str(tiny_model), "--address", "127.0.0.1:0",
                               "--metrics-address", "", "--ui", address, timeout=60)  # fmt: skip
            assert done.returncode == 2
            assert done.stderr.strip().splitlines() == [f"polypstream serve: error: {why}"]  # one line


def test_serve_never_prints_the_password_of_a_source_url(tiny_model: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    url = f"http://viewer:S3CRET@127.0.0.1:{port}/live.ts"
    done = polypstream("serve", "--model", str(tiny_model), "--source", f"scope={url}", "--metrics-address", "")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        f"polypstream serve: error: source 'scope': http://***@127.0.0.1:{port}/live.ts: cannot open"
    )
    assert "S3CRET" not in done.stderr + done.stdout


def test_help_lists_the_commands() -> None:
    done = polypstream("--help")
    assert done.returncode == 0
    for command in ("serve", "stream", "demo"):
        assert command in done.stdout
    assert os.access(sys.executable, os.X_OK)


def test_ctrl_c_on_eval_reports_the_scores_of_the_images_done_so_far(tmp_path: Path, tiny_model: Path) -> None:
    # 4,000 copies of one fixture image: every image scores the same, so the scores of any
    # number of them are that image's own scores.
    name = "cju16d65tzw9d0799ouslsw25"
    data = tmp_path / "copies"
    for folder in ("images", "masks"):
        (data / folder).mkdir(parents=True)
        for k in range(4000):
            (data / folder / f"{k:05d}.jpg").symlink_to(KVASIR_FIXTURES / folder / f"{name}.jpg")
    box = json.loads((KVASIR_FIXTURES / "kavsir_bboxes.json").read_text())[name]
    (data / "kavsir_bboxes.json").write_text(json.dumps({f"{k:05d}": box for k in range(4000)}))
    (tmp_path / "one.txt").write_text(name + "\n")
    split = tmp_path / "one.txt"
    one = polypstream(
        "eval", "--data", str(KVASIR_FIXTURES), "--split", str(split), "--model", str(tiny_model), "--json"
    )
    assert one.returncode == 0, one.stderr
    expected = json.loads(one.stdout)

    proc = spawn("eval", "--data", str(data), "--model", str(tiny_model), "--json")
    assert re.match(r"\d+/4000 images \(", first_progress_line(proc, "images"))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] is True
    assert 0 < report["images"] < 4000
    for key in ("dice", "iou", "precision", "recall", "box_precision", "box_recall"):
        assert report[key] == pytest.approx(expected[key]), key


def test_eval_video_prints_the_cade_metrics_as_json_with_a_sweep_and_a_plot(tmp_path: Path, tiny_model: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", frames=12, fps=10.0)
    boxes = [[[8 + 2 * i, 24, 32, 24]] for i in range(12)]
    (tmp_path / "clip.boxes.json").write_text(json.dumps({"fps": 10, "frames": boxes}))
    plot = tmp_path / "sweep.png"
    done = polypstream("eval-video", str(clip), "--model", str(tiny_model), "--json", "--sweep", "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    required = {"frames", "polyps", "per_frame_sensitivity", "per_polyp_sensitivity", "first_detection_ms",
                "fp_activations", "fp_per_minute", "minutes", "sources"}  # fmt: skip
    assert required <= set(report) and set(report["first_detection_ms"]) == {"median", "p90", "max"}
    assert report["rule"] == {"min_seen": 2, "window": 2, "hold": 4} and len(report["sweep"]) == 1 + 6 * 2 * 3
    assert report["sweep"][0]["rule"] == {"min_seen": 1, "window": 1, "hold": 0}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_video_measures_the_models_own_alert_rule_unless_told_otherwise(tmp_path: Path) -> None:
    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "m.onnx", metadata={"polypstream.alert_rule": "3,3,1"})
    clip = write_clip(tmp_path / "clip.avi", frames=6, fps=10.0)
    (tmp_path / "clip.boxes.json").write_text(json.dumps({"fps": 10, "frames": [[[8, 24, 32, 24]]] * 6}))
    own = polypstream("eval-video", str(clip), "--model", str(model), "--json")
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout.splitlines()[-1])["rule"] == {"min_seen": 3, "window": 3, "hold": 1}
    told = polypstream("eval-video", str(clip), "--model", str(model), "--alert-hold", "0")
    assert told.returncode == 0, told.stderr
    assert ", alerts 3 of 3 frames, held 0, at 25 fps: 6 frames" in told.stdout
    clash = polypstream("eval-video", str(clip), "--model", str(model), "--alert-window", "2")
    assert clash.returncode == 2 and clash.stderr.strip().splitlines()[-1] == (
        "polypstream eval-video: error: alert rule: need 1 <= min_seen (3) <= window (2) <= 64; "
        "the parts not set are the model's, 3 of 3 frames, held 1"
    )


def test_eval_video_interrupted_reports_the_videos_done_so_far(tmp_path: Path, tiny_model: Path) -> None:
    # Ctrl-C during a long evaluation (a sweep of a corpus takes a quarter of an hour on a CPU)
    # printed one line and lost every video done: now their report, marked, and exit 130.
    clip = write_clip(tmp_path / "clip.avi", frames=12, fps=10.0)
    (tmp_path / "clip.boxes.json").write_text(
        json.dumps({"fps": 10, "frames": [[[8 + 2 * i, 24, 32, 24]] for i in range(12)]})
    )
    proc = spawn("eval-video", *[str(clip)] * 400, "--model", str(tiny_model), "--json", "--sweep")
    first_progress_line(proc, "frames")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] is True and "chosen_rule" not in report
    assert 1 <= report["videos"] < 400 and report["frames"] == 12 * report["videos"]
    assert f"interrupted: the report covers the {report['videos']} videos done so far" in err


def test_eval_video_refuses_bad_ground_truth_with_one_line(tmp_path: Path, tiny_model: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", frames=12, fps=10.0)
    (tmp_path / "clip.boxes.json").write_text(json.dumps({"frames": [[[8, 24, 32, 24]]] * 11}))
    done = polypstream("eval-video", str(clip), "--model", str(tiny_model), "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == (
        f"polypstream eval-video: error: {tmp_path / 'clip.boxes.json'}: has 11 frames of boxes; clip.avi has more"
    )


def test_serve_says_the_alert_rule_in_force_the_models_own_with_a_part_replaced(tmp_path: Path) -> None:
    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "m.onnx", metadata={"polypstream.alert_rule": "3,3,1"})
    proc, at = start_serve("--model", str(model), "--alert-hold", "0")
    proc.terminate()
    proc.communicate(timeout=60)
    assert at["line"].endswith(" on CPUExecutionProvider; alerts 3 of 3 frames, held 0, at 25 fps)")
    clash = polypstream(
        "serve", "--model", str(model), "--address", "127.0.0.1:0", "--metrics-address", "", "--alert-window", "2"
    )
    assert clash.returncode == 2 and clash.stderr.strip().splitlines()[-1] == (
        "polypstream serve: error: alert rule: need 1 <= min_seen (3) <= window (2) <= 64; "
        "the parts not set are the model's, 3 of 3 frames, held 1"
    )


def test_serve_with_workers_spreads_connections_over_processes_and_stops_them_all(tiny_model: Path) -> None:
    # Given two workers on one port, each with its own metrics port
    proc, at = start_serve("--model", str(tiny_model), "--workers", "2", "--grace", "5")
    SPAWNED.append(proc)
    urls = at["all_metrics"].split()
    assert len(urls) == 2 and urls[0] != urls[1]
    # When 16 clients (a connection each) send 5 no-drop frames each
    encoded = [cv2.imencode(".jpg", cv2.imread(str(next((KVASIR_FIXTURES / "images").iterdir()))))[1].tobytes()]
    report = run_streams(at["grpc"], encoded, 16, None, 5)
    # Then every frame is answered, and both workers answered some (16 connections all hashed to
    # one of two workers: once in 32,768)
    assert report["statuses"] == {"OK": 80} and report["lost"] == 0
    per_worker = [scrape(url).get('polypstream_frames_total{source="grpc",status="OK"}', 0.0) for url in urls]
    assert sum(per_worker) == 80 and min(per_worker) > 0
    # When the parent is interrupted, then every worker stops, and the parent says what they answered
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip().splitlines()[-1] == "polypstream stopped: 80 frames answered (2 workers)"


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        (["--workers", "2", "--source", "scope=clip.mp4"], "--workers: a --source is read by one process"),
        (["--workers", "2", "--ui"], "--workers: the live view (--ui) shows one process's streams"),
        (["--workers", "2", "--address", "unix:/tmp/w.sock"], "--workers: unix:/tmp/w.sock: workers share a TCP port"),
        (["--workers", "0"], "--workers must be at least 1, got 0"),
    ],
)
def test_serve_refuses_what_workers_cannot_share_with_one_line(tiny_model: Path, flags: list[str], why: str) -> None:
    done = polypstream("serve", "--model", str(tiny_model), "--address", "127.0.0.1:0", "--metrics-address", "", *flags)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"polypstream serve: error: {why}")


@pytest.mark.skipif(cuda_available() or sys.platform != "linux", reason="needs an onnxruntime without CUDA, and /proc")
def test_a_worker_that_cannot_start_is_said_once_and_none_is_left_running(tiny_model: Path) -> None:
    marker = "7.125"  # a --grace no other test uses: the workers' command lines carry it
    done = polypstream("serve", "--model", str(tiny_model), "--device", "cuda", "--workers", "2",
                       "--address", "127.0.0.1:0", "--metrics-address", "", "--grace", marker)  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()  # one line, not one per worker
    no_cuda = "CUDAExecutionProvider requested but this onnxruntime build has no CUDA"
    assert line == f"polypstream serve: error: worker 0: {no_cuda}"
    assert processes_with(marker) == []  # and no worker is left running


def processes_with(argument: str) -> list[str]:
    """The command lines of running processes that have `argument` (Linux: /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if argument.encode() in args:
            found.append(b" ".join(args).decode(errors="replace"))
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal and /proc are Linux's")
def test_workers_end_with_their_parent_however_it_ends(tiny_model: Path) -> None:
    marker = "7.375"  # a --grace no other test uses: the workers' command lines carry it
    proc, _ = start_serve("--model", str(tiny_model), "--workers", "2", "--grace", marker)
    SPAWNED.append(proc)
    assert len(processes_with(marker)) == 3  # the parent and its two workers
    proc.kill()  # SIGKILL: the parent can pass nothing on
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == []
