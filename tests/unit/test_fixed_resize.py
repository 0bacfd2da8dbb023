"""Constant upsampling factors: a Resize sized at run time becomes one with fixed scales, with the
same answers, and only where that is exact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.training.fixed_resize import fix_resize_scales

# Half-pixel bilinear 2× of [[0, 1], [2, 3]]: output (i, j) samples the input at ((i + 0.5) / 2 - 0.5,
# (j + 0.5) / 2 - 0.5), clamped to the edge, i.e. at -0.25, 0.25, 0.75, 1.25 → 0, 0.25, 0.75, 1;
# the input is 2·row + column, so the output is 2·c[i] + c[j].
C = np.array([0.0, 0.25, 0.75, 1.0], np.float32)
UPSAMPLED = 2 * C[:, None] + C[None, :]


def run_time_sized(path: Path, size: int, grow: int = 0, factor: int = 2) -> onnx.ModelProto:
    """x (N×1×size×size) → Resize to factor·size + grow, its sizes computed from Shape(x) as torch
    exports them; saved at `path`."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Mul", ["shape", "factors"], ["scaled"]),
        helper.make_node("Add", ["scaled", "grow"], ["sizes"]),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                         coordinate_transformation_mode="half_pixel"),
    ]  # fmt: skip
    out = factor * size + grow
    graph = helper.make_graph(
        nodes,
        "upsample",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, out, out])],
        initializer=[
            numpy_helper.from_array(np.array([1, 1, factor, factor], np.int64), "factors"),
            numpy_helper.from_array(np.array([0, 0, grow, grow], np.int64), "grow"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_run_time_sizes_become_constant_scales_with_the_same_answers(tmp_path: Path) -> None:
    model = run_time_sized(tmp_path / "m.onnx", size=2)
    assert fix_resize_scales(model) == 1
    (resize,) = model.graph.node  # the size arithmetic is gone with nothing left reading it
    scales = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}[resize.input[2]]
    assert list(resize.input[:2]) == ["x", ""] and resize.input[2] and scales.tolist() == [1.0, 1.0, 2.0, 2.0]
    x = np.array([[[[0, 1], [2, 3]]], [[[0, 1], [2, 3]]]], np.float32)  # a batch of two
    assert np.array_equal(run(model, x), np.stack([UPSAMPLED[None]] * 2))


def test_a_factor_that_is_not_whole_is_left_alone(tmp_path: Path) -> None:
    model = run_time_sized(tmp_path / "m.onnx", size=3, grow=1)  # 3 → 7
    before = model.SerializeToString()
    assert fix_resize_scales(model) == 0
    assert model.SerializeToString() == before


def rewrite(model: Path, out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "models.training.fixed_resize", "--model", str(model), "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True)


def test_the_command_rewrites_a_model_and_refuses_one_with_nothing_to_rewrite(tmp_path: Path) -> None:
    run_time_sized(tmp_path / "m.onnx", size=2)
    done = rewrite(tmp_path / "m.onnx", tmp_path / "fixed.onnx")
    assert done.returncode == 0, done.stderr
    assert [n.op_type for n in onnx.load(str(tmp_path / "fixed.onnx")).graph.node] == ["Resize"]
    again = rewrite(tmp_path / "fixed.onnx", tmp_path / "again.onnx")
    assert again.returncode == 1 and "nothing written" in again.stderr and not (tmp_path / "again.onnx").exists()


@pytest.mark.parametrize("factor", [2, 4])
def test_whole_factors_give_the_run_time_sized_answers(tmp_path: Path, factor: int) -> None:
    model = run_time_sized(tmp_path / "m.onnx", size=5, factor=factor)
    x = np.random.default_rng(0).standard_normal((3, 1, 5, 5)).astype(np.float32)
    expected = run(model, x)
    assert fix_resize_scales(model) == 1
    assert np.array_equal(run(model, x), expected)
