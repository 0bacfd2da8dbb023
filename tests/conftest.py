from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import TypeVar

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from polypstream.config import EngineConfig
from polypstream.metrics import Metrics
from polypstream.pipeline import Pipeline
from polypstream.runner import Runner
from tests.tiny_model import build_tiny_model

T = TypeVar("T")

DATA = Path(__file__).parent / "data"
KVASIR_FIXTURES = DATA / "kvasir"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny.onnx")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: "ca", "server_cert", "server_key", "client_cert", "client_key"."""
    from tests.pki import make_pki  # here, not at the top: `cryptography` is needed only by the TLS tests

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def pipeline(tiny_model: Path, registry: CollectorRegistry) -> Iterator[Pipeline]:
    config = EngineConfig(max_batch=4, budget_ms=10_000, max_wait_ms=2, decode_workers=2)
    pipe = Pipeline(Runner(tiny_model, device="cpu", max_batch=4), config, Metrics(registry))
    pipe.start()
    yield pipe
    pipe.stop()


@pytest.fixture
def slow_inference(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Make the pipeline's model take `seconds` longer per batch (an overloaded server)."""

    def slow_down(seconds: float) -> None:
        real_run = pipeline.runner.run

        def slow_run(tensors: list[np.ndarray]) -> np.ndarray:
            time.sleep(seconds)
            return real_run(tensors)

        monkeypatch.setattr(pipeline.runner, "run", slow_run)

    return slow_down


class FakeClock:
    """The service's clocks (`time.perf_counter` and `time.monotonic` of the modules it is
    installed on), moved only by the test: so every time a stage reports is exact. The two run
    on different epochs, so a time taken across both would show."""

    def __init__(self) -> None:
        self.t = 0.0
        self._lock = threading.Lock()

    def perf_counter(self) -> float:
        return 1000.0 + self.t

    def monotonic(self) -> float:
        return 7000.0 + self.t

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.t += seconds

    def install(self, monkeypatch: pytest.MonkeyPatch, *modules: ModuleType) -> None:
        """Make this the clock of each module's `time`."""
        for module in modules:
            monkeypatch.setattr(
                module, "time", SimpleNamespace(perf_counter=self.perf_counter, monotonic=self.monotonic)
            )

    def taking(self, seconds: float, work: Callable[..., T]) -> Callable[..., T]:
        """`work`, taking `seconds` on this clock each time it is called."""

        def timed(*args: object, **kwargs: object) -> T:
            self.advance(seconds)
            return work(*args, **kwargs)

        return timed


@pytest.fixture
def model_held(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> Callable[[], Callable[[], None]]:
    """Start the model on a frame of stream "other" and hold it there: frames submitted meanwhile
    queue up (and a frame long past its budget is dropped as the freshest is served). Returns
    what lets the model go on."""

    def hold() -> Callable[[], None]:
        running, go_on = threading.Event(), threading.Event()
        real_run = pipeline.runner.run

        def held_up(tensors: list[np.ndarray]) -> np.ndarray:
            running.set()
            assert go_on.wait(10)
            return real_run(tensors)

        monkeypatch.setattr(pipeline.runner, "run", held_up)
        pipeline.open_stream("other")
        pipeline.submit(pipeline.make_frame("other", "other", 0, square_image(), time.monotonic()), lambda r: None)
        assert running.wait(10)
        monkeypatch.setattr(pipeline.runner, "run", real_run)  # the frames queued meanwhile run as usual
        return go_on.set

    return hold


def square_image(width: int = 96, height: int = 80, box: tuple[int, int, int, int] = (16, 24, 32, 24)) -> np.ndarray:
    """Black BGR frame with one white rectangle (x, y, w, h): the tiny model's 'polyp'."""
    image = np.zeros((height, width, 3), np.uint8)
    x, y, w, h = box
    image[y : y + h, x : x + w] = 255
    return image


def write_clip(path: Path, frames: int = 12, size: tuple[int, int] = (96, 80), fps: float = 10.0) -> Path:
    """A small MJPG .avi with a white square moving right by 2 px per frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(square_image(size[0], size[1], (8 + 2 * i, 24, 32, 24)))
    writer.release()
    return path


def blank_image(width: int, height: int, ext: str = ".jpg") -> bytes:
    """A black width x height image encoded as `ext` (what a header parser reads sizes from)."""
    return cv2.imencode(ext, np.zeros((height, width, 3), np.uint8))[1].tobytes()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "the condition") -> None:
    """Poll `condition` until it holds; fail after `timeout` s (a hang, not a slow machine)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout:g} s"
        time.sleep(0.01)


def drawn_dataset(folder: Path) -> Path:
    """Two 64x64 PNG images of white rectangles on black (what the tiny model segments
    exactly, at its own input size), with masks and boxes whose scores are known by hand."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    a, a_mask = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)
    a[10:30, 10:30] = 255  # predicted: 400 px, box (10, 10, 20, 20)
    a_mask[10:20, 10:30] = 255  # truth: its top half, 200 px, box (10, 10, 20, 10): IoU 0.5
    b, b_mask = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)
    b[40:50, 40:50] = 255
    b_mask[40:50, 40:50] = 255  # exact, and a second polyp in the truth that nothing found
    for name, image, mask in (("a", a, a_mask), ("b", b, b_mask)):
        cv2.imwrite(str(folder / "images" / f"{name}.png"), image)
        cv2.imwrite(str(folder / "masks" / f"{name}.png"), mask)
    boxes = {
        "a": [(10, 10, 30, 20)],
        "b": [(40, 40, 50, 50), (0, 0, 5, 5)],
    }
    (folder / "kavsir_bboxes.json").write_text(json.dumps({
        name: {"height": 64, "width": 64, "bbox": [
            {"label": "polyp", "xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1} for x0, y0, x1, y1 in rects
        ]} for name, rects in boxes.items()
    }))  # fmt: skip
    return folder
