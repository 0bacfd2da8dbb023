"""The GPU's metrics: which GPU is read, what NVML's answers become, the probe's bookkeeping.

NVML itself (the NVIDIA driver's libnvidia-ml.so.1) is only on a GPU machine: there the `gpu`
test reads it for real; here a stand-in with NVML's functions answers as the library does."""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from polypstream import cli, workers
from polypstream import gpu as gpu_module
from polypstream.cli import build_pipeline
from polypstream.config import EngineConfig
from polypstream.gpu import GpuError, GpuProbe, GpuReading, Nvml, cuda_device_zero, open_gpu
from polypstream.metrics import Metrics

GIB = 1 << 30


NVML_FUNCTIONS = {  # NVML's function: the FakeNvml method that answers it
    "nvmlInit_v2": "init", "nvmlShutdown": "shutdown", "nvmlDeviceGetCount_v2": "count",
    "nvmlDeviceGetHandleByIndex_v2": "by_index", "nvmlDeviceGetHandleByUUID": "by_uuid",
    "nvmlDeviceGetName": "name", "nvmlDeviceGetUUID": "uuid", "nvmlDeviceGetMemoryInfo": "memory",
    "nvmlDeviceGetUtilizationRates": "utilization",
}  # fmt: skip


class FakeNvml:
    """NVML's functions as the library answers them, for GPUs given as (name, uuid, used, total, busy %).
    `fail`: the code a function returns instead (by the method's name here)."""

    def __init__(
        self, gpus: list[tuple[str, str, int, int, int | None]], fail: dict[str, int] | None = None, counted: int = -1
    ) -> None:
        """`counted`: how many of `gpus` NVML counts and numbers (the rest, MIG slices, only by UUID)."""
        self.gpus, self.fail = gpus, fail or {}
        self.counted = len(gpus) if counted < 0 else counted
        self.initialised = 0  # NVML counts its starts: each needs its shutdown
        for function, method in NVML_FUNCTIONS.items():  # plain functions: ctypes sets their restype
            setattr(self, function, self._answering(method))
        messages = {999: b"Unknown Error", 9: b"Driver Not Loaded"}
        self.nvmlErrorString = lambda code: messages.get(code)

    def _answering(self, method: str) -> Callable[..., int]:
        def function(*args: Any) -> int:
            return self.fail.get(method) or int(getattr(self, method)(*args))

        return function

    def _gpu(self, handle: ctypes.c_void_p) -> tuple[str, str, int, int, int | None]:
        return self.gpus[(handle.value or 0) - 100]

    def init(self) -> int:
        self.initialised += 1
        return 0

    def shutdown(self) -> int:
        self.initialised -= 1
        return 0

    def count(self, out: Any) -> int:
        out._obj.value = self.counted
        return 0

    def by_index(self, index: ctypes.c_uint, handle: Any) -> int:
        if index.value >= self.counted:
            return 2  # NVML_ERROR_INVALID_ARGUMENT
        handle._obj.value = 100 + index.value
        return 0

    def by_uuid(self, uuid: bytes, handle: Any) -> int:
        for index, gpu in enumerate(self.gpus):
            if gpu[1].encode() == uuid:
                handle._obj.value = 100 + index
                return 0
        return 6  # NVML_ERROR_NOT_FOUND

    def _text(self, field: int, handle: ctypes.c_void_p, buffer: Any, length: ctypes.c_uint) -> int:
        buffer.value = str(self._gpu(handle)[field]).encode()[: length.value - 1]
        return 0

    def name(self, *args: Any) -> int:
        return self._text(0, *args)

    def uuid(self, *args: Any) -> int:
        return self._text(1, *args)

    def memory(self, handle: ctypes.c_void_p, out: Any) -> int:
        _, _, used, total, _ = self._gpu(handle)
        out._obj.total, out._obj.free, out._obj.used = total, total - used, used
        return 0

    def utilization(self, handle: ctypes.c_void_p, out: Any) -> int:
        busy = self._gpu(handle)[4]
        if busy is None:
            return 3  # NVML_ERROR_NOT_SUPPORTED
        out._obj.gpu, out._obj.memory = busy, 7
        return 0


H100 = ("NVIDIA H100 80GB HBM3", "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6", 3 * GIB, 80 * GIB, 42)
L4 = ("NVIDIA L4", "GPU-1c7e0a55-0d3e-4f6b-9d52-5b1d7c0e2a11", 1 * GIB, 24 * GIB, 5)


def opened(fake: FakeNvml, environ: dict[str, str]) -> Nvml:
    return open_gpu(environ, load=lambda name: fake)  # type: ignore[arg-type, return-value]


def test_the_gpu_read_is_the_one_cuda_calls_device_zero() -> None:
    assert cuda_device_zero({}) == "0"
    assert cuda_device_zero({"CUDA_VISIBLE_DEVICES": "2,3"}) == "2"
    assert cuda_device_zero({"CUDA_VISIBLE_DEVICES": " GPU-1c7e,GPU-8932"}) == "GPU-1c7e"
    for hidden in ("", "-1"):
        with pytest.raises(GpuError, match="shows CUDA no GPU"):
            cuda_device_zero({"CUDA_VISIBLE_DEVICES": hidden})


def test_a_reading_is_the_device_s_memory_and_the_share_of_time_busy() -> None:
    fake = FakeNvml([H100, L4])
    gpu = opened(fake, {})
    assert (gpu.name, gpu.uuid) == (H100[0], H100[1])
    assert gpu.read() == GpuReading(busy=0.42, memory_used=3 * GIB, memory_total=80 * GIB)
    # by index through CUDA_VISIBLE_DEVICES, by whole UUID, by a UUID's start (as CUDA takes it)
    for visible in ("1", L4[1], "GPU-1c7e"):
        assert opened(FakeNvml([H100, L4]), {"CUDA_VISIBLE_DEVICES": visible}).read() == GpuReading(
            0.05, 1 * GIB, 24 * GIB
        )


def test_a_gpu_without_its_own_utilization_reports_memory_alone() -> None:
    mig = ("NVIDIA H100 MIG 1g.10gb", "MIG-0a1b", 2 * GIB, 10 * GIB, None)
    assert opened(FakeNvml([mig]), {}).read() == GpuReading(None, 2 * GIB, 10 * GIB)
    # a MIG slice is found by its whole UUID alone: NVML does not count it among the GPUs
    fake = FakeNvml([H100, mig], counted=1)
    assert opened(fake, {"CUDA_VISIBLE_DEVICES": "MIG-0a1b"}).read() == GpuReading(None, 2 * GIB, 10 * GIB)
    # any other failure to read utilization is an error, not a missing reading
    broken = opened(FakeNvml([H100], fail={"utilization": 999}), {})
    with pytest.raises(GpuError, match="NVML failed reading utilization: Unknown Error"):
        broken.read()


def test_a_gpu_that_cannot_be_read_is_one_line_and_nvml_is_shut_down_again() -> None:
    with pytest.raises(GpuError, match=r"libnvidia-ml\.so\.1\) cannot be loaded: no such file"):
        open_gpu({}, load=lambda name: (_ for _ in ()).throw(OSError("no such file")))
    with pytest.raises(GpuError, match="NVML failed starting NVML: Driver Not Loaded"):
        opened(FakeNvml([H100], fail={"init": 9}), {})
    for visible, message in (("3", "finding GPU 3"), ("GPU-ffff", "no GPU GPU-ffff among the 2 NVML sees")):
        fake = FakeNvml([H100, L4])
        with pytest.raises(GpuError, match=message):
            opened(fake, {"CUDA_VISIBLE_DEVICES": visible})
        assert fake.initialised == 0  # started, then shut down: nothing left open
    broken = opened(FakeNvml([H100], fail={"memory": 999}), {})
    with pytest.raises(GpuError, match="NVML failed reading memory: Unknown Error"):
        broken.read()


def test_without_an_nvidia_driver_open_gpu_says_so() -> None:
    try:
        ctypes.CDLL(gpu_module.LIBRARY)
    except OSError:
        pass
    else:
        pytest.skip("this machine has NVML")
    with pytest.raises(GpuError, match="cannot be loaded"):
        open_gpu({})


def test_the_probe_records_each_reading_with_the_seconds_since_the_one_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    readings: list[GpuReading | GpuError] = [
        GpuError("GPU fell off the bus"),
        GpuReading(0.5, 1, 8),
        GpuError("lost 1"),
        GpuError("lost 2"),
        GpuError("lost 3"),
        GpuReading(1.0, 2, 8),
    ]
    times = iter([10.0, 10.5, 11.0, 11.5, 12.0, 12.5, 13.25])  # start, then a clock reading per outcome
    waits = iter([False] * len(readings) + [True])
    recorded: list[tuple[GpuReading, float]] = []

    def read() -> GpuReading:
        outcome = readings.pop(0)
        if isinstance(outcome, GpuError):
            raise outcome
        return outcome

    probe = GpuProbe(read, lambda r, s: recorded.append((r, s)), wait=lambda s: next(waits), clock=lambda: next(times))
    assert GpuProbe(read, lambda r, s: None).interval_s == 0.5  # "read every 0.5 s", as the metric's help says
    with caplog.at_level(logging.WARNING, "polypstream.gpu"):
        probe.start()
        probe.stop()
    # the seconds while it failed are not counted: after a failure, from that failure
    assert recorded == [(GpuReading(0.5, 1, 8), 0.5), (GpuReading(1.0, 2, 8), 0.75)]
    # a run of failures is logged once, at its first; a reading in between starts a new run
    said = "reading the GPU failed ({}); its metrics stand still until it reads again"
    assert [r.getMessage() for r in caplog.records] == [said.format("GPU fell off the bus"), said.format("lost 1")]


def samples(registry: CollectorRegistry) -> dict[str, float]:
    return {
        f"{s.name}{sorted(s.labels.items()) if s.labels else ''}": s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name.startswith("polypstream_gpu")
    }


def test_gpu_metrics_add_up_busy_seconds_and_show_the_memory() -> None:
    registry = CollectorRegistry()
    gpu = Metrics(registry, process=False).track_gpu(H100[0], H100[1])
    gpu.record(GpuReading(0.25, 3 * GIB, 80 * GIB), 2.0)
    gpu.record(GpuReading(None, 4 * GIB, 80 * GIB), 1.0)  # no utilization: the memory still counts
    gpu.record(GpuReading(1.0, 5 * GIB, 80 * GIB), 0.5)
    got = samples(registry)
    assert got["polypstream_gpu_busy_seconds_total"] == 1.0
    assert got["polypstream_gpu_memory_used_bytes"] == 5 * GIB
    assert got["polypstream_gpu_memory_total_bytes"] == 80 * GIB
    assert got[f"polypstream_gpu_info{sorted({'name': H100[0], 'uuid': H100[1]}.items())}"] == 1.0
    # the newest reading, as the live view shows it
    assert gpu.state() == {"name": H100[0], "busy": 1.0, "memory_used_gib": 5.0, "memory_total_gib": 80.0}
    gpu.record(GpuReading(None, 2 * GIB, 10 * GIB), 0.5)  # a MIG slice
    assert gpu.state() == {"name": H100[0], "busy": None, "memory_used_gib": 2.0, "memory_total_gib": 10.0}
    assert Metrics(CollectorRegistry(), process=False).track_gpu("x", "y").state() is None  # before any reading


def test_a_server_on_a_cpu_has_no_gpu_metrics(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "open_gpu", lambda: opened(FakeNvml([H100]), {}))  # a GPU the model does not run on
    registry = CollectorRegistry()
    pipeline = build_pipeline(EngineConfig(model=str(tiny_model), device="cpu"), registry, read_gpu=True)
    assert pipeline.gpu is None and pipeline.gpu_probe is None and pipeline.gpu_state() is None
    assert samples(registry) == {}


def test_the_model_is_described_with_the_gpus_name_where_it_is_read(tiny_model: Path) -> None:
    # serve's first line and its log: on a GPU, which one ("on CUDAExecutionProvider" alone does
    # not say whether the H100 or the H200 ran it).
    from polypstream.runner import Runner

    runner = Runner(tiny_model, device="cpu", max_batch=2)
    words = f"{runner.contract.name} {runner.contract.version} on CPUExecutionProvider"
    assert cli.model_words(runner, None) == words
    gpu = opened(FakeNvml([H100]), {})
    try:
        assert cli.model_words(runner, gpu) == f"{words} ({H100[0]})"
    finally:
        gpu.close()


def test_a_pipeline_reads_its_gpu_while_it_runs_and_lets_it_go_when_it_stops(tiny_model: Path) -> None:
    from polypstream.pipeline import Pipeline
    from polypstream.runner import Runner

    fake = FakeNvml([H100])
    registry = CollectorRegistry()
    pipeline = Pipeline(
        Runner(tiny_model, device="cpu", max_batch=2), EngineConfig(), Metrics(registry), gpu=opened(fake, {})
    )
    assert pipeline.gpu_probe is not None
    pipeline.gpu_probe.interval_s = 0.01
    pipeline.start()
    try:
        deadline = time.monotonic() + 30
        while samples(registry).get("polypstream_gpu_memory_total_bytes", 0) != 80 * GIB:
            assert time.monotonic() < deadline, "the GPU was not read"
            time.sleep(0.01)
        assert pipeline.gpu_state() == {"name": H100[0], "busy": 0.42, "memory_used_gib": 3.0, "memory_total_gib": 80.0}
    finally:
        pipeline.stop()
    assert fake.initialised == 0
    assert not pipeline.gpu_probe.running()


def test_one_worker_of_several_reports_the_gpu_and_none_when_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    assert workers.reports_gpu()  # a lone server
    monkeypatch.setenv(workers.SHARED_PORT_ENV, "1")
    for index, reports in (("0", True), ("1", False), ("3", False)):
        monkeypatch.setenv(workers.INDEX_ENV, index)
        assert workers.worker_index() == int(index)
        assert workers.reports_gpu() is reports
    monkeypatch.setenv(workers.INDEX_ENV, "0")
    monkeypatch.setenv(workers.GPU_METRICS_ENV, "0")  # off, for every process
    assert not workers.reports_gpu()


@pytest.mark.gpu
def test_the_gpu_the_model_runs_on_is_read_through_nvml(tiny_model: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA in this onnxruntime")
    registry = CollectorRegistry()
    pipeline = build_pipeline(EngineConfig(model=str(tiny_model), device="cuda"), registry, read_gpu=True)
    assert pipeline.gpu is not None, "NVML could not be read on a CUDA machine"
    reading = pipeline.gpu.read()
    assert pipeline.gpu.name.startswith("NVIDIA")
    assert 0 < reading.memory_used < reading.memory_total
    assert reading.busy is not None and 0.0 <= reading.busy <= 1.0
    pipeline.start()
    try:
        time.sleep(1.2)  # two readings at 0.5 s
    finally:
        pipeline.stop()
    assert samples(registry)["polypstream_gpu_memory_total_bytes"] == reading.memory_total
