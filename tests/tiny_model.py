"""A tiny ONNX 'brightness' segmenter built with onnx.helper (no torch), for tests.

probability = sigmoid(gain * (mean over channels of pixel/255) - gain/2): white pixels are
'polyp' (≈1), black ones background (≈0). So a white shape on black gives a known mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GAIN = 20.0


def build_tiny_model(
    path: Path,
    *,
    size: int = 64,
    metadata: dict[str, str] | None = None,
    drop_metadata: tuple[str, ...] = (),
    batch_dim: int | str = "batch",
    channels: int = 3,
    output: str = "probability",
) -> Path:
    """The model at `path`; with output="logit" it leaves out the sigmoid (and says so)."""
    weight = numpy_helper.from_array(np.full((1, channels, 1, 1), GAIN / channels, np.float32), "w")
    bias = numpy_helper.from_array(np.array([-GAIN / 2], np.float32), "b")
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["logit"])]
    if output == "probability":
        nodes.append(helper.make_node("Sigmoid", ["logit"], ["probability"]))
    graph = segmenter_graph(nodes, "tiny", size, [weight, bias], batch_dim=batch_dim, channels=channels, output=output)
    meta = {**contract("tiny-brightness", size, output), **(metadata or {})}
    return save(graph, {key: value for key, value in meta.items() if key not in drop_metadata}, path)


def segmenter_graph(
    nodes: list[onnx.NodeProto],
    name: str,
    size: int,
    initializer: list[onnx.TensorProto],
    *,
    batch_dim: int | str = "batch",
    channels: int = 3,
    output: str = "probability",
) -> onnx.GraphProto:
    """The graph of a test segmenter: `nodes` from an `image` (batch × channels × size²) to one
    map, `output`, of the same size."""
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch_dim, channels, size, size])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch_dim, 1, size, size])],
        initializer=initializer,
    )


def contract(name: str, size: int, output: str = "probability") -> dict[str, str]:
    """The polypstream metadata of a test model: RGB input at size², pixels scaled to 0..1."""
    return {
        "polypstream.name": name,
        "polypstream.version": "test",
        "polypstream.input_size": f"{size}x{size}",
        "polypstream.channel_order": "RGB",
        "polypstream.scale": str(1 / 255),
        "polypstream.mean": "0,0,0",
        "polypstream.std": "1,1,1",
        "polypstream.output": output,
        "polypstream.threshold": "0.5",
    }


def save(graph: onnx.GraphProto, meta: dict[str, str], path: Path) -> Path:
    """The graph as a checked opset-17, IR-8 model with `meta`, at `path`."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_steady_polyp_model(path: Path, *, size: int = 352, resize: str = "area") -> Path:
    """A model that costs next to nothing and finds one polyp, the same in every frame: a disc
    of radius size/8 at the centre of its input (probability sigmoid(±GAIN/2): 1 inside, 0
    outside), whatever the image. The service measured around a model that answers as a real
    one does (one region to find, track and alert on, where the brightness model above finds
    one per bright patch: five a frame on the benchmarks' endoscopy frames), as the
    service-alone sweep of benchmarks/gpu_first_light.py does. `resize`: its polypstream.resize."""
    centre, radius = size / 2, size / 8
    y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    inside = (x - centre) ** 2 + (y - centre) ** 2 <= radius**2
    disc = np.where(inside, GAIN / 2, -GAIN / 2).astype(np.float32)[None, None]
    nothing = numpy_helper.from_array(np.zeros((1, 3, 1, 1), np.float32), "nothing")  # the image, times 0
    nodes = [
        helper.make_node("Conv", ["image", "nothing"], ["zero"]),  # batch × 1 × size × size
        helper.make_node("Add", ["zero", "disc"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    graph = segmenter_graph(nodes, "steady-polyp", size, [nothing, numpy_helper.from_array(disc, "disc")])
    return save(graph, {**contract("steady-polyp", size), "polypstream.resize": resize}, path)
