"""The GPU the model runs on, as the NVIDIA driver's management library (NVML,
libnvidia-ml.so.1) reports it: the share of time a kernel ran, and its memory.

Read through ctypes: nothing to install, since the driver brings the library wherever CUDA runs;
where it does not (no NVIDIA driver) `open_gpu` raises GpuError saying why, and the server goes
on without these metrics. The readings are the whole device's: another process's kernels and
memory count too."""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .threads import Probe

logger = logging.getLogger("polypstream.gpu")

LIBRARY = "libnvidia-ml.so.1"
SUCCESS, NOT_SUPPORTED = 0, 3  # nvmlReturn_t
TEXT_BYTES = 96  # NVML_DEVICE_NAME_V2_BUFFER_SIZE, NVML_DEVICE_UUID_V2_BUFFER_SIZE
SAMPLE_S = 0.5  # NVML's own utilization covers the last 1/6 to 1 s, by product


class GpuError(RuntimeError):
    """The GPU cannot be read; the message says why, in one line."""


class _Memory(ctypes.Structure):  # nvmlMemory_t
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class _Utilization(ctypes.Structure):  # nvmlUtilization_t, in percent
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


@dataclass(frozen=True)
class GpuReading:
    busy: float | None  # the share of NVML's last sample period in which a kernel ran; None: not reported (MIG)
    memory_used: int  # bytes, every process's
    memory_total: int


def cuda_device_zero(environ: Mapping[str, str]) -> str:
    """The GPU that CUDA calls device 0, where the model runs: the first entry of
    CUDA_VISIBLE_DEVICES (an index, or a UUID or its start, as CUDA takes them), else index 0.
    NVML numbers GPUs in PCI bus order; CUDA does too with CUDA_DEVICE_ORDER=PCI_BUS_ID (by
    default it puts the fastest first, which differs only on a machine with unlike GPUs)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return "0"
    first = visible.split(",")[0].strip()
    if not first or first == "-1":
        raise GpuError(f"CUDA_VISIBLE_DEVICES={visible!r} shows CUDA no GPU")
    return first


class Nvml:
    """One GPU, through NVML (initialised here; `close` shuts it down)."""

    def __init__(self, lib: ctypes.CDLL, which: str) -> None:
        self._lib = lib  # its functions return nvmlReturn_t, an int: ctypes' default
        lib.nvmlErrorString.restype = ctypes.c_char_p
        self._check(lib.nvmlInit_v2(), "starting NVML")
        try:
            self._handle = self._device(which)
            self.name = self._text(lib.nvmlDeviceGetName, "its name")
            self.uuid = self._text(lib.nvmlDeviceGetUUID, "its UUID")
        except GpuError:
            lib.nvmlShutdown()
            raise

    def _check(self, code: int, doing: str) -> None:
        if code != SUCCESS:
            message = self._lib.nvmlErrorString(code)
            raise GpuError(f"NVML failed {doing}: {message.decode() if message else f'error {code}'}")

    def _device(self, which: str) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        if which.isdigit():
            found = self._lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(int(which)), ctypes.byref(handle))
            self._check(found, f"finding GPU {which}")
            return handle
        if self._lib.nvmlDeviceGetHandleByUUID(which.encode(), ctypes.byref(handle)) == SUCCESS:
            return handle
        count = ctypes.c_uint()  # a UUID's start, as CUDA_VISIBLE_DEVICES may give it
        self._check(self._lib.nvmlDeviceGetCount_v2(ctypes.byref(count)), "counting GPUs")
        for index in range(count.value):
            self._check(self._lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)), "")
            if self._text(self._lib.nvmlDeviceGetUUID, "a UUID", handle).startswith(which):
                return handle
        raise GpuError(f"no GPU {which} among the {count.value} NVML sees")

    def _text(self, function: Callable[..., int], what: str, handle: ctypes.c_void_p | None = None) -> str:
        buffer = ctypes.create_string_buffer(TEXT_BYTES)
        self._check(
            function(self._handle if handle is None else handle, buffer, ctypes.c_uint(TEXT_BYTES)), f"reading {what}"
        )
        return buffer.value.decode(errors="replace")

    def read(self) -> GpuReading:
        memory, utilization = _Memory(), _Utilization()
        self._check(self._lib.nvmlDeviceGetMemoryInfo(self._handle, ctypes.byref(memory)), "reading memory")
        code = self._lib.nvmlDeviceGetUtilizationRates(self._handle, ctypes.byref(utilization))
        if code == NOT_SUPPORTED:  # a MIG slice: no utilization of its own
            return GpuReading(None, memory.used, memory.total)
        self._check(code, "reading utilization")
        return GpuReading(utilization.gpu / 100, memory.used, memory.total)

    def close(self) -> None:
        self._lib.nvmlShutdown()


def open_gpu(environ: Mapping[str, str] = os.environ, load: Callable[[str], ctypes.CDLL] = ctypes.CDLL) -> Nvml:
    """The GPU the model runs on, read through NVML; GpuError (why, in one line) where it cannot be."""
    which = cuda_device_zero(environ)
    try:
        lib = load(LIBRARY)
    except OSError as exc:
        raise GpuError(f"NVIDIA's management library ({LIBRARY}) cannot be loaded: {exc}") from exc
    return Nvml(lib, which)


class GpuProbe(Probe):
    """A thread that reads the GPU every `interval_s` and hands `record` each reading with the
    seconds it stands for (since the one before). A reading that fails is logged once, until
    one succeeds again; the probe keeps trying."""

    name = "gpu-probe"

    def __init__(
        self,
        read: Callable[[], GpuReading],
        record: Callable[[GpuReading, float], None],
        interval_s: float = SAMPLE_S,
        *,
        wait: Callable[[float], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(interval_s, wait, clock)
        self.read, self.record = read, record

    def _loop(self) -> None:
        last, failing = self._clock(), False
        while not self._wait(self.interval_s):
            try:
                reading = self.read()
            except GpuError as exc:
                if not failing:
                    logger.warning("reading the GPU failed (%s); its metrics stand still until it reads again", exc)
                failing, last = True, self._clock()  # what it did meanwhile is not known: not counted
                continue
            failing = False
            now = self._clock()
            self.record(reading, now - last)
            last = now
