"""Serving a model at another input size (models/training/input_size.py): same weights, new
declared size and version, refused where the graph cannot run at that size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from polypstream.runner import Runner, read_checksums
from tests.tiny_model import build_tiny_model, segmenter_graph

ROOT = Path(__file__).resolve().parents[2]


def input_size(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "models.training.input_size", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def down_and_up(path: Path, size: int, upsample_to_sizes: bool = False) -> Path:
    """One U-Net level without weights: x → max-pool 2× → upsample 2× → concat with x → Sigmoid.
    The concat needs the upsampled map to be the size of x, so odd sizes cannot run."""
    up = (
        helper.make_node("Resize", ["pooled", "", "", "sizes"], ["up"], mode="linear")
        if upsample_to_sizes
        else helper.make_node("Resize", ["pooled", "", "scales"], ["up"], mode="linear")
    )
    nodes = [
        helper.make_node("MaxPool", ["image"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        up,
        helper.make_node("Concat", ["up", "image"], ["both"], axis=1),
        helper.make_node("ReduceMean", ["both", "axes"], ["mean"], keepdims=1),
        helper.make_node("Sigmoid", ["mean"], ["probability"]),
    ]
    graph = segmenter_graph(
        nodes,
        "level",
        size,
        [
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
            numpy_helper.from_array(np.array([1, 3, size, size], np.int64), "sizes"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for key, value in {"polypstream.version": "1", "polypstream.input_size": f"{size}x{size}"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_the_same_weights_are_served_at_the_new_size(tmp_path: Path) -> None:
    source = build_tiny_model(tmp_path / "m.onnx", size=64, metadata={"polypstream.min_region_score": "0.8"})
    out = tmp_path / "out" / "m.onnx"  # a folder that does not exist yet
    done = input_size("--model", str(source), "--size", "32", "--version", "2-at32", "--out", str(out))
    assert done.returncode == 0, done.stderr

    runner = Runner(out, device="cpu", max_batch=1)
    c = runner.contract
    assert (c.input_width, c.input_height, c.version, c.min_region_score) == (32, 32, "2-at32", 0.8)
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, :20] = 255  # the brightness model: white is polyp
    mask = runner.run([runner.preprocess(image)])[0] > 0.5
    assert mask.shape == (32, 32) and mask[:, :16].all() and not mask[:, 16:].any()
    assert set(read_checksums(out.parent)) == {"m.onnx"}  # a named model is checked against it
    weights = {i.name: numpy_helper.to_array(i).tolist() for i in onnx.load(str(out)).graph.initializer}
    assert weights == {i.name: numpy_helper.to_array(i).tolist() for i in onnx.load(str(source)).graph.initializer}


def test_a_size_the_network_cannot_run_at_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    source = down_and_up(tmp_path / "level.onnx", 32)
    ok = input_size("--model", str(source), "--size", "16", "--version", "2", "--out", str(tmp_path / "ok.onnx"))
    assert ok.returncode == 0, ok.stderr
    assert onnx.load(str(tmp_path / "ok.onnx")).graph.input[0].type.tensor_type.shape.dim[2].dim_value == 16

    odd = input_size("--model", str(source), "--size", "17", "--version", "2", "--out", str(tmp_path / "odd.onnx"))
    assert odd.returncode != 0
    last = odd.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{source}: the model does not run at 17x17: ")
    assert not (tmp_path / "odd.onnx").exists()


def test_upsampling_to_fixed_sizes_is_refused_with_the_fix(tmp_path: Path) -> None:
    source = down_and_up(tmp_path / "level.onnx", 32, upsample_to_sizes=True)
    done = input_size("--model", str(source), "--size", "16", "--version", "2", "--out", str(tmp_path / "o.onnx"))
    assert done.returncode != 0
    assert "upsamples to sizes, not by factors: run models.training.fixed_resize first" in done.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_a_model_without_the_contract_is_refused(tmp_path: Path) -> None:
    source = build_tiny_model(tmp_path / "m.onnx", drop_metadata=("polypstream.input_size",))
    done = input_size("--model", str(source), "--size", "32", "--version", "2", "--out", str(tmp_path / "o.onnx"))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"{source}: not a polypstream model: no polypstream.input_size or polypstream.version"
    )
