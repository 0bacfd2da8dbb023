"""Each stage loads only the libraries it needs (a fresh interpreter per module)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("grpc", "onnxruntime", "cv2")


@pytest.mark.parametrize(
    ("module", "loads"),
    [
        ("config", set()),  # every stage imports it
        ("frames", set()),
        ("scores", set()),  # metrics of masks and boxes: numpy only
        ("stats", set()),
        ("threads", set()),  # names and priorities of threads: the standard library only
        ("pipeline", {"onnxruntime", "cv2"}),  # the engine: no gRPC
        ("replay", {"grpc", "cv2"}),  # a client: no model runtime
        ("client", {"grpc", "cv2"}),
    ],
)
def test_a_module_loads_only_what_its_stage_needs(module: str, loads: set[str]) -> None:
    code = f"import sys, polypstream.{module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(done.stdout.split()) == loads
