"""What the fp16 and int8 variants of a model share: the same contract, a marked version."""

from __future__ import annotations

from pathlib import Path

import onnx

from polypstream.runner import META_PREFIX


def save_variant(model: onnx.ModelProto, out: Path, suffix: str) -> None:
    """Write a variant of a polypstream model with `suffix` ("-fp16", "-int8") added to its
    `polypstream.version`, once ONNX's checker has passed it."""
    for prop in model.metadata_props:
        if prop.key == META_PREFIX + "version":
            prop.value += suffix
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
