"""Constant upsampling factors in an exported model: the same answers, faster on a CPU.

torch exports `F.interpolate(x, size=skip.shape[-2:])` as a Resize whose output size is computed
at run time (Shape, Gather, Slice, Concat … feeding its `sizes` input). The input size of a
polypstream model is fixed, so every such size is known in advance; given as constant `scales`
instead, onnxruntime's CPU provider runs the upsampling in its blocked (NCHWc) layout beside the
convolutions, without converting the tensor back and forth, and the shape arithmetic goes away.
Outputs are unchanged: only whole-number factors are rewritten (2× here), for which a size and
a scale mean the same coordinates, and the rewritten model is checked against the original.

    python -m models.training.fixed_resize --model models/fast.onnx --out models/fast.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from polypstream.runner import record_checksum

TOLERANCE = 1e-5  # largest difference allowed between the two models' probabilities


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Tensor name → its shape as far as ONNX's shape inference knows it (0 where unknown)."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def _remove_unused(graph: onnx.GraphProto) -> None:
    """Drop the nodes nothing reads any more (the size arithmetic that fed a rewritten Resize)."""
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        unused = [node for node in graph.node if not any(out in read for out in node.output)]
        if not unused:
            return
        for node in unused:
            graph.node.remove(node)


def fix_resize_scales(model: onnx.ModelProto) -> int:
    """Give each Resize whose `sizes` are computed at run time constant `scales`, where the
    shapes on both sides are known and every factor is a whole number; return how many."""
    shapes = _static_shapes(model)
    initializers = {init.name for init in model.graph.initializer}
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or not node.input[3] or node.input[3] in initializers:
            continue
        before, after = shapes.get(node.input[0], []), shapes.get(node.output[0], [])
        if len(before) != len(after) or len(before) < 3:
            continue
        spatial = list(zip(before[2:], after[2:], strict=True))
        if not all(b and a and a % b == 0 for b, a in spatial):
            continue
        name = f"{node.output[0]}_scales"
        factors = [1.0, 1.0, *(a / b for b, a in spatial)]  # batch and channels kept
        model.graph.initializer.append(numpy_helper.from_array(np.array(factors, np.float32), name))
        data = node.input[0]
        del node.input[:]
        node.input.extend([data, "", name])  # X, roi (unused), scales
        rewritten += 1
    _remove_unused(model.graph)
    return rewritten


def largest_difference(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0) -> float:
    """The largest difference between two models' outputs on the same random batch of two."""
    feed_shape = [d.dim_value or 2 for d in a.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(feed_shape).astype(np.float32)
    outputs = []
    for model in (a, b):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    return float(np.abs(outputs[0] - outputs[1]).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="may be --model itself")
    args = parser.parse_args()
    original = onnx.load(str(args.model))
    model = onnx.ModelProto()
    model.CopyFrom(original)
    count = fix_resize_scales(model)
    if count == 0:
        sys.exit(f"{args.model}: no Resize with run-time sizes that could be made constant; nothing written")
    onnx.checker.check_model(model)
    difference = largest_difference(original, model)
    if difference > TOLERANCE:
        sys.exit(f"{args.model}: the rewritten model differs by {difference:.2e} (> {TOLERANCE:g}); nothing written")
    onnx.save(model, str(args.out))
    if (args.out.parent / "SHA256SUMS").exists():
        record_checksum(args.out)
    print(f"{count} Resize nodes given constant scales; largest difference {difference:.1e}; wrote {args.out}")


if __name__ == "__main__":
    main()
