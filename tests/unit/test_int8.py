"""The int8 variant of a model: int8 weights inside, the same contract and answers outside."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from models.training.int8 import calibration_inputs, to_int8
from polypstream.dataset import read_image
from polypstream.runner import Runner
from tests.conftest import square_image

KVASIR = Path(__file__).resolve().parents[1] / "data" / "kvasir"


def test_calibration_takes_the_first_images_of_the_split_as_the_service_preprocesses_them(tiny_model: Path) -> None:
    tensors = calibration_inputs(tiny_model, KVASIR, KVASIR / "test.txt", images=3)
    runner = Runner(tiny_model, device="cpu")
    first = sorted(KVASIR.glob("images/*.jpg"))[0]  # the split file lists them in name order
    assert len(tensors) == 3 and tensors[0].shape == (3, *runner.input_size[::-1])
    assert np.array_equal(tensors[0], runner.preprocess(read_image(first)))


def test_int8_variant_keeps_the_contract_and_the_answers(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "tiny-int8.onnx"
    to_int8(tiny_model, out, calibration_inputs(tiny_model, KVASIR, None, images=4))
    model = onnx.load(str(out))
    assert TensorProto.INT8 in {i.data_type for i in model.graph.initializer}  # weights in int8...
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # ...float32 at the edges
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    fp32, int8 = Runner(tiny_model, device="cpu", max_batch=2), Runner(out, device="cpu", max_batch=2)
    assert int8.contract == replace(fp32.contract, version="test-int8")
    inputs = [fp32.preprocess(square_image()), fp32.preprocess(square_image(box=(40, 8, 30, 30)))]
    expected, got = fp32.run(inputs), int8.run(inputs)
    assert got.dtype == np.float32 and np.allclose(got, expected, atol=0.01)
    assert np.array_equal(got > 0.5, expected > 0.5)  # the same mask
