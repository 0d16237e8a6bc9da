"""deploy() on a Ticket and its model: round_to with and without coupled channels, transformer heads and
FFN neurons, sparse Linear formats (forced, so that the test does not depend on which one the timing
picks), the equality check failing where masking and removal differ, and bad arguments."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_same_outputs, digits, zero_channels, zero_weights
from torch import nn

import sparseticket.deploy.formats as formats
from sparseticket.builtin.models import build_model, resnet20, vgg_small
from sparseticket.deploy import DeployMismatch, SparseLinear, deploy, export_onnx, export_program
from sparseticket.methods import Ticket, attach_slimming
from sparseticket.methods.transformer import slimming_coefficients


def _random_gammas(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.1)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model.eval()


def _top_gamma_masks(model: nn.Module, keep: int) -> dict[str, torch.Tensor]:
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            mask = torch.zeros(module.num_features, dtype=torch.bool)
            mask[module.weight.detach().abs().topk(keep).indices] = True
            masks[name] = mask
    return masks


def test_round_to_adds_the_largest_gamma_channels():
    model = _random_gammas(vgg_small(width=16))
    ticket = Ticket({}, "earlybird", channel_masks=_top_gamma_masks(model, 5))
    result = deploy(ticket, model, example_inputs=digits(), round_to=8, measure=False)
    for name, mask in result.ticket.channel_masks.items():
        gamma = model.get_submodule(name).weight.detach().abs()
        assert set(mask.nonzero().flatten().tolist()) == set(gamma.topk(8).indices.tolist())
        assert result.model.get_submodule(name).num_features == 8
    assert_same_outputs(result.model, zero_channels(copy.deepcopy(model), result.ticket.channel_masks), digits())
    plain = deploy(ticket, model, example_inputs=digits(), measure=False)
    assert all(plain.model.get_submodule(name).num_features == 5 for name in ticket.channel_masks)


@pytest.mark.parametrize("round_to", [None, 8, 16])
def test_resnet_with_residual_coupling(round_to):
    model = _random_gammas(resnet20(in_channels=1, width=16), seed=1)
    ticket = Ticket({}, "worm", channel_masks=_top_gamma_masks(model, 3))
    result = deploy(ticket, model, example_inputs=digits(), round_to=round_to, measure=False)
    for name, mask in result.ticket.channel_masks.items():
        count = int(mask.sum())
        assert result.model.get_submodule(name).num_features == count
        assert bool((mask | ~ticket.channel_masks[name]).all())
        if round_to:
            assert count % round_to == 0 or count == mask.numel()
    reference = zero_channels(copy.deepcopy(model), result.ticket.channel_masks)
    assert_same_outputs(result.model, reference, digits())


def test_transformer_heads_and_ffn_round_to():
    torch.manual_seed(0)
    model = build_model("transformer", width=8).eval()
    attach_slimming(model)
    generator = torch.Generator().manual_seed(3)
    masks = {}
    with torch.no_grad():
        for name, coefficients in slimming_coefficients(model).items():
            coefficients.weight.copy_(torch.rand(coefficients.num_features, generator=generator) + 0.5)
            mask = torch.zeros(coefficients.num_features, dtype=torch.bool)
            mask[coefficients.weight.topk(max(1, coefficients.num_features // 3)).indices] = True
            masks[name] = mask
    result = deploy(Ticket({}, "earlybird", channel_masks=masks), model, example_inputs=digits(), round_to=8,
                    measure=False)
    for name, mask in result.ticket.channel_masks.items():
        if name.endswith("ffn_coefficients"):
            assert int(mask.sum()) % 8 == 0 and int(mask.sum()) > int(masks[name].sum())
        else:
            assert torch.equal(mask, masks[name])  # heads: as drawn
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in result.model.modules())  # folded
    assert_same_outputs(result.model, zero_channels(copy.deepcopy(model), result.ticket.channel_masks), digits())
    _, exported = export_program(result.model, digits(), result.masked)
    assert exported.error <= 1e-5


def _force(monkeypatch, label: str) -> None:
    """Every pruned Linear for which ``label`` is a candidate gets it, whatever the timing says."""
    def chosen(linear, shapes, kinds, repeats, device):
        labels = [candidate[0] for candidate in formats.candidates(tuple(linear.weight.shape), kinds)]
        return (label if label in labels else "dense"), {"dense": 1.0, label: 0.5}
    monkeypatch.setattr(formats, "_time_layer", chosen)


def _weight_ticket(model: nn.Module, density: float, seed: int = 0) -> Ticket:
    generator = torch.Generator().manual_seed(seed)
    masks = {name: torch.rand(parameter.shape, generator=generator) < density
             for name, parameter in model.named_parameters() if parameter.dim() > 1}
    return Ticket(masks, "imp")


@pytest.mark.parametrize("label", ["csr", "bsr8"])
def test_sparse_linear_layers_equal_and_export(monkeypatch, tmp_path, label):
    _force(monkeypatch, label)
    torch.manual_seed(0)
    model = build_model("mlp", width=8).eval()  # Linear 64->64 (BN) -> 32 (BN) -> 10
    ticket = _weight_ticket(model, 0.2)
    result = deploy(ticket, model, example_inputs=digits(), batch_sizes=(1,), repeats=1)
    sparse = {name: module for name, module in result.model.named_modules() if isinstance(module, SparseLinear)}
    assert set(sparse) >= {"1", "4"}  # the hidden layers; the classifier too where its shape allows the format
    reference = zero_weights(copy.deepcopy(model), ticket.masks)
    for name, module in sparse.items():
        assert torch.equal(module.dense_weight(), reference.get_submodule(name).weight)
        assert module.layout == label[:3]
    assert_same_outputs(result.model, reference, digits())
    # CSR skips every zero; BSR only all-zero blocks (at density 0.2 almost every 8x8 block holds a weight)
    assert (result.report.deployed.macs < result.report.dense.macs) == (label == "csr")
    program, exported = export_program(result.model, digits(), reference)
    assert_same_outputs(program.module(), reference, digits(7))
    if label != "csr":
        return
    pytest.importorskip("onnxruntime")
    onnx = export_onnx(result.model, digits(), tmp_path / "mlp.onnx", reference)
    assert onnx.error <= 1e-5 and (tmp_path / "mlp.onnx").stat().st_size > 0


def test_sparse_linear_module():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 48, generator=generator) * (torch.rand(32, 48, generator=generator) < 0.1)
    bias = torch.randn(32, generator=generator)
    x = torch.randn(3, 5, 48, generator=generator)
    want = nn.functional.linear(x, weight, bias)
    for layout, block in (("csr", None), ("bsr", 4), ("bsr", 16)):
        layer = SparseLinear(weight, bias, layout, block)
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.to_dense_linear()(x), want, rtol=1e-5, atol=1e-5)
        copy_ = copy.deepcopy(layer)
        torch.testing.assert_close(copy_(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="blocksize 5 must divide"):
        SparseLinear(weight, bias, "bsr", 5)


def test_the_check_fails_where_masking_is_not_removal():
    # a pruned channel still feeds sigmoid(0) = 0.5 to the next layer in the masked model; removed, it feeds nothing
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Sigmoid(), nn.Conv2d(8, 8, 3),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    mask = torch.tensor([True, False] * 4)
    with pytest.raises(DeployMismatch, match="differs from the masked dense model"):
        deploy(Ticket({}, "earlybird", channel_masks={"1": mask}), model, example_inputs=digits(), measure=False)


def test_bad_arguments():
    model = vgg_small(width=8)
    channel = Ticket({}, "earlybird", channel_masks=_top_gamma_masks(model, 4))
    with pytest.raises(ValueError, match="needs its model and example inputs"):
        deploy(channel, model)
    with pytest.raises(ValueError, match="round_to must be an integer >= 1"):
        deploy(channel, model, example_inputs=digits(), round_to=0)
    with pytest.raises(ValueError, match="applies to channel tickets"):
        deploy(_weight_ticket(model, 0.5), model, example_inputs=digits(), round_to=8)
    with pytest.raises(ValueError, match="no such folder"):
        deploy("/nonexistent/run")
    result = deploy(_weight_ticket(model, 0.5), model, example_inputs=digits(), formats=(), measure=False)
    assert all(layer.format == "dense" for layer in result.report.layers)
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        result.export("model.tflite", "tflite")
