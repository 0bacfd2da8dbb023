"""Write an fp16 variant of a polypstream model, for GPUs (tensor cores run fp16 convolutions).

    python -m models.training.fp16 --model models/fast.onnx --out models/fast-fp16.onnx

Weights and activations become float16; the input and output stay float32, so the model's
contract (and the service's preprocessing) is unchanged, and its metadata is kept with
"-fp16" added to `polypstream.version`. Check it before using it: the rule for shipping one is
a test-split Dice within 0.005 of the fp32 model's (`polypstream eval --model OUT`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16

from models.training.variant import save_variant


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put the graph's nodes in dependency order (the converter appends the casts it adds)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("the graph has a cycle or an input nothing produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def to_fp16(source: Path, out: Path) -> None:
    model = onnx.load(str(source))
    half = convert_float_to_float16(model, keep_io_types=True)
    half.ir_version = model.ir_version  # what the source was exported for (onnxruntime 1.2x loads ≤ 10)
    sort_nodes(half.graph)
    save_variant(half, out, "-fp16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="an fp32 polypstream ONNX model")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    to_fp16(args.model, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB); check it: polypstream eval --model {args.out}")


if __name__ == "__main__":
    main()
