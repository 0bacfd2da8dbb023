"""The U-Net the training tools build and export (needs torch: CI runs it beside the GPU rehearsal)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from models.training.train import PRESETS, UNet, export_onnx  # noqa: E402
from polypstream.runner import Runner  # noqa: E402

# export_onnx uses torch's TorchScript exporter on purpose (dynamo=False), which warns of deprecations.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def spatial_sizes(path: Path) -> dict[str, tuple[str, int]]:
    """Each node's first output → (op type, its height: 0 unless a 4-D tensor's height is known)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: v.type.tensor_type.shape.dim for v in [*model.graph.value_info, *model.graph.output]}
    heights = {name: dims[2].dim_value for name, dims in shapes.items() if len(dims) == 4}
    return {node.output[0]: (node.op_type, heights.get(node.output[0], 0)) for node in model.graph.node}


@pytest.mark.parametrize(("half_res", "light_ends"), [(False, False), (True, False), (False, True)])
def test_the_network_answers_at_the_input_resolution(half_res: bool, light_ends: bool) -> None:
    net = UNet((4, 8, 16), half_res=half_res, light_ends=light_ends).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 32, 32)


def test_half_res_keeps_every_layer_but_the_last_upsampling_off_the_full_resolution(tmp_path: Path) -> None:
    preset = replace(PRESETS["fast"], size=32, widths=(4, 8, 16), half_res=True)
    export_onnx(UNet(preset.widths, preset.half_res), preset, tmp_path / "m.onnx", {"version": "test"})
    full = sorted(op for op, height in spatial_sizes(tmp_path / "m.onnx").values() if height == 32)
    assert full == ["Resize", "Sigmoid"]  # the logits upsampled 2×, then the probability
    runner = Runner(tmp_path / "m.onnx", device="cpu", max_batch=1)  # the service's contract holds
    assert runner.run([runner.preprocess(np.zeros((40, 40, 3), np.uint8))]).shape == (1, 32, 32)


def test_the_plain_network_works_at_full_resolution(tmp_path: Path) -> None:
    preset = replace(PRESETS["fast"], size=32, widths=(4, 8, 16))
    export_onnx(UNet(preset.widths), preset, tmp_path / "m.onnx", {"version": "test"})
    full = [op for op, height in spatial_sizes(tmp_path / "m.onnx").values() if height == 32]
    assert full.count("Conv") == 5  # two in the first level, two in the last, and the head


def test_light_ends_keep_one_convolution_in_each_full_resolution_level(tmp_path: Path) -> None:
    preset = replace(PRESETS["fast"], size=32, widths=(4, 8, 16), light_ends=True)
    net = UNet(preset.widths, light_ends=True)
    export_onnx(net, preset, tmp_path / "m.onnx", {"version": "test"})
    nodes = spatial_sizes(tmp_path / "m.onnx").values()
    full = [op for op, height in nodes if height == 32]
    assert full.count("Conv") == 3  # one in the first level, one in the last, and the head
    half = [op for op, height in nodes if height == 16]
    assert half.count("Conv") == 4  # the middle levels keep their two each
    plain = sum(p.numel() for p in UNet(preset.widths).parameters())
    # 4×4×3×3 weights and a BatchNorm of 4 (8 numbers) gone in each of the two levels
    assert plain - sum(p.numel() for p in net.parameters()) == 2 * (4 * 4 * 9 + 8)


@pytest.mark.parametrize(("half_res", "light_ends"), [(False, False), (True, False), (False, True)])
def test_distill_loads_back_the_network_an_onnx_file_holds(tmp_path: Path, half_res: bool, light_ends: bool) -> None:
    # The student starts from the teacher's weights: a convolution mapped to the wrong layer, or
    # batch norm lost in the folding, would start it from another network.
    from models.training.distill import load_unet

    torch.manual_seed(1)
    net = UNet((4, 8, 16), half_res=half_res, light_ends=light_ends)
    for layer in net.modules():  # batch norm that is not the identity, so that folding it matters
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
            layer.weight.data.uniform_(0.5, 1.5)
            layer.bias.data.uniform_(-0.5, 0.5)
    preset = replace(PRESETS["fast"], size=32, widths=(4, 8, 16), half_res=half_res, light_ends=light_ends)
    export_onnx(net.eval(), preset, tmp_path / "m.onnx", {"version": "test"})

    loaded, found = load_unet(tmp_path / "m.onnx")
    assert (found.size, found.widths, found.half_res, found.light_ends) == (32, (4, 8, 16), half_res, light_ends)
    assert not any(isinstance(layer, torch.nn.BatchNorm2d) for layer in loaded.modules())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(loaded(x)), torch.sigmoid(net(x)), atol=1e-5)


def test_multi_scale_training_draws_its_batches_at_each_scale_and_validates_at_the_preset_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from models.training import train

    sizes: list[int] = []
    real_augment = train.augment

    def recording(
        images: torch.Tensor, masks: torch.Tensor, size: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sizes.append(size)
        x, y = real_augment(images, masks, size, gen)
        assert x.shape[-2:] == y.shape[-2:] == (size, size)
        return x, y

    monkeypatch.setattr(train, "augment", recording)
    preset = replace(PRESETS["fast"], size=64, widths=(4, 8), batch=2)
    images, masks = torch.rand(8, 3, 64, 64), (torch.rand(8, 1, 64, 64) > 0.5).float()
    model, history, _ = train.train_model(
        images, masks, images[:2], masks[:2], preset, epochs=6, seed=0, scales=(0.5, 1.0, 1.5), weight_decay=0.05
    )
    assert set(sizes) == {32, 64, 96} and len(sizes) == 6 * 4  # multiples of 32; four steps an epoch
    assert len(history) == 6
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_augmenting_a_batch_copies_nothing_from_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a GPU each host tensor copied to the device made the host wait for the GPU's queue to
    # empty: the random numbers are drawn on the images' device, by a generator that lives there.
    from models.training.train import augment

    copies: list[object] = []
    real_to = torch.Tensor.to

    def counting_to(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        copies.append(args)
        return real_to(self, *args, **kwargs)

    images, masks = torch.rand(4, 3, 32, 32), (torch.rand(4, 1, 32, 32) > 0.5).float()
    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    x, y = augment(images, masks, 32, torch.Generator().manual_seed(0))
    again, _ = augment(images, masks, 32, torch.Generator().manual_seed(0))
    assert copies == []
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 1, 32, 32)
    assert torch.equal(x, again)  # the generator alone decides


def test_the_moving_average_moves_each_weight_and_statistic_by_one_minus_the_decay() -> None:
    from models.training.train import MovingAverage

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    average = MovingAverage(model, decay=0.75)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    average.update(model)
    average.update(model)
    conv, norm = average.module[0], average.module[1]
    assert conv.weight.item() == 1 - 0.75**2  # 0 → 0.25 → 0.4375
    assert norm.running_mean.item() == 2 * (1 - 0.75**2)  # from 0
    assert norm.running_var.item() == 1.0  # 1 throughout
    assert norm.num_batches_tracked.item() == 7  # a count: copied, not averaged
    assert not conv.weight.requires_grad


@pytest.mark.parametrize("name", ["base", "deep", "deep-multiscale", "multiscale-decay-b32"])
def test_every_search_recipe_fits_the_file_budget_and_runs_at_each_of_its_training_sizes(name: str) -> None:
    # Issue 11 allows 15 MB for the accurate model and its fp16 variant together (4 + 2 bytes a
    # parameter); a recipe whose sizes a max-pool cannot halve would fail only on the GPU.
    from models.training.gpu_run import build_parser, recipe
    from models.training.gpu_search import DEFAULT, RECIPES
    from models.training.train import scale_sizes

    assert set(DEFAULT) <= set(RECIPES)
    preset, scales = recipe(build_parser().parse_args(["--cache", "c.npz", "--out", "o", *RECIPES[name]]))
    net = UNet(preset.widths).eval()
    assert sum(p.numel() for p in net.parameters()) * 6 <= 15_000_000
    with torch.no_grad():
        for size in scale_sizes(preset.size, scales):
            assert net(torch.zeros(1, 3, size, size)).shape == (1, 1, size, size)


def test_the_deep_recipe_has_six_levels_and_sees_further_than_the_frame() -> None:
    # What the recipe is for: a gradient from the centre pixel reaches 444 input pixels across
    # with six levels, 220 with accurate 1's five (of a 352-pixel frame).
    from models.training.gpu_run import build_parser, recipe
    from models.training.gpu_search import RECIPES

    def receptive_field(widths: tuple[int, ...]) -> int:
        torch.manual_seed(0)
        x = torch.randn(1, 3, 704, 704, requires_grad=True)
        UNet(widths).eval()(x)[0, 0, 352, 352].backward()
        assert x.grad is not None
        columns = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)) > 0)
        return int(columns.max() - columns.min() + 1)

    deep, _ = recipe(build_parser().parse_args(["--cache", "c", "--out", "o", *RECIPES["deep"]]))
    assert deep.size == 352 and len(deep.widths) == 6
    assert receptive_field(PRESETS["accurate"].widths) == 220
    assert receptive_field(deep.widths) == 444


def test_scale_sizes_round_to_multiples_of_32() -> None:
    from models.training.train import scale_sizes

    assert scale_sizes(352, (1.0,)) == [352]
    assert scale_sizes(352, (0.75, 1.0, 1.25)) == [256, 352, 448]
    assert scale_sizes(40, (0.5, 1.0)) == [32, 32]  # never below 32
