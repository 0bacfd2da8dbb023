"""The model contract read from ONNX metadata, provider choice and batched runs."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from polypstream import runner as runner_module
from polypstream.alerts import AlertRule
from polypstream.runner import SPINNING, ModelContract, ModelError, Runner, record_checksum, resolve_model
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


def test_preprocess_normalises_each_channel_with_its_own_mean_and_std(tmp_path: Path) -> None:
    # Given a model whose contract has a different mean and std per channel (values exact in binary)
    meta = {"polypstream.scale": "0.0078125", "polypstream.mean": "0.5,0.25,0", "polypstream.std": "0.5,0.25,1"}
    runner = Runner(build_tiny_model(tmp_path / "m.onnx", metadata=meta), device="cpu")
    image = np.empty((64, 64, 3), np.uint8)
    image[...] = (128, 64, 0)  # B, G, R
    # When it is preprocessed, then R = 0, G = 64, B = 128 become (0/128 - 0.5) / 0.5, (0.5 - 0.25) / 0.25, (1 - 0) / 1
    tensor = runner.preprocess(image)
    assert tensor.shape == (3, 64, 64) and tensor.flags.c_contiguous
    assert [float(v) for v in np.unique(tensor.reshape(3, -1), axis=1)[:, 0]] == [-1.0, 1.0, 1.0]


def test_preprocess_gives_the_hwc_formula_s_values_bit_for_bit(tmp_path: Path) -> None:
    # The plane-by-plane arithmetic must not change any model input: the shipped models' normalisation
    meta = {"polypstream.mean": "0.485,0.456,0.406", "polypstream.std": "0.229,0.224,0.225"}
    runner = Runner(build_tiny_model(tmp_path / "m.onnx", metadata=meta), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgb = image[..., ::-1].astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    expected = ((rgb * np.float32(1 / 255) - mean) * (1.0 / std)).transpose(2, 0, 1)
    assert np.array_equal(runner.preprocess(image), expected)


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
    meta["polypstream.channel_order"] = "RGB"
    meta["polypstream.resize"] = "cubic"
    with pytest.raises(ModelError, match="resize must be area or linear, not cubic"):
        ModelContract.from_metadata(meta, "m.onnx")


def test_preprocess_shrinks_as_the_contract_says_averaging_by_default(tmp_path: Path) -> None:
    # A 6×6 grey frame → 2×2: each output pixel covers a 3×3 block whose centre is 200 and
    # whose other eight pixels are 20. Averaging gives (200 + 8 · 20) / 9 = 40; linear
    # interpolation samples at (i + 0.5) · 3 - 0.5 = 3i + 1, the block's centre: 200.
    image = np.full((6, 6, 3), 20, np.uint8)
    image[1::3, 1::3] = 200
    meta = {"polypstream.scale": "1"}
    area = Runner(build_tiny_model(tmp_path / "a.onnx", size=2, metadata=meta), device="cpu")
    linear_meta = {**meta, "polypstream.resize": "linear"}
    linear = Runner(build_tiny_model(tmp_path / "l.onnx", size=2, metadata=linear_meta), device="cpu")
    assert (area.contract.resize, linear.contract.resize) == ("area", "linear")
    assert area.preprocess(image).tolist() == np.full((3, 2, 2), 40.0).tolist()
    assert linear.preprocess(image).tolist() == np.full((3, 2, 2), 200.0).tolist()


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
    no_accurate = r"accurate\.onnx: this models folder has no accurate model; use --model fast$"
    with pytest.raises(ModelError, match=no_accurate):
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


@pytest.mark.gpu
def test_on_cuda_convolutions_are_chosen_by_heuristics_and_every_batch_size_is_warmed_up(tiny_model: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA in this onnxruntime")
    runner = Runner(tiny_model, device="cuda", max_batch=4)
    options = runner.session.get_provider_options()["CUDAExecutionProvider"]
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert sorted(runner.warm_up(rounds=1)) == [1, 2, 3, 4]


def test_every_batch_size_is_warmed_up_on_cuda_and_the_extremes_on_a_cpu() -> None:
    assert runner_module.warm_up_sizes(4, on_cuda=True) == [1, 2, 3, 4]
    assert runner_module.warm_up_sizes(8, on_cuda=False) == [1, 8]
    assert runner_module.warm_up_sizes(1, on_cuda=False) == [1]


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


# --- the contract, the providers, the checks: each rule pinned ----------------------------


def test_mean_and_std_triples_are_read_in_order_and_must_be_three() -> None:
    meta = {f"polypstream.{k}": v for k, v in {
        "name": "m", "version": "1", "input_size": "32x16", "channel_order": "bgr", "scale": "0.5",
        "mean": "0.1,0.2,0.3", "std": "0.4,0.5,0.6", "output": "logit", "threshold": "0.4",
    }.items()}  # fmt: skip
    c = runner_module.ModelContract.from_metadata(meta, "m.onnx")
    assert (c.input_width, c.input_height, c.channel_order, c.scale) == (32, 16, "BGR", 0.5)
    assert (c.mean, c.std, c.output, c.threshold, c.min_region_score) == (
        (0.1, 0.2, 0.3),
        (0.4, 0.5, 0.6),
        "logit",
        0.4,
        0.0,
    )
    for bad in ("0.1,0.2", "0.1,0.2,0.3,0.4"):
        with pytest.raises(ModelError, match=r"m\.onnx: 'polypstream\.mean' must have 3 values, got [24]"):
            runner_module.ModelContract.from_metadata({**meta, "polypstream.mean": bad}, "m.onnx")


def test_a_models_alert_rule_is_read_from_its_metadata_and_must_be_one_that_can_be_met() -> None:
    meta = {f"polypstream.{k}": v for k, v in {
        "name": "m", "version": "1", "input_size": "32x32", "channel_order": "RGB", "scale": "1",
        "mean": "0,0,0", "std": "1,1,1", "output": "probability", "threshold": "0.5",
    }.items()}  # fmt: skip
    assert runner_module.ModelContract.from_metadata(meta, "m.onnx").alert_rule is None  # the service's default
    rule = runner_module.ModelContract.from_metadata({**meta, "polypstream.alert_rule": "4,4,3"}, "m.onnx").alert_rule
    assert rule == AlertRule(4, 4, 3)
    for bad, why in (
        ("4,2,4", r"alert rule: need 1 <= min_seen \(4\) <= window \(2\) <= 64"),
        ("4,4", r"alert_rule must be N,M,H, not '4,4'"),
        ("a,b,c", "invalid literal"),
    ):
        with pytest.raises(ModelError, match=rf"m\.onnx: malformed polypstream metadata \({why}"):
            runner_module.ModelContract.from_metadata({**meta, "polypstream.alert_rule": bad}, "m.onnx")


def test_preprocessing_scales_subtracts_the_mean_and_divides_by_the_std(tmp_path: Path) -> None:
    model = build_tiny_model(
        tmp_path / "n.onnx", metadata={"polypstream.mean": "0.25,0.5,0.75", "polypstream.std": "0.5,0.25,2"}
    )
    runner = Runner(model, device="cpu")
    image = np.full((64, 64, 3), (51, 102, 204), np.uint8)  # BGR: R = 204/255 = 0.8, G = 0.4, B = 0.2
    tensor = runner.preprocess(image)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == np.float32
    assert np.allclose(tensor[:, 0, 0], [(0.8 - 0.25) / 0.5, (0.4 - 0.5) / 0.25, (0.2 - 0.75) / 2], atol=1e-6)


# CUDA with cuDNN's heuristics: onnxruntime's default times every algorithm again for each new
# batch size (first light: inference p90 160 ms at 8 streams on the H100).
CUDA = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})


@pytest.mark.parametrize(
    ("device", "cuda", "providers"),
    [
        ("cpu", True, ["CPUExecutionProvider"]),
        ("cuda", True, [CUDA, "CPUExecutionProvider"]),
        ("auto", True, [CUDA, "CPUExecutionProvider"]),
        ("auto", False, ["CPUExecutionProvider"]),
    ],
)
def test_the_device_chooses_the_providers(
    monkeypatch: pytest.MonkeyPatch, device: str, cuda: bool, providers: list[object]
) -> None:
    monkeypatch.setattr(runner_module, "cuda_available", lambda: cuda)
    assert runner_module._providers(device) == providers


def test_an_unknown_device_or_cuda_without_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "cuda_available", lambda: False)
    with pytest.raises(ModelError, match=r"^CUDAExecutionProvider requested but this onnxruntime build has no CUDA$"):
        runner_module._providers("cuda")
    with pytest.raises(ModelError, match=r"^unknown device 'gpu' \(auto, cuda or cpu\)$"):
        runner_module._providers("gpu")


def test_cuda_asked_for_but_not_given_by_onnxruntime_is_refused(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "_providers", lambda device: ["CPUExecutionProvider"])
    with pytest.raises(ModelError, match="CUDA requested but onnxruntime fell back to CPUExecutionProvider"):
        Runner(tiny_model, device="cuda")
    assert Runner(tiny_model, device="auto").provider == "CPUExecutionProvider"


def test_session_settings_and_defaults(tiny_model: Path) -> None:
    runner = Runner(tiny_model, device="cpu")
    assert (runner.max_batch, runner.input_size, runner.io_binding) == (8, (64, 64), False)
    options = runner.session.get_session_options()
    assert (options.log_severity_level, options.intra_op_num_threads) == (3, 0)
    assert options.get_session_config_entry(SPINNING) == "0"  # idle threads sleep: the CPU is shared
    spinning = Runner(tiny_model, device="cpu", spin=True).session.get_session_options()
    assert spinning.get_session_config_entry(SPINNING) == "1"  # the model alone, back to back
    assert Runner(tiny_model, device="cpu", threads=2).session.get_session_options().intra_op_num_threads == 2


@pytest.mark.parametrize(("message", "shown"), [("first line\nsecond line", "first line"), ("", "RuntimeError")])
def test_a_model_onnxruntime_cannot_load_is_named_with_the_first_line_of_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, message: str, shown: str
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError(message)

    monkeypatch.setattr(runner_module.ort, "InferenceSession", refuse)
    with pytest.raises(ModelError, match=rf"^{tmp_path / 'x.onnx'}: cannot load ONNX model \({shown}\)$"):
        Runner(tmp_path / "x.onnx", device="cpu")


def model_with(path: Path, inputs: list[tuple[str, list[int | str]]], output_shape: list[int | str]) -> Path:
    """A contract-complete model with the given inputs (the first feeds an Identity) and output shape."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [inputs[0][0]], ["probability"])],
        "shapes",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, output_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"name": "s", "version": "1", "input_size": "8x8", "channel_order": "RGB", "scale": "1", "mean": "0,0,0",
            "std": "1,1,1", "output": "probability", "threshold": "0.5"}  # fmt: skip
    for key, value in meta.items():
        model.metadata_props.add(key=f"polypstream.{key}", value=value)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([("a", ["n", 3, 8, 8]), ("b", ["n", 3, 8, 8])], r"expected one input and one output, got 2 and 1"),
        ([("a", ["n", 3, 8, 9])], r"input shape \['n', 3, 8, 9\] does not match N×3×8×8"),
        ([("a", ["n", 3, 8])], r"input shape \['n', 3, 8\] does not match N×3×8×8"),
        ([("a", [2, 3, 8, 8])], r"batch axis must be dynamic \(got 2\)"),
    ],
)
def test_models_breaking_the_input_contract_are_refused(
    tmp_path: Path, inputs: list[tuple[str, list[int | str]]], message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        Runner(model_with(tmp_path / "m.onnx", inputs, ["n", 3, 8, 8]), device="cpu")


def test_a_batch_of_one_fixed_in_the_model_is_allowed_and_run_frame_by_frame(tmp_path: Path) -> None:
    runner = Runner(model_with(tmp_path / "m.onnx", [("a", [1, 3, 8, 8])], [1, 3, 8, 8]), device="cpu", max_batch=2)
    assert runner.fixed_batch_one and (runner.input_name, runner.output_name) == ("a", "probability")


def test_io_binding_needs_a_fixed_output_shape_and_falls_back_without_one(tiny_model: Path) -> None:
    runner = Runner(tiny_model, device="cpu", max_batch=2, io_binding=True)
    assert runner._output_tail == (1, 64, 64)
    runner._output_tail = (1, -1, -1)  # as a model whose output size depends on its input reports it
    with pytest.raises(ModelError, match=r"output shape \(1, -1, -1\) is not fixed; cannot bind buffers"):
        runner._binding(1)
    runner.warm_up(rounds=1)
    assert not runner.io_binding  # it serves with plain runs instead


def test_an_empty_or_oversized_batch_is_refused(tiny_model: Path) -> None:
    runner = Runner(tiny_model, device="cpu", max_batch=2)
    for n in (0, 3):
        with pytest.raises(ValueError, match=rf"^batch of {n} frames \(1\.\.2 allowed\)$"):
            runner.run([np.zeros((3, 64, 64), np.float32)] * n)


def test_warm_up_runs_each_batch_size_twice_and_reports_the_last_runs_time(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = Runner(tiny_model, device="cpu", max_batch=4)
    sizes: list[int] = []
    real_run = runner.run
    monkeypatch.setattr(runner, "run", lambda tensors: sizes.append(len(tensors)) or real_run(tensors))
    ticks = iter(float(t) for t in (0, 1, 10, 12, 20, 24, 30, 38))  # each run: 1, 2, 4, then 8 s
    monkeypatch.setattr(runner_module.time, "perf_counter", lambda: next(ticks))
    assert runner.warm_up() == {1: 2.0, 4: 8.0}
    assert sizes == [1, 1, 4, 4]


def test_checksums_file_lines_need_a_digest_and_a_name(tmp_path: Path) -> None:
    (tmp_path / "SHA256SUMS").write_text("ABC  *fast.onnx\n  lonely.onnx\ndef  \n\n0123  accurate.onnx\n")
    assert runner_module.read_checksums(tmp_path) == {"fast.onnx": "abc", "accurate.onnx": "0123"}


def test_a_named_model_that_does_not_match_says_both_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "fast.onnx"
    model.write_bytes(b"not the recorded model")
    actual = hashlib.sha256(b"not the recorded model").hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{'f' * 64}  fast.onnx\n")
    monkeypatch.setenv("POLYPSTREAM_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelError) as error:
        resolve_model("fast")
    assert str(error.value) == (
        f"{model}: SHA-256 {actual[:12]}… does not match the recorded {'f' * 12}…; the file is damaged "
        "or was replaced (restore it, or load a model of your own by path)"
    )


def test_a_missing_fast_model_is_not_found_and_the_default_prefers_accurate_only_on_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    monkeypatch.setenv("POLYPSTREAM_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelError, match=r"fast\.onnx: model file not found$"):
        resolve_model("fast")
    for name in ("fast", "accurate"):
        shutil.copy(tiny_model, tmp_path / f"{name}.onnx")
        runner_module.record_checksum(tmp_path / f"{name}.onnx")
    monkeypatch.setattr(runner_module, "cuda_available", lambda: True)
    assert resolve_model(None).name == "accurate.onnx"
    monkeypatch.setattr(runner_module, "cuda_available", lambda: False)
    assert resolve_model(None).name == "fast.onnx"


def test_a_contract_is_a_value() -> None:
    c = runner_module.ModelContract("m", "1", 8, 8, "RGB", 1.0, (0, 0, 0), (1, 1, 1), "probability", 0.5)
    assert c.min_region_score == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.threshold = 0.1  # type: ignore[misc]


def test_a_batch_size_the_model_cannot_run_stops_the_warm_up_in_one_line(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = Runner(tiny_model, device="cpu", max_batch=4)
    real_run = runner.run

    def out_of_memory_past_two(tensors: list[np.ndarray]) -> np.ndarray:
        if len(tensors) > 2:  # onnxruntime's words, as --max-batch 100000 gave them
            raise RuntimeError(
                "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. "
                "Name:'/net/down.0/Relu' Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 "
                "Failed to allocate memory for requested buffer of size 8589934592"
            )
        return real_run(tensors)

    monkeypatch.setattr(runner, "run", out_of_memory_past_two)
    with pytest.raises(ModelError) as err:
        runner.warm_up(rounds=1)
    assert str(err.value) == (
        f"{tiny_model.name}: a batch of 4 frames does not run on CPUExecutionProvider (out of memory); "
        "lower --max-batch"
    )


def test_why_a_run_failed_is_said_in_a_few_words() -> None:
    assert runner_module.run_failure(MemoryError()) == "out of memory"
    assert runner_module.run_failure(RuntimeError("CUDA failure 2: out of memory ; GPU=0")) == "out of memory"
    assert runner_module.run_failure(RuntimeError("bad shape\nat node 3")) == "bad shape"
    assert runner_module.run_failure(RuntimeError("x" * 300)) == "x" * 200
    assert runner_module.run_failure(ValueError()) == "ValueError"
