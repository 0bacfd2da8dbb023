"""Write an int8 variant of a polypstream model, for CPUs (int8 convolutions: VNNI, AMX).

    python -m models.training.int8 --model models/fast.onnx --data ../shared/data/kvasir-seg \
        --split ../shared/data/kvasir-seg/train.txt --out fast-int8.onnx

Static quantization in onnxruntime's QDQ format: weights int8 per output channel, activations
uint8 with ranges taken (min/max) from the first `--images` images of the split, preprocessed as
the service preprocesses frames. The input and output stay float32, so the model's contract is
unchanged; its metadata is kept with "-int8" added to `polypstream.version`. Calibrate on
training images, never on the test split; check it before using it: the rule for shipping one
is a test-split Dice within 0.005 of the fp32 model's (`polypstream eval --model OUT`).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from models.training.variant import save_variant
from polypstream.dataset import load_split, read_image
from polypstream.runner import Runner


class _Inputs(CalibrationDataReader):
    """The calibration images as the model's input, one batch of one at a time."""

    def __init__(self, name: str, tensors: list[np.ndarray]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter({name: t[None]} for t in tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_inputs(model: Path, data: Path, split: Path | None, images: int) -> list[np.ndarray]:
    """The first `images` images of the split, preprocessed for `model` (CHW float32)."""
    runner = Runner(model, device="cpu", max_batch=1)
    samples = load_split(data, split)[:images]
    return [runner.preprocess(read_image(s.image_path)) for s in samples]


def to_int8(source: Path, out: Path, tensors: list[np.ndarray]) -> None:
    """Quantize `source` with `tensors` as calibration data; write it to `out`."""
    if not tensors:
        raise ValueError("no calibration images")
    name = onnx.load(str(source)).graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shapes inferred (ONNX's own inference: the symbolic one needs sympy), graph optimised for quantization
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            _Inputs(name, tensors),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    save_variant(onnx.load(str(out)), out, "-int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="an fp32 polypstream ONNX model")
    parser.add_argument("--data", type=Path, required=True, help="a Kvasir-SEG folder (images/)")
    parser.add_argument("--split", type=Path, help="the images to calibrate on (default: all, sorted)")
    parser.add_argument("--images", type=int, default=64, help="how many of them")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    to_int8(args.model, args.out, calibration_inputs(args.model, args.data, args.split, args.images))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); check it: polypstream eval --model {args.out}")


if __name__ == "__main__":
    main()
