"""The model contract read from ONNX metadata, provider choice and batched runs."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from polypstream.runner import ModelContract, ModelError, Runner, record_checksum, resolve_model
from tests.conftest import square_image
from tests.tiny_model import build_tiny_model


def test_contract_comes_from_onnx_metadata(tiny_model: Path) -> None:
    runner = Runner(tiny_model, device="cpu", max_batch=2)
    c = runner.contract
    assert (c.name, c.version, c.input_width, c.input_height) == ("tiny-brightness", "test", 64, 64)
    assert (c.channel_order, c.output, c.threshold) == ("RGB", "probability", 0.5)
    assert runner.provider == "CPUExecutionProvider"


def test_preprocess_resizes_and_normalises(tiny_model: Path) -> None:
    runner = Runner(tiny_model, device="cpu", max_batch=2)
    white = np.full((100, 200, 3), 255, np.uint8)
    tensor = runner.preprocess(white)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == np.float32
    assert np.allclose(tensor, 1.0)


def test_preprocess_channel_order_follows_the_contract(tmp_path: Path) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    rgb = Runner(build_tiny_model(tmp_path / "rgb.onnx"), device="cpu").preprocess(image)
    bgr = Runner(build_tiny_model(tmp_path / "bgr.onnx", metadata={"polypstream.channel_order": "BGR"}), device="cpu")
    assert rgb[2].mean() == pytest.approx(1.0) and bgr.preprocess(image)[0].mean() == pytest.approx(1.0)


def test_batched_run_gives_probabilities_per_frame(tiny_model: Path) -> None:
    runner = Runner(tiny_model, device="cpu", max_batch=4)
    inputs = [
        runner.preprocess(square_image(64, 64, (8, 8, 16, 16))),
        runner.preprocess(np.zeros((64, 64, 3), np.uint8)),
    ]
    probs = runner.run(inputs)
    assert probs.shape == (2, 64, 64)
    assert probs[0, 10, 10] > 0.99 and probs[0, 40, 40] < 0.01 and probs[1].max() < 0.01
    with pytest.raises(ValueError, match="batch of 5"):
        runner.run(inputs * 2 + inputs[:1])


def test_warm_up_times_batch_one_and_max(tiny_model: Path) -> None:
    timings = Runner(tiny_model, device="cpu", max_batch=4).warm_up(rounds=1)
    assert set(timings) == {1, 4} and all(t > 0 for t in timings.values())


def test_the_region_score_floor_is_optional_metadata(tmp_path: Path, tiny_model: Path) -> None:
    assert Runner(tiny_model, device="cpu").contract.min_region_score == 0.0
    floored = build_tiny_model(tmp_path / "f.onnx", metadata={"polypstream.min_region_score": "0.7"})
    assert Runner(floored, device="cpu").contract.min_region_score == 0.7


def test_missing_metadata_is_named(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m.onnx", drop_metadata=("polypstream.threshold",))
    with pytest.raises(ModelError, match=r"lacks 'polypstream.threshold'"):
        Runner(path, device="cpu")


def test_malformed_metadata_is_named() -> None:
    meta = {f"polypstream.{k}": v for k, v in {
        "name": "m", "version": "1", "input_size": "64x64", "channel_order": "RGB", "scale": "1",
        "mean": "0,0", "std": "1,1,1", "output": "probability", "threshold": "0.5",
    }.items()}  # fmt: skip
    with pytest.raises(ModelError, match=r"'polypstream\.mean' must have 3 values"):
        ModelContract.from_metadata(meta, "m.onnx")
    meta["polypstream.mean"] = "0,0,0"
    meta["polypstream.channel_order"] = "YUV"
    with pytest.raises(ModelError, match="channel_order must be RGB or BGR"):
        ModelContract.from_metadata(meta, "m.onnx")


def test_wrong_input_shape_and_corrupt_files_are_refused(tmp_path: Path) -> None:
    mismatched = build_tiny_model(tmp_path / "m.onnx", metadata={"polypstream.input_size": "32x32"})
    with pytest.raises(ModelError, match="does not match"):
        Runner(mismatched, device="cpu")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x01garbage")
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        Runner(corrupt, device="cpu")


def test_fixed_batch_of_one_still_runs_batches(tmp_path: Path) -> None:
    runner = Runner(build_tiny_model(tmp_path / "b1.onnx", batch_dim=1), device="cpu", max_batch=3)
    assert runner.run([np.zeros((3, 64, 64), np.float32)] * 3).shape == (3, 64, 64)


def test_resolve_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    monkeypatch.setenv("POLYPSTREAM_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelError, match=r"no fast\.onnx or accurate\.onnx"):
        resolve_model(None)
    (tmp_path / "fast.onnx").write_bytes(tiny_model.read_bytes())
    (tmp_path / "SHA256SUMS").write_text(f"{hashlib.sha256(tiny_model.read_bytes()).hexdigest()}  fast.onnx\n")
    assert resolve_model(None) == tmp_path / "fast.onnx"
    assert resolve_model("fast") == tmp_path / "fast.onnx"
    assert resolve_model(str(tiny_model)) == tiny_model
    with pytest.raises(ModelError, match=r"accurate\.onnx: the accurate model is not shipped yet .*use --model fast$"):
        resolve_model("accurate")
    with pytest.raises(ModelError, match=r"elsewhere\.onnx: model file not found"):
        resolve_model(str(tmp_path / "elsewhere.onnx"))


def test_a_named_model_that_does_not_match_its_recorded_sha256_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    # Given a named model whose checksum is recorded, then 64 bytes flipped mid-file
    monkeypatch.setenv("POLYPSTREAM_MODELS_DIR", str(tmp_path))
    data = bytearray(tiny_model.read_bytes())
    (tmp_path / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  fast.onnx\n")
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    (tmp_path / "fast.onnx").write_bytes(bytes(data))
    # Then loading it by name (or by default) is refused, saying so; by path it loads
    for spec in ("fast", None):
        with pytest.raises(ModelError, match=r"fast\.onnx: SHA-256 [0-9a-f]{12}… does not match the recorded"):
            resolve_model(spec)
    assert resolve_model(str(tmp_path / "fast.onnx")) == tmp_path / "fast.onnx"


def test_a_named_model_without_a_recorded_sha256_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    monkeypatch.setenv("POLYPSTREAM_MODELS_DIR", str(tmp_path))
    (tmp_path / "fast.onnx").write_bytes(tiny_model.read_bytes())
    with pytest.raises(ModelError, match=r"fast\.onnx: no SHA-256 recorded for it in .*SHA256SUMS"):
        resolve_model("fast")
    record_checksum(tmp_path / "fast.onnx")  # what the training tools do after writing a model
    assert resolve_model("fast") == tmp_path / "fast.onnx"
    assert (
        tmp_path / "SHA256SUMS"
    ).read_text() == f"{hashlib.sha256(tiny_model.read_bytes()).hexdigest()}  fast.onnx\n"


def test_the_shipped_models_match_their_recorded_sha256() -> None:
    shipped = Path(__file__).resolve().parents[2] / "models"
    recorded = (shipped / "SHA256SUMS").read_text().split()
    assert recorded[1::2] == sorted(p.name for p in shipped.glob("*.onnx"))
    for digest, name in zip(recorded[::2], recorded[1::2], strict=True):
        assert hashlib.sha256((shipped / name).read_bytes()).hexdigest() == digest


def test_cuda_request_without_cuda_is_a_clear_error(tiny_model: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ModelError, match="no CUDA"):
        Runner(tiny_model, device="cuda")


@pytest.mark.gpu
def test_cuda_provider_is_chosen_when_usable(tiny_model: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA in this onnxruntime")
    runner = Runner(tiny_model, device="auto", max_batch=4)
    assert runner.provider == "CUDAExecutionProvider"
    runner.warm_up(rounds=1)
    assert runner.io_binding  # fixed device buffers are the default on CUDA
    inputs = [runner.preprocess(square_image(64, 64, (8, 8, 16 + i, 16))) for i in range(3)]
    cpu = Runner(tiny_model, device="cpu", max_batch=4)
    assert np.allclose(runner.run(inputs), cpu.run(inputs), atol=1e-4)


def test_io_binding_to_fixed_buffers_gives_the_same_probabilities(tiny_model: Path) -> None:
    # The CUDA default path, exercised here on CPU buffers.
    plain = Runner(tiny_model, device="cpu", max_batch=4, io_binding=False)
    bound = Runner(tiny_model, device="cpu", max_batch=4, io_binding=True)
    bound.warm_up(rounds=1)
    assert bound.io_binding  # warm-up kept it: binding works
    inputs = [plain.preprocess(square_image(64, 64, (8, 8, 16 + i, 16))) for i in range(3)]
    for n in (1, 3, 2):  # several sizes, each with its own buffers, reused
        assert np.array_equal(bound.run(inputs[:n]), plain.run(inputs[:n]))


def test_io_binding_failure_falls_back_to_plain_runs(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = Runner(tiny_model, device="cpu", max_batch=2, io_binding=True)

    def broken(n: int) -> None:
        raise RuntimeError("no such device")

    monkeypatch.setattr(runner, "_binding", broken)
    runner.warm_up(rounds=1)
    assert not runner.io_binding
    assert runner.run([np.zeros((3, 64, 64), np.float32)]).shape == (1, 64, 64)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def uniform(value: float) -> np.ndarray:
    """A model input with every element `value`: the tiny model's logit is 20 * value - 10."""
    return np.full((3, 64, 64), value, np.float32)


@pytest.mark.parametrize(
    ("batch_dim", "io_binding", "output"),
    [("batch", False, "probability"), ("batch", True, "probability"), (1, False, "probability"),
     ("batch", False, "logit"), ("batch", True, "logit"), (1, False, "logit")],
)  # fmt: skip
def test_every_run_path_gives_each_frame_its_own_probabilities(
    tmp_path: Path, batch_dim: int | str, io_binding: bool, output: str
) -> None:
    model = build_tiny_model(tmp_path / "m.onnx", batch_dim=batch_dim, output=output)
    runner = Runner(model, device="cpu", max_batch=3, io_binding=io_binding)
    probs = runner.run([uniform(0.0), uniform(0.5), uniform(0.55)])
    expected = [sigmoid(-10.0), 0.5, sigmoid(1.0)]  # logits -10, 0 and 1 (a logit model: sigmoid applied)
    assert probs.dtype == np.float32 and probs.shape == (3, 64, 64)
    for frame, value in zip(probs, expected, strict=True):
        assert np.allclose(frame, value, rtol=0, atol=1e-5), (frame[0, 0], value)


@pytest.mark.parametrize("io_binding", [False, True])
def test_a_runs_probabilities_are_not_overwritten_by_the_next_run(tiny_model: Path, io_binding: bool) -> None:
    runner = Runner(tiny_model, device="cpu", max_batch=2, io_binding=io_binding)
    first = runner.run([uniform(0.5)])
    runner.run([uniform(0.0)])
    assert np.allclose(first, 0.5, rtol=0, atol=1e-6)  # the caller owns what run() returned
