"""The ONNX Runtime stage: the model contract, provider choice, warm-up and batched runs.

This is the only module that imports onnxruntime. The contract (input size, channel
order, scaling, mean/std, threshold) is read from the model's ONNX metadata, so a new
model needs no code change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from .alerts import AlertRule
from .threads import os_thread_named

logger = logging.getLogger(__name__)

META_PREFIX = "polypstream."
MODELS_DIR_ENV = "POLYPSTREAM_MODELS_DIR"
NAMED_MODELS = ("fast", "accurate")
CHECKSUMS = "SHA256SUMS"  # beside the named models, in `sha256sum` format


RESIZES = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}  # polypstream.resize → OpenCV's interpolation


class ModelError(RuntimeError):
    """The model file is missing, unreadable, or breaks the polypstream contract."""


@dataclass(frozen=True)
class ModelContract:
    """What the service must know about a model, read from its ONNX metadata."""

    name: str
    version: str
    input_width: int
    input_height: int
    channel_order: str  # "RGB" or "BGR"
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str  # "probability" (sigmoid applied) or "logit"
    threshold: float
    min_region_score: float = 0.0  # regions whose mean probability is lower are not reported as polyps
    # How a frame is shrunk to the input: "area" (averaging, as the training images were) or
    # "linear" (a tenth of the time from 960×540 to 352², for a model whose validation Dice it keeps).
    resize: str = "area"
    # The alert rule chosen for this model (`polypstream.alert_rule`, "N,M,H"): its false alarms
    # are its own, so the rule that keeps them down travels with it; None: the service's default.
    alert_rule: AlertRule | None = None

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> ModelContract:
        def get(key: str) -> str:
            value = meta.get(META_PREFIX + key)
            if value is None:
                raise ModelError(f"{source}: ONNX metadata lacks '{META_PREFIX}{key}'")
            return value

        def triple(key: str) -> tuple[float, float, float]:
            parts = [float(v) for v in get(key).split(",")]
            if len(parts) != 3:
                raise ModelError(f"{source}: '{META_PREFIX}{key}' must have 3 values, got {len(parts)}")
            return parts[0], parts[1], parts[2]

        try:
            width, height = (int(v) for v in get("input_size").lower().split("x"))
            contract = cls(
                name=get("name"),
                version=get("version"),
                input_width=width,
                input_height=height,
                channel_order=get("channel_order").upper(),
                scale=float(get("scale")),
                mean=triple("mean"),
                std=triple("std"),
                output=get("output"),
                threshold=float(get("threshold")),
                min_region_score=float(meta.get(META_PREFIX + "min_region_score", "0")),
                resize=meta.get(META_PREFIX + "resize", "area"),
                alert_rule=_alert_rule(meta.get(META_PREFIX + "alert_rule")),
            )
        except ValueError as exc:  # ConfigError (an alert rule that cannot be met) among them
            raise ModelError(f"{source}: malformed polypstream metadata ({exc})") from exc
        if contract.channel_order not in ("RGB", "BGR"):
            raise ModelError(f"{source}: channel_order must be RGB or BGR, not {contract.channel_order}")
        if contract.output not in ("probability", "logit"):
            raise ModelError(f"{source}: output must be 'probability' or 'logit', not {contract.output}")
        if contract.resize not in RESIZES:
            raise ModelError(f"{source}: resize must be {' or '.join(RESIZES)}, not {contract.resize}")
        return contract


def _alert_rule(value: str | None) -> AlertRule | None:
    if value is None:
        return None
    parts = [int(v) for v in value.split(",")]
    if len(parts) != 3:
        raise ValueError(f"alert_rule must be N,M,H, not {value!r}")
    return AlertRule(*parts)


def models_dir() -> Path:
    """Where the named models live: $POLYPSTREAM_MODELS_DIR, else the installed package's models/
    (polypstream/models/), else the checkout's models/ beside service/."""
    override = os.environ.get(MODELS_DIR_ENV)
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent
    installed = package / "models"
    return installed if installed.is_dir() else package.parent / "models"


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def resolve_model(spec: str | None) -> Path:
    """A model path from `fast`, `accurate`, a file path, or None (accurate on CUDA, else fast).

    A named model must match the SHA-256 recorded for it in the models folder's SHA256SUMS:
    a damaged or replaced file is refused rather than served."""
    if spec is None:
        candidates = ["accurate", "fast"] if cuda_available() else ["fast", "accurate"]
        for name in candidates:
            path = models_dir() / f"{name}.onnx"
            if path.is_file():
                verify_checksum(path)
                return path
        raise ModelError(f"{models_dir()}: no fast.onnx or accurate.onnx (pass --model PATH)")
    path = models_dir() / f"{spec}.onnx" if spec in NAMED_MODELS else Path(spec)
    if not path.is_file() and spec == "accurate":
        raise ModelError(f"{path}: this models folder has no accurate model; use --model fast")
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    if spec in NAMED_MODELS:
        verify_checksum(path)
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_checksums(folder: Path) -> dict[str, str]:
    """File name → SHA-256 from `folder`/SHA256SUMS (empty when there is none)."""
    sums = folder / CHECKSUMS
    if not sums.is_file():
        return {}
    recorded: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest and name:
            recorded[name.lstrip("*")] = digest.lower()
    return recorded


def verify_checksum(path: Path) -> None:
    """Raise ModelError unless `path` matches the SHA-256 recorded for it beside it."""
    recorded = read_checksums(path.parent).get(path.name)
    if recorded is None:
        raise ModelError(
            f"{path}: no SHA-256 recorded for it in {path.parent / CHECKSUMS} "
            "(a named model is checked against it; load your own model by path)"
        )
    actual = file_sha256(path)
    if actual != recorded:
        raise ModelError(
            f"{path}: SHA-256 {actual[:12]}… does not match the recorded {recorded[:12]}…; the file is damaged "
            "or was replaced (restore it, or load a model of your own by path)"
        )


def record_checksum(path: Path) -> None:
    """Record `path`'s SHA-256 in SHA256SUMS beside it (for tools that write named models)."""
    recorded = read_checksums(path.parent)
    recorded[path.name] = file_sha256(path)
    lines = [f"{digest}  {name}" for name, digest in sorted(recorded.items())]
    (path.parent / CHECKSUMS).write_text("\n".join(lines) + "\n")


# cuDNN's convolution algorithms chosen by its heuristics, not by timing every candidate:
# onnxruntime's default (EXHAUSTIVE) times them again for each new input shape, and a batcher's
# batch size changes from one batch to the next. On the H100 (first light, 2026-11-27, default
# options) 8 streams at 25 fps saw inference p50 1.3 ms but p90 160 ms, and 75 % of frames dropped.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}
CUDA = ("CUDAExecutionProvider", CUDA_OPTIONS)


def _providers(device: str) -> list[str | tuple[str, dict[str, str]]]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if not cuda_available():
            raise ModelError("CUDAExecutionProvider requested but this onnxruntime build has no CUDA")
        return [CUDA, "CPUExecutionProvider"]
    if device == "auto":
        return [CUDA, "CPUExecutionProvider"] if cuda_available() else ["CPUExecutionProvider"]
    raise ModelError(f"unknown device '{device}' (auto, cuda or cpu)")


def run_failure(exc: Exception) -> str:
    """Why a model run failed, in a few words: onnxruntime's message is a node's name and a
    source file's path before what went wrong."""
    text = str(exc)
    if "Failed to allocate memory" in text or "out of memory" in text.lower() or isinstance(exc, MemoryError):
        return "out of memory"
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def warm_up_sizes(max_batch: int, on_cuda: bool) -> list[int]:
    """The batch sizes a runner runs before serving: on CUDA every size up to max_batch (each new
    input shape costs its first run extra on the GPU, which a live frame should not pay); on a
    CPU the smallest and the largest (the rest are interpolated by the batcher's estimator)."""
    return list(range(1, max_batch + 1)) if on_cuda else sorted({1, max_batch})


SPINNING = "session.intra_op.allow_spinning"


class Runner:
    """One ONNX Runtime session with a fixed input buffer of `max_batch` frames."""

    def __init__(
        self,
        model_path: Path,
        *,
        device: str = "auto",
        max_batch: int = 8,
        threads: int = 0,
        io_binding: bool | None = None,
        spin: bool = False,
    ) -> None:
        """`spin`: let onnxruntime's idle threads spin between runs, for a model that runs back
        to back with the CPU to itself (eval, the model's limit in the benchmarks); a server
        shares the CPU and leaves it off."""
        self.path = model_path
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        # onnxruntime's threads spin between runs by default. A server's threads share the CPU with
        # the decoders, the drawing threads and gRPC, and live frames come one run at a time: there
        # spinning took more CPU than the model (soak: 1.7 server cores with it, 1.1–1.3 without).
        options.add_session_config_entry(SPINNING, "1" if spin else "0")
        try:
            with os_thread_named("onnxruntime"):  # the session's threads take the name (top -H)
                self.session = ort.InferenceSession(str(model_path), options, providers=_providers(device))
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{model_path}: cannot load ONNX model ({first_line})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        self.contract = ModelContract.from_metadata(meta, str(model_path))
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise ModelError(f"{model_path}: CUDA requested but onnxruntime fell back to {self.provider}")
        self._check_io(model_path)
        self.max_batch = max_batch
        c = self.contract
        self._input = np.empty((max_batch, 3, c.input_height, c.input_width), dtype=np.float32)
        self._scale = np.float32(c.scale)
        self._mean = np.array(c.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.array(c.std, dtype=np.float32)
        # IO binding to fixed device buffers, one pair per batch size: the default on CUDA
        # (no per-run allocation); on CPU it buys nothing and is only used when asked (tests).
        on_cuda = self.provider == "CUDAExecutionProvider"
        self.io_binding = on_cuda if io_binding is None else io_binding
        self._device = "cuda" if on_cuda else "cpu"
        self._bindings: dict[int, tuple[ort.IOBinding, ort.OrtValue, ort.OrtValue]] = {}

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the model input."""
        return self.contract.input_width, self.contract.input_height

    def _check_io(self, model_path: Path) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelError(f"{model_path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        shape = inputs[0].shape
        c = self.contract
        expected = [3, c.input_height, c.input_width]
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != expected:
            raise ModelError(f"{model_path}: input shape {shape} does not match N×{'×'.join(map(str, expected))}")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise ModelError(f"{model_path}: batch axis must be dynamic (got {shape[0]})")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.fixed_batch_one = isinstance(shape[0], int)
        self._output_tail = tuple(d if isinstance(d, int) else -1 for d in outputs[0].shape[1:])

    def preprocess(self, image_bgr: np.ndarray) -> np.ndarray:
        """HWC uint8 BGR frame → CHW float32 model input (resize as the contract says, channel
        order, normalise)."""
        c = self.contract
        resized = cv2.resize(image_bgr, (c.input_width, c.input_height), interpolation=RESIZES[c.resize])
        planes = cv2.split(resized)  # B, G, R: each contiguous
        if c.channel_order == "RGB":
            planes = planes[::-1]
        # Plane by plane, in place: the same float32 arithmetic as (x * scale - mean) / std over
        # the HWC image, bit for bit, but each pass runs over a whole plane rather than over
        # rows of three values (a 352² input: 0.16 ms here, against 2.4 ms).
        tensor = np.empty((3, c.input_height, c.input_width), dtype=np.float32)
        for channel, plane in enumerate(planes):
            out = tensor[channel]
            np.multiply(plane, self._scale, out=out, dtype=np.float32)
            out -= self._mean[channel]
            out *= self._inv_std[channel]
        return tensor

    def run(self, tensors: list[np.ndarray]) -> np.ndarray:
        """Polyp probabilities (N×H×W float32 at model resolution) for up to max_batch inputs.

        The caller owns the array returned: no later run writes to it."""
        n = len(tensors)
        if not 0 < n <= self.max_batch:
            raise ValueError(f"batch of {n} frames (1..{self.max_batch} allowed)")
        for i, tensor in enumerate(tensors):
            self._input[i] = tensor
        if self.fixed_batch_one:
            outs = [
                self.session.run([self.output_name], {self.input_name: self._input[i : i + 1]})[0] for i in range(n)
            ]
            out = np.concatenate(outs)
        elif self.io_binding:
            binding, device_input, device_output = self._binding(n)
            device_input.update_inplace(self._input[:n])  # one copy into the fixed input buffer
            self.session.run_with_iobinding(binding)
            out = device_output.numpy()  # from a CUDA buffer: a new host array
            if self._device == "cpu":  # a view of the bound buffer, which the next run overwrites
                out = out.copy()
        else:
            out = self.session.run([self.output_name], {self.input_name: self._input[:n]})[0]
        probs = out.reshape(n, self.contract.input_height, self.contract.input_width)
        if self.contract.output == "logit":
            probs = 1.0 / (1.0 + np.exp(-probs))
        return probs.astype(np.float32, copy=False)

    def _binding(self, n: int) -> tuple[ort.IOBinding, ort.OrtValue, ort.OrtValue]:
        """The IO binding of batch size n, with its input and output buffers on the device."""
        cached = self._bindings.get(n)
        if cached is None:
            if -1 in self._output_tail:
                raise ModelError(f"{self.path}: output shape {self._output_tail} is not fixed; cannot bind buffers")
            c = self.contract
            make = ort.OrtValue.ortvalue_from_shape_and_type
            device_input = make((n, 3, c.input_height, c.input_width), np.float32, self._device, 0)
            device_output = make((n, *self._output_tail), np.float32, self._device, 0)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, device_input)
            binding.bind_ortvalue_output(self.output_name, device_output)
            cached = self._bindings[n] = (binding, device_input, device_output)
        return cached

    def warm_up(self, rounds: int = 2) -> dict[int, float]:
        """Run each of `warm_up_sizes` a few times; returns seconds per batch size (last run).

        If IO binding fails here, the runner falls back to plain runs (and logs why)."""
        c = self.contract
        blank = np.zeros((3, c.input_height, c.input_width), dtype=np.float32)
        if self.io_binding:
            try:
                self.run([blank])
            except Exception as exc:  # any binding failure: serving matters more than the fast path
                logger.warning("IO binding on %s failed (%s); using plain session runs", self._device, exc)
                self.io_binding = False
                self._bindings.clear()
        timings: dict[int, float] = {}
        for size in warm_up_sizes(self.max_batch, self._device == "cuda"):
            for _ in range(rounds):
                start = time.perf_counter()
                try:
                    self.run([blank] * size)
                except Exception as exc:  # onnxruntime's own types; out of memory, mostly
                    raise ModelError(
                        f"{self.path.name}: a batch of {size} frames does not run on {self.provider} "
                        f"({run_failure(exc)}); lower --max-batch"
                    ) from exc
                timings[size] = time.perf_counter() - start
        return timings
