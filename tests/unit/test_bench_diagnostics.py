"""The sweep's diagnostics: where the server's CPU time goes, thread group by thread group
(server_cpu_cores); how long its threads waited to run Python (gil_wait); why frames were
dropped late; inference time by batch size."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import (
    command_line,
    cores_by_thread,
    cpu_ms_per_frame,
    gil_wait,
    gpu_use,
    process_tree,
    scrape,
    thread_cpu_seconds,
    thread_group,
)
from benchmarks.service_latency import by_batch_size, late_drops
from polypstream._proto.polypstream.v1 import segmenter_pb2 as pb
from polypstream.client import Answer
from polypstream.frames import Polyp
from polypstream.postprocess import locate_polyps
from polypstream.runner import Runner
from polypstream.threads import set_os_thread_name
from tests.tiny_model import build_steady_polyp_model


def test_a_pool_s_threads_count_as_one_group_and_the_main_thread_as_main() -> None:
    assert thread_group("decode_3") == "decode"
    assert thread_group("render-12") == "render"
    assert thread_group("batcher") == "batcher"
    assert thread_group("grpc_global_tim") == "grpc_global_tim"  # gRPC's own threads keep their names
    assert thread_group("python3", is_main=True) == "main"


def test_cores_are_cpu_seconds_over_the_wall_time_busiest_first() -> None:
    before = {"decode": 1.0, "grpc": 2.0}
    after = {"decode": 4.0, "grpc": 2.5, "batcher": 1.0}  # a thread group that started meanwhile
    expected = {"total": 2.25, "threads": {"decode": 1.5, "batcher": 0.5, "grpc": 0.25}}
    assert cores_by_thread(before, after, 2.0) == expected
    # an idle group is left out
    assert cores_by_thread({"a": 1.0}, {"a": 1.0, "b": 3.0}, 1.0) == {"total": 3.0, "threads": {"b": 3.0}}


def test_cpu_per_frame_is_cpu_milliseconds_over_the_frames_answered_busiest_first() -> None:
    before = {"decode": 1.0, "main": 2.0}
    after = {"decode": 1.5, "main": 2.25, "batcher": 0.5, "idle": 0.0}  # 0.5, 0.25 and 0.5 s over 250 frames
    expected = {"total": 5.0, "threads": {"decode": 2.0, "batcher": 2.0, "main": 1.0}}
    assert cpu_ms_per_frame(before, after, 250) == expected
    assert cpu_ms_per_frame({}, {"main": 0.5}, 0) == {"total": 500.0, "threads": {"main": 500.0}}  # none answered


def test_the_gil_wait_between_two_scrapes_is_worked_out_of_the_histogram_s_differences() -> None:
    name = "polypstream_gil_wait_seconds"
    before = {f"{name}_count": 100.0, f"{name}_sum": 0.5, f'{name}_bucket{{le="0.001"}}': 90.0,
              f'{name}_bucket{{le="0.005"}}': 100.0}  # fmt: skip
    # 200 samples more, 1.2 s in all: 150 within 1 ms, 190 within 5 ms
    after = {f"{name}_count": 300.0, f"{name}_sum": 1.7, f'{name}_bucket{{le="0.001"}}': 240.0,
             f'{name}_bucket{{le="0.005"}}': 290.0}  # fmt: skip
    assert gil_wait(before, after) == {"samples": 200, "mean_ms": 6.0, "over_1ms": 0.25, "over_5ms": 0.05}
    # a server without the metric (or no sample in between): nothing to say, not zeros
    assert gil_wait({}, {}) == {"samples": 0, "mean_ms": None, "over_1ms": None, "over_5ms": None}


def test_the_gpu_s_busy_share_is_its_busy_seconds_over_the_time_between_scrapes() -> None:
    busy, memory = "polypstream_gpu_busy_seconds_total", "polypstream_gpu_memory_used_bytes"
    before = {busy: 12.5, memory: 2.0 * 2**30}
    after = {busy: 15.5, memory: 3.5 * 2**30}  # 3 s busy in 4 s
    assert gpu_use(before, after, 4.0) == {"busy": 0.75, "memory_used_mib": 3584.0}
    assert gpu_use({}, {}, 4.0) is None  # a server on a CPU: nothing, not zeros


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_named_thread_s_cpu_time_is_found_under_its_group() -> None:
    stop = threading.Event()

    def burn() -> None:
        set_os_thread_name("burner_7")
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=burn)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while thread_cpu_seconds(os.getpid()).get("burner", 0.0) <= 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = thread_cpu_seconds(os.getpid())
    finally:
        stop.set()
        thread.join()
    assert seen["burner"] > 0 and "main" in seen
    assert thread_cpu_seconds(-1) == {}  # no such process


def answer(status: int, error: str = "", batch: int = 0, inference_ms: float = 0.0) -> Answer:
    timing = pb.Timing(batch_size=batch, inference_ms=inference_ms)
    return Answer(pb.FrameResult(status=status, error=error, timing=timing), 0.0)


def test_late_drops_tell_a_passed_deadline_from_a_drop_on_the_estimate() -> None:
    # The batcher's two messages (Batcher._why_late), and an OK frame that is not counted.
    late = pb.FRAME_STATUS_DROPPED_LATE
    answers = [
        answer(late, "missed its deadline by 3.5 ms before inference"),
        answer(late, "would miss its deadline: due in 4.0 ms, a batch of one may take 121.5 ms"),
        answer(late, "would miss its deadline: due in 30.2 ms, a batch of one may take 40.5 ms"),
        answer(pb.FRAME_STATUS_OK),
    ]
    drops = late_drops(answers)
    assert (drops["missed_deadline"], drops["would_miss"]) == (1, 2)
    assert drops["batch_of_one_estimate_ms"]["max"] == 121.5  # type: ignore[index]
    none = {"p50": None, "p90": None, "p99": None, "max": None}
    nothing = {"missed_deadline": 0, "would_miss": 0, "batch_of_one_estimate_ms": none}
    assert late_drops([answer(pb.FRAME_STATUS_OK)]) == nothing


def test_frames_are_counted_by_the_size_of_the_batch_that_served_them() -> None:
    ok = pb.FRAME_STATUS_OK
    served = [answer(ok, batch=1, inference_ms=2.0), answer(ok, batch=2, inference_ms=3.0)]
    served.append(answer(ok, batch=2, inference_ms=5.0))
    table = by_batch_size(served)
    assert list(table) == ["1", "2"]
    assert table["1"]["frames"] == 1 and table["2"]["frames"] == 2
    assert table["2"]["inference_ms"]["max"] == 5.0  # type: ignore[index]


def test_the_service_alone_s_model_finds_the_same_one_polyp_in_any_frame(tmp_path: Path) -> None:
    model = build_steady_polyp_model(tmp_path / "steady.onnx", size=64)
    runner = Runner(model, device="cpu", max_batch=2)
    black, noise = np.zeros((48, 80, 3), np.uint8), np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    probs = runner.run([runner.preprocess(black), runner.preprocess(noise)])
    # A disc of radius 8 about (32, 32): pixel centres within 8 of it, so columns and rows 24..39;
    # per quarter, rows of 8, 8, 8, 7, 7, 6, 5 and 3 pixels: 52, 208 in all; each at sigmoid(10)
    inside = pytest.approx(1 / (1 + math.exp(-10)), rel=1e-6)
    for prob in probs:
        assert locate_polyps(prob, 64, 64, runner.contract.threshold) == [Polyp((24, 24, 16, 16), inside, 208)]


def test_several_metrics_pages_are_summed_sample_by_sample() -> None:
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    urls = []
    for served in (3, 4):
        registry = CollectorRegistry()
        Counter("polypstream_frames", "frames", ["status"], registry=registry).labels("OK").inc(served)
        server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
        urls.append(f"http://127.0.0.1:{server.server_port}/metrics")
    assert scrape(urls[0])['polypstream_frames_total{status="OK"}'] == 3.0
    assert scrape(" ".join(urls))['polypstream_frames_total{status="OK"}'] == 7.0


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_process_tree_holds_its_children_s_children() -> None:
    spawner = (
        "import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
        "print(c.pid, flush=True); c.wait()"
    )
    child = subprocess.Popen([sys.executable, "-c", spawner], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        assert process_tree(child.pid) == [child.pid, grandchild]
    finally:
        os.kill(grandchild, 15)
        child.wait(10)
        child.stdout.close()  # type: ignore[union-attr]


def test_first_light_tries_the_gpu_reader_in_a_process_of_its_own() -> None:
    # a crash there must cost the run its GPU metrics only, not every `serve` it starts
    from benchmarks.gpu_first_light import read_gpu_once

    assert read_gpu_once("print('NVIDIA H100 80GB HBM3 | reading')") == {
        "ok": True, "reading": "NVIDIA H100 80GB HBM3 | reading"
    }  # fmt: skip
    assert read_gpu_once("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)") == {
        "ok": False, "why": "killed by signal 11"
    }  # fmt: skip
    refused = read_gpu_once("from polypstream.gpu import open_gpu; open_gpu(load=lambda name: 1 / 0)")
    assert refused == {"ok": False, "why": "ZeroDivisionError: division by zero"}
    assert read_gpu_once("import sys; sys.exit(3)") == {"ok": False, "why": "exit status 3"}


def test_the_recorded_command_repeats_a_flag_given_more_than_once_and_leaves_out_unset_ones() -> None:
    import argparse

    args = argparse.Namespace(model="fast", corpus=["/c25", "/c50"], serve_arg=["--memory-limit-mb=512"], out=None)
    assert command_line("benchmarks.alert_rates", args) == (
        "python -m benchmarks.alert_rates --model fast --corpus=/c25 --corpus=/c50 --serve-arg=--memory-limit-mb=512"
    )
