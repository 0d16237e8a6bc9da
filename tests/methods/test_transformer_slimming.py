"""EarlyBERT slimming: coefficients per head / FFN neuron, EarlyBird on them, physical pruning that is exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseticket.builtin.transformer_model import TinyTransformer
from sparseticket.methods import EarlyBird
from sparseticket.methods.transformer import (
    SelfAttention,
    attach_slimming,
    prune_transformer,
    slimming_coefficients,
)

DIM, HEADS, FFN, LAYERS = 16, 4, 24, 2
KINDS = ("tiny", "encoder", "sequential_norm_first", "seq_first")


def make_model(kind: str) -> nn.Module:
    """A 2-block model with 4 heads and 24 FFN neurons per block, dropout 0.1 where torch has it."""
    if kind == "tiny":
        return TinyTransformer(64, 10, dim=DIM, heads=HEADS, ffn=FFN, layers=LAYERS)
    if kind == "encoder":
        return nn.TransformerEncoder(nn.TransformerEncoderLayer(DIM, HEADS, FFN, batch_first=True), LAYERS,
                                     enable_nested_tensor=False)
    if kind == "sequential_norm_first":
        return nn.Sequential(*(nn.TransformerEncoderLayer(DIM, HEADS, FFN, batch_first=True, norm_first=True,
                                                          activation="gelu") for _ in range(LAYERS)))
    return nn.TransformerEncoder(nn.TransformerEncoderLayer(DIM, HEADS, FFN), LAYERS, enable_nested_tensor=False)


def example(kind: str, generator: torch.Generator) -> torch.Tensor:
    """A batch of 5: flat 8x8 images for TinyTransformer, 7 tokens of 16 features otherwise."""
    if kind == "tiny":
        return torch.randn(5, 64, generator=generator)
    if kind == "seq_first":
        return torch.randn(7, 5, DIM, generator=generator)
    return torch.randn(5, 7, DIM, generator=generator)


def random_coefficients(model: nn.Module, generator: torch.Generator) -> None:
    """Distinct coefficients in [0.5, 1.5) (away from 1, so folding mistakes show)."""
    with torch.no_grad():
        for coefficients in slimming_coefficients(model).values():
            coefficients.weight.copy_(torch.rand(coefficients.weight.shape, generator=generator) + 0.5)


def random_masks(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Keep each head / neuron with probability 1/2."""
    return {name: torch.rand(c.weight.shape, generator=generator) < 0.5
            for name, c in slimming_coefficients(model).items()}


def zero_pruned(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Set the coefficients of every masked-out head / neuron to 0."""
    coefficients = slimming_coefficients(model)
    with torch.no_grad():
        for name, mask in masks.items():
            coefficients[name].weight[~mask] = 0


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_attach_leaves_outputs_unchanged(kind: str, generator: torch.Generator) -> None:
    model = make_model(kind).eval()
    x = example(kind, generator)
    before = model(x)
    names = attach_slimming(model)
    assert len(names) == 2 * LAYERS
    assert list(slimming_coefficients(model)) == names
    for name, module in model.named_modules():
        if name in names:
            assert module.weight.tolist() == [1.0] * module.num_features
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_coefficients(kind: str, generator: torch.Generator) -> None:
    model = make_model(kind)
    attach_slimming(model)
    model(example(kind, generator)).square().mean().backward()
    for name, coefficients in slimming_coefficients(model).items():
        assert coefficients.weight.grad is not None and coefficients.weight.grad.abs().sum() > 0, name


def test_groups_and_names() -> None:
    model = make_model("encoder")
    attach_slimming(model)
    groups = {name: c.group for name, c in slimming_coefficients(model).items()}
    assert groups == {"layers.0.head_coefficients": "heads:layers.0", "layers.0.ffn_coefficients": "ffn",
                      "layers.1.head_coefficients": "heads:layers.1", "layers.1.ffn_coefficients": "ffn"}
    state = model.state_dict()
    assert "layers.0.head_coefficients.weight" in state
    assert not any("_coefficients" in key and "parametrizations" in key for key in state)


@pytest.mark.parametrize("kind", ("tiny", "encoder"))
def test_earlybird_heads_layerwise_ffn_global(kind: str, generator: torch.Generator) -> None:
    model = make_model(kind)
    names = attach_slimming(model)
    eb = EarlyBird(model, ratio=[0.25, 0.5])
    x = example(kind, generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):  # EarlyBird runs unchanged: L1 step hook and epoch end
        optimizer.zero_grad()
        model(x).square().mean().backward()
        eb.after_backward()
        optimizer.step()
        eb.epoch_end()
    random_coefficients(model, generator)
    eb.epoch_end()
    coefficients = slimming_coefficients(model)
    ffn = torch.cat([coefficients[n].weight.detach() for n in names if n.endswith("ffn_coefficients")])
    # EarlyBird's rule: keep |c| > sorted[int(n * ratio)] of the group (strict). 4 distinct heads:
    # ratio 0.25 keeps each layer's 2 largest, ratio 0.5 its largest one.
    for ratio, heads_kept in ((0.25, 2), (0.5, 1)):
        masks = eb.channel_mask(ratio)
        assert set(masks) == set(names)
        threshold = ffn.sort().values[int(ffn.numel() * ratio)]
        for name in names:
            values = coefficients[name].weight.detach().abs()
            if name.endswith("head_coefficients"):  # thresholded within the layer
                expected = torch.zeros(HEADS, dtype=torch.bool)
                expected[values.topk(heads_kept).indices] = True
            else:  # one threshold across all layers' FFN neurons
                expected = values > threshold
            assert torch.equal(masks[name], expected), (ratio, name)
        ffn_kept = sum(int(masks[n].sum()) for n in names if n.endswith("ffn_coefficients"))
        assert ffn_kept == ffn.numel() - int(ffn.numel() * ratio) - 1


def test_l1_reaches_coefficients() -> None:
    model = make_model("tiny")
    attach_slimming(model)
    eb = EarlyBird(model, l1=0.5)
    for coefficients in slimming_coefficients(model).values():
        coefficients.weight.grad = torch.zeros_like(coefficients.weight)
    eb.after_backward()
    for coefficients in slimming_coefficients(model).values():
        torch.testing.assert_close(coefficients.weight.grad, torch.full_like(coefficients.weight, 0.5))


@pytest.mark.parametrize("kind", KINDS)
def test_pruning_is_exact(kind: str, generator: torch.Generator) -> None:
    model = make_model(kind)
    attach_slimming(model)
    random_coefficients(model, generator)
    masks = random_masks(model, generator)
    zero_pruned(model, masks)
    x = example(kind, generator)
    model.eval()
    pruned = prune_transformer(model, masks)
    for grad_enabled in (False, True):  # no_grad lets torch's fused encoder fast path run before pruning
        with torch.set_grad_enabled(grad_enabled):
            torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=1e-5)
    assert parameter_count(pruned) < parameter_count(model)
    for name, coefficients in slimming_coefficients(pruned).items():
        assert coefficients.num_features == max(int(masks[name].sum()), 1)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_pruning_with_padding_mask(generator: torch.Generator) -> None:
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(DIM, HEADS, FFN, batch_first=True), LAYERS)
    attach_slimming(model)
    random_coefficients(model, generator)
    masks = random_masks(model, generator)
    masks["layers.0.head_coefficients"][:] = True  # layer 0 keeps nn.MultiheadAttention, layer 1 does not
    masks["layers.1.head_coefficients"][0] = False
    zero_pruned(model, masks)
    model.eval()
    x = torch.randn(5, 7, DIM, generator=generator)
    padding = torch.zeros(5, 7, dtype=torch.bool)
    padding[:3, 5:] = True
    pruned = prune_transformer(model, masks)
    with torch.no_grad():  # the unpruned model takes torch's nested-tensor path: padded outputs become 0
        expected, actual = model(x, src_key_padding_mask=padding), pruned(x, src_key_padding_mask=padding)
    torch.testing.assert_close(actual[~padding], expected[~padding], rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_first", (True, False))
def test_self_attention_matches_multihead(batch_first: bool, generator: torch.Generator) -> None:
    multihead = nn.MultiheadAttention(DIM, HEADS, batch_first=batch_first).eval()
    attention = SelfAttention.from_multihead(multihead).eval()
    x = torch.randn(5, 7, DIM, generator=generator)
    x = x if batch_first else x.transpose(0, 1)
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    padding = torch.zeros(5, 7, dtype=torch.bool)
    padding[1, 4:] = True
    for masks in ({}, {"attn_mask": causal}, {"attn_mask": causal < 0}, {"key_padding_mask": padding},
                  {"attn_mask": causal < 0, "key_padding_mask": padding, "is_causal": True}):
        expected = multihead(x, x, x, need_weights=False, **masks)[0]
        torch.testing.assert_close(attention(x, x, x, **masks)[0], expected, rtol=0, atol=1e-5)
    unbatched = x[0] if batch_first else x[:, 0]
    torch.testing.assert_close(attention(unbatched)[0], multihead(unbatched, unbatched, unbatched)[0],
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ("tiny", "encoder"))
def test_pruned_model_trains(kind: str, generator: torch.Generator) -> None:
    model = make_model(kind)
    attach_slimming(model)
    pruned = prune_transformer(model, random_masks(model, generator))
    x = example(kind, generator)
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1)
    target = torch.randn(pruned(x).shape, generator=generator)
    pruned.eval()  # no dropout: the loss change comes from the step
    loss = nn.functional.mse_loss(pruned(x), target)
    loss.backward()
    optimizer.step()
    assert nn.functional.mse_loss(pruned(x), target).item() < loss.item()
    assert all(p.grad is not None for p in pruned.parameters())


def test_pruning_again_and_earlybird_on_pruned(generator: torch.Generator) -> None:
    model = make_model("encoder")
    attach_slimming(model)
    once = prune_transformer(model, random_masks(model, generator))
    eb = EarlyBird(once)
    eb.epoch_end()
    twice = prune_transformer(once, eb.channel_mask())
    assert parameter_count(twice) < parameter_count(once)
    twice(example("encoder", generator)).sum().backward()


@pytest.mark.parametrize("kind", ("tiny", "encoder"))
def test_never_removes_everything(kind: str, generator: torch.Generator) -> None:
    model = make_model(kind)
    attach_slimming(model)
    random_coefficients(model, generator)
    coefficients = slimming_coefficients(model)
    masks = {name: torch.zeros(c.num_features, dtype=torch.bool) for name, c in coefficients.items()}
    pruned = prune_transformer(model, masks)
    for name, kept in slimming_coefficients(pruned).items():
        original = coefficients[name].weight.detach()
        assert kept.weight.tolist() == [original.abs().max().item()], name
    blocks = pruned.blocks if kind == "tiny" else pruned.layers
    assert all(block.self_attn.num_heads == 1 and block.linear1.out_features == 1 for block in blocks)
    assert pruned(example(kind, generator)).isfinite().all()


def test_input_model_untouched(generator: torch.Generator) -> None:
    model = make_model("encoder")
    attach_slimming(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    prune_transformer(model, random_masks(model, generator))
    assert isinstance(model.layers[0].self_attn, nn.MultiheadAttention)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_bad_inputs() -> None:
    model = make_model("tiny")
    with pytest.raises(ValueError, match="attach_slimming"):
        prune_transformer(model, {})
    attach_slimming(model)
    with pytest.raises(ValueError, match="already"):
        attach_slimming(model)
    with pytest.raises(ValueError, match="blocks.9.head_coefficients"):
        prune_transformer(model, {"blocks.9.head_coefficients": torch.ones(HEADS, dtype=torch.bool)})
    with pytest.raises(ValueError, match="blocks.0.head_coefficients"):
        prune_transformer(model, {"blocks.0.head_coefficients": torch.ones(HEADS + 1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="blocks.1.ffn_coefficients"):
        prune_transformer(model, {"blocks.1.ffn_coefficients": torch.ones(FFN)})
    with pytest.raises(ValueError, match="nothing to slim"):
        attach_slimming(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="divisible"):
        TinyTransformer(64, 10, dim=10, heads=4)
    with pytest.raises(ValueError, match="tokens"):
        TinyTransformer(63, 10)


# ------------------------------------------------------------------ where the coefficients are applied
def _scaled_linear(width: int) -> tuple[nn.Linear, torch.Tensor]:
    """A Linear(12, 5) whose columns a ChannelCoefficients scales (12 / width coefficients, not all 1)."""
    from sparseticket.methods.bn_channels import ChannelCoefficients
    from sparseticket.methods.transformer import _scale_columns_by

    torch.manual_seed(0)
    linear = nn.Linear(12, 5)
    coefficients = ChannelCoefficients(12 // width, "g")
    with torch.no_grad():
        coefficients.weight.uniform_(-1.5, 1.5)
    _scale_columns_by(linear, coefficients, width)
    return linear, coefficients.weight


@pytest.mark.parametrize("width", [1, 4])
@pytest.mark.parametrize("rows", [2, 20])  # 2 x 12 inputs < 60 weights: the input is scaled; 20 x 12: the weight
def test_scaling_route_is_the_cheaper_one_and_exact(width, rows, monkeypatch, generator):
    """Scaling the input's features or the weight's columns: the cheaper one is taken, and the output
    and every gradient equal F.linear with the explicitly scaled weight."""
    import sparseticket.methods.transformer as transformer

    linear, coefficients = _scaled_linear(width)
    weight = linear.parametrizations.weight.original
    scaled_shapes = []
    original = transformer.scale_columns
    monkeypatch.setattr(transformer, "scale_columns",
                        lambda matrix, *args, **kwargs: scaled_shapes.append(tuple(matrix.shape))
                        or original(matrix, *args, **kwargs))
    x = torch.randn(rows, 12, generator=generator, requires_grad=True)
    upstream = torch.randn(rows, 5, generator=generator)
    got = linear(x)
    (got * upstream).sum().backward()
    assert scaled_shapes == [(rows, 12) if rows * 12 < weight.numel() else (5, 12)]
    grads = [x.grad, weight.grad, coefficients.grad, linear.bias.grad]

    leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, coefficients, linear.bias)]
    expected = nn.functional.linear(leaves[0], leaves[1] * leaves[2].repeat_interleave(width), leaves[3])
    (expected * upstream).sum().backward()
    torch.testing.assert_close(got, expected)
    for have, leaf in zip(grads, leaves):
        torch.testing.assert_close(have, leaf.grad)


def test_weight_reads_scaled_outside_the_forward_even_after_an_error(generator):
    """``linear.weight`` read outside a forward (deploy, export, users) is the scaled weight, also
    after a forward that raised between the hooks."""
    linear, coefficients = _scaled_linear(4)
    expected = linear.parametrizations.weight.original * coefficients.repeat_interleave(4)
    linear(torch.randn(2, 12, generator=generator))
    torch.testing.assert_close(linear.weight, expected)

    def fail(module, args):
        raise RuntimeError("boom")

    handle = linear.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        linear(torch.randn(2, 12, generator=generator))
    handle.remove()
    assert not linear.parametrizations.weight[0].input_scaled
    torch.testing.assert_close(linear.weight, expected)


def test_slimmed_model_deepcopy_scales_by_its_own_coefficients(generator):
    """A deepcopy's layers (hooks included) work on the copy's own coefficients (torch pickles
    parametrized modules only through state_dict)."""
    import copy

    model = make_model("tiny")
    attach_slimming(model)
    with torch.no_grad():
        for coefficients in slimming_coefficients(model).values():
            coefficients.weight.uniform_(0.5, 1.5)
    x = example("tiny", generator)
    model.eval()
    expected = model(x)
    copied = copy.deepcopy(model)
    torch.testing.assert_close(copied(x), expected)
    with torch.no_grad():
        for coefficients in slimming_coefficients(copied).values():
            coefficients.weight.mul_(2)
    assert not torch.allclose(copied(x), expected)
    torch.testing.assert_close(model(x), expected)  # the original is untouched
