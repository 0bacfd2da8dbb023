"""Benchmarks run short in CI: the soak (long: `python -m benchmarks.soak --minutes 10`), compare and the sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_soak_loses_nothing(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "soak.json"
    command = ["--model", str(tiny_model), "--seconds", "6", "--streams", "3", "--fps", "15", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", *command], capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["model"] == "tiny-brightness test"  # the served model, as the server names it
    assert report["lost"] == 0 and report["errors"] == []
    assert sum(report["answered"].values()) + report["abandoned"] == report["frames_sent"] > 100
    assert report["answered"]["OK"] > 0 and report["answered"]["INVALID_FRAME"] > 0  # bad frames were in the mix
    assert report["rss_mb"]["start"] > 0 and report["latency_over_time"]
    answered = report["answered"]  # every live answer with a server time is in the account by stage
    accounted = sum(group["frames"] for group in report["live_mean_stage_ms"].values())
    assert accounted == answered["OK"] + answered.get("DROPPED_LATE", 0)


def test_compare_prints_limit_naive_and_ours_with_ratios(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "compare.json"
    command = ["--model", str(tiny_model), "--videos", "2", "--seconds", "0.3", "--batches", "1,2"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", *command, "--limit-seconds", "0.3", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["ours"]["accounting"]["all_accounted"] is True and report["ours"]["videos"] == 2
    assert report["ratios"]["ours_over_limit"] > 0 and report["ratios"]["ours_over_naive"] > 0
    assert "ours/limit" in done.stdout


def test_sweep_reports_every_k_the_limit_the_naive_loop_and_what_holds(tmp_path: Path, tiny_model: Path) -> None:
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    command = ["--model", str(tiny_model), "--size", "96x80", "--streams", "1,2", "--seconds", "1", "--fps", "10",
               "--saturate", "2", "--client-processes", "2"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.sweep", *command, "--batches", "1,2", "--limit-seconds", "0.2",
         "--out", str(out), "--plot", str(plot)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert [row["streams"] for row in report["service"]] == [1, 2]
    for row in report["service"]:
        assert row["lost"] == 0 and sum(row["statuses"].values()) == row["frames_sent"] == row["streams"] * 10
        assert set(row["server_cpu_cores"]) == {"total", "threads"}  # the server's CPU, by thread group
        assert set(row["server_cpu_ms_per_frame"]) == {"total", "threads"}  # and per frame answered
        assert row["gil_wait"]["samples"] > 0  # the server's GIL probe was read, before and after
        assert sum(size["frames"] for size in row["by_batch_size"].values()) == row["statuses"].get("OK", 0)
        drops = row["late_drops"]
        assert drops["missed_deadline"] + drops["would_miss"] == row["statuses"].get("DROPPED_LATE", 0)
    assert report["limit_fps"] > 0 and report["naive"]["fps"] > 0
    # The ratios are what the reported numbers give, to three significant digits: a tiny model's
    # limit is tens of thousands of frames/s, so the ratio is small, and must not read as 0.
    best = max(row["throughput_fps"] for row in report["service"])
    assert best > 0
    assert report["ratios"]["best_served_over_limit"] == float(f"{best / report['limit_fps']:.3g}") > 0
    assert report["ratios"]["best_served_over_naive"] == float(f"{best / report['naive']['fps']:.3g}")
    assert report["largest_k_that_holds"] in (0, 1, 2)  # what holds on a shared CI machine is not asserted
    assert plot.stat().st_size > 0 and "largest K that holds" in done.stdout
    # saturated: two no-drop streams sent flat out for the same second, every frame answered
    saturated = report["saturation"]
    assert saturated["streams"] == 2 and saturated["fps_per_stream"] is None
    assert saturated["lost"] == 0 and saturated["errors"] == []
    assert saturated["statuses"] == {"OK": saturated["frames_sent"]} and saturated["frames_sent"] > 0
    assert saturated["gpu"] is None and saturated["gil_wait"]["samples"] > 0  # no GPU here
    assert saturated["client_cpu_cores"] > 0  # the clients' own CPU, to tell a client-bound run
    assert saturated["client_processes"] == 2  # one stream in each (spawned: gRPC does not survive a fork)
    assert all(row["client_processes"] == 1 for row in report["service"])
    served = saturated["throughput_fps"]
    assert report["ratios"]["saturated_over_limit"] == float(f"{served / report['limit_fps']:.3g}") > 0
    assert report["ratios"]["saturated_over_naive"] == float(f"{served / report['naive']['fps']:.3g}")
    assert "saturated by 2 no-drop streams" in done.stdout


def test_the_gpu_first_light_command_rehearsed_on_the_cpu_writes_every_result(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "first-light"
    command = ["--out", str(out), "--device", "cpu", "--models", str(tiny_model), "--streams", "1", "--size", "96x80",
               "--batches", "1,2", "--limit-seconds", "0.2", "--budget-s", "30", "--alone-streams", "1,2",
               "--alone-input", "32", "--switch-streams", "1", "--workers", "2", "--workers-streams", "1",
               "--saturate", "2"]  # fmt: skip
    # Without `cryptography`, as on the GPU machine: there the first run's `pytest -m gpu` could
    # not even load tests/conftest.py, which imported the TLS tests' certificate maker.
    without = tmp_path / "without"
    (without / "cryptography").mkdir(parents=True)
    (without / "cryptography" / "__init__.py").write_text("raise ModuleNotFoundError('no cryptography here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(without), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_first_light", *command],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    pytest_log = (out / "first-light.log").read_text().split("benchmarks.sweep")[0]
    assert " skipped" in pytest_log and "error" not in pytest_log.lower()  # collected, skipped for want of CUDA
    assert sorted(p.name for p in out.iterdir()) == [
        "first-light.log", "summary.json", "sweep-service-alone.json", "sweep-tiny.json", "sweep-tiny.png",
    ]  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == [] and summary["device"] == "cpu"
    assert set(summary["nvml"]) in ({"ok", "why"}, {"ok", "reading"})  # tried first; on a CPU no failure either way
    tiny = summary["models"]["tiny"]
    assert tiny["provider"] == "CPUExecutionProvider" and tiny["model"] == "tiny-brightness test"
    assert set(tiny) >= {"largest_k_that_holds", "limit_fps", "naive_fps", "ratios", "one_stream_server_p99_ms"}
    saturation = tiny["saturation"]  # the model's capacity, two no-drop streams flat out
    assert saturation["streams"] == 2 and saturation["lost"] == 0 and set(saturation["statuses"]) == {"OK"}
    assert saturation["over_limit"] == tiny["ratios"]["saturated_over_limit"] > 0 and saturation["gpu_busy"] is None
    assert saturation["client_cpu_cores"] > 0
    assert tiny["gpu_busy_by_k"] == {"1": None}
    assert "CPUExecutionProvider" in summary["environment"]["providers"]
    # what a frame costs the decode pool, per model, on one core
    stage = summary["decode_stage"]["tiny"]
    assert stage["decoded_to"] == "96x80" and stage["input"] == "64x64"  # too small to decode at a reduced scale
    assert stage["decode_ms"] > 0 and stage["preprocess_ms"] > 0 and stage["regions_ms"] > 0
    assert stage["regions_batch_32_ms"]["threads"] == 1  # 64² maps: found on the batcher's thread alone
    # Python's own switch interval beside serve's, the same model at the same K
    switch = summary["switch_interval"]
    assert (switch["model"], switch["streams"]) == ("tiny", 1)
    assert switch["python_5ms"]["statuses"] and switch["serve_0.5ms"]["statuses"]
    assert switch["python_5ms"]["gil_wait"]["samples"] > 0
    assert "--gil-switch-ms 5" in (out / "first-light.log").read_text()  # that server was started so
    # two server processes beside one, the same model at the same K; both of them measured
    (workers,) = summary["workers"]["per_k"]
    assert (summary["workers"]["model"], summary["workers"]["workers"], workers["streams"]) == ("tiny", 2, 1)
    assert workers["workers"]["statuses"] and workers["one_process"]["statuses"]
    assert workers["workers"]["gil_wait"]["samples"] > 0 and workers["one_process"]["gil_wait"]["samples"] > 0
    assert "--workers 2" in (out / "first-light.log").read_text()
    # the service alone: the costless model at the input size asked for, at each K asked for
    alone = summary["service_alone"]
    assert alone["input"] == "32x32" and [row["streams"] for row in alone["per_k"]] == [1, 2]
    for row in alone["per_k"]:
        assert row["gil_wait_ms"] is not None and row["cores"] and row["cpu_ms_per_frame"] > 0
