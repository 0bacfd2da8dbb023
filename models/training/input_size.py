"""Serve a model at another input size: the same weights, a new `input_size` and version.

    python -m models.training.input_size --model models/fast.onnx --size 128 --version 0.3-cpu \\
        --out models/fast.onnx

A convolutional network does not care about the size of its input; what changes is the scale at
which it sees a frame (a polyp 20 % smaller at 128² than at 160²) and the time a run takes
(about the square of the size). The graph's upsampling must be by constant factors
(`models.training.fixed_resize`): a Resize to sizes fixed for the old input would not fit. The
result is run once at the new size before it is written; nothing is written if that fails. The
region score floor is kept: choose it again with `models.training.tune_regions`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from polypstream.runner import META_PREFIX, record_checksum


def resized(model: onnx.ModelProto, size: int, version: str) -> onnx.ModelProto:
    """A copy of `model` (N×3×H×W in, N×1×H×W out) declared and labelled for size×size input."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in (*out.graph.input, *out.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 4:
            raise ValueError(f"{value.name} is not N×C×H×W")
        dims[2].dim_value, dims[3].dim_value = size, size
    del out.graph.value_info[:]  # shapes inferred for the old size
    props = {prop.key: prop for prop in out.metadata_props}
    new = {META_PREFIX + "input_size": f"{size}x{size}", META_PREFIX + "version": version}
    if not new.keys() <= props.keys():
        raise ValueError("not a polypstream model: no polypstream.input_size or polypstream.version")
    for key, value in new.items():
        props[key].value = value
    for node in out.graph.node:
        if node.op_type == "Resize" and len(node.input) > 3 and node.input[3]:
            raise ValueError(
                f"Resize {node.name} upsamples to sizes, not by factors: run models.training.fixed_resize first"
            )
    onnx.checker.check_model(out)
    return out


def check_runs(model: onnx.ModelProto, size: int) -> None:
    """Run it once at the new size; the answer must be a probability map of that size."""
    try:  # onnxruntime raises its own types, when it loads the graph (shapes) or runs it
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        (answer,) = session.run(None, {name: np.zeros((1, 3, size, size), np.float32)})
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise ValueError(f"the model does not run at {size}x{size}: {reason}") from exc
    if answer.shape != (1, 1, size, size):
        raise ValueError(f"at {size}x{size} the model answers {answer.shape}, expected (1, 1, {size}, {size})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--size", type=int, required=True, help="the new input's width and height")
    parser.add_argument("--version", required=True, help="polypstream.version of the result")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        model = resized(onnx.load(str(args.model)), args.size, args.version)
        check_runs(model, args.size)
    except ValueError as exc:
        raise SystemExit(f"{args.model}: {exc}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    record_checksum(args.out)
    print(f"wrote {args.out}: {args.size}x{args.size}, version {args.version}")


if __name__ == "__main__":
    main()
