"""The fp16 variant of a model: float16 inside, the same contract and answers outside."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from models.training.fp16 import to_fp16
from polypstream.runner import Runner
from tests.conftest import square_image


def test_fp16_variant_keeps_the_contract_and_the_answers(tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "tiny-fp16.onnx"
    to_fp16(tiny_model, out)
    model = onnx.load(str(out))
    assert {i.data_type for i in model.graph.initializer} == {TensorProto.FLOAT16}  # weights in fp16...
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # ...float32 at the edges
    fp32, fp16 = Runner(tiny_model, device="cpu", max_batch=2), Runner(out, device="cpu", max_batch=2)
    assert fp16.contract == replace(fp32.contract, version="test-fp16")
    inputs = [fp32.preprocess(square_image()), fp32.preprocess(square_image(box=(40, 8, 30, 30)))]
    expected, got = fp32.run(inputs), fp16.run(inputs)
    assert got.dtype == np.float32 and np.allclose(got, expected, atol=2e-3)
