"""channels_last parameters and gradients: every op and method works on them in place, in their
own memory order (no copy per step), and computes what it computes on a row-major model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparseticket.ops as ops
from sparseticket import IMP, WORM, EarlyBird, GemMiner
from sparseticket.builtin.models import resnet20
from sparseticket.ops import TruncationPlan, truncate_grads_

CL = torch.channels_last


@pytest.fixture(params=["reference", "cpp", "triton"])
def any_backend(request) -> str:
    with ops.cpu_backend(request.param):
        yield request.param


def expected_truncation(grad: torch.Tensor, keep: torch.Tensor, scale: float, params: torch.Tensor | None,
                        l1: float) -> torch.Tensor:
    """By hand, on logical (row-major) copies: g + l1*sign(p) where kept, else that times scale."""
    grad = grad.contiguous().float()
    kept = keep.reshape(grad.shape) if keep.numel() == grad.numel() else keep.view(-1, *[1] * (grad.dim() - 1))
    value = grad + (l1 * torch.sign(params.contiguous().float()) if params is not None else 0.0)
    return torch.where(kept, value, value * scale if scale else torch.zeros_like(value))


@pytest.mark.parametrize("shape, memory_format", [((6, 5, 3, 2), CL), ((4, 3, 2, 2, 3), torch.channels_last_3d)])
@pytest.mark.parametrize("mask_kind", ["per_element_same_format", "per_element_row_major", "flat", "per_channel"])
def test_truncate_grads_in_place_on_channels_last(any_backend, shape, memory_format, mask_kind):
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(shape, generator=generator).to(memory_format=memory_format)
    params = torch.randn(shape, generator=generator).to(memory_format=memory_format)
    logical_keep = torch.rand(shape, generator=generator) > 0.5
    keep = {"per_element_same_format": logical_keep.to(memory_format=memory_format),
            "per_element_row_major": logical_keep,
            "flat": logical_keep.reshape(-1),
            "per_channel": torch.rand(shape[0], generator=generator) > 0.5}[mask_kind]
    expected = expected_truncation(grad, keep, 0.25, params, 0.01)
    pointer, strides = grad.data_ptr(), grad.stride()
    truncate_grads_([grad], [keep], scale=0.25, params=[params], l1=0.01)
    assert grad.data_ptr() == pointer and grad.stride() == strides  # updated in place, layout kept
    torch.testing.assert_close(grad.contiguous(), expected, rtol=1e-6, atol=1e-7)


def test_strided_gradient_is_refused_with_its_name(any_backend):
    grad = torch.zeros(4, 6).t()  # neither row-major nor channels_last
    with pytest.raises(ValueError, match=r"grads\[0\] must be contiguous or channels_last"):
        truncate_grads_([grad], [torch.ones(6, 4, dtype=torch.bool)])


def test_gemminer_mask_keeps_channels_last(any_backend):
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(8, 3, 3, 3, generator=generator).to(memory_format=CL)
    scores = torch.rand(8, 3, 3, 3, generator=generator).to(memory_format=CL)
    flags = (torch.rand(8, 3, 3, 3, generator=generator) > 0.2).to(memory_format=CL)
    masked = ops.gemminer_mask(weight, scores, flags)
    torch.testing.assert_close(masked.contiguous(), weight.contiguous() * ((scores > 0.5) & flags).contiguous())
    assert masked.is_contiguous(memory_format=CL)


def test_plan_reads_channels_last_masks_without_copying():
    weight = nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=CL))
    keep = torch.rand(4, 3, 2, 2).to(memory_format=CL) > 0.5
    plan = TruncationPlan([weight], [keep])
    weight.grad = torch.ones_like(weight)
    keep[0].fill_(False)  # edited in place after the plan was made: the plan reads the same tensor
    plan()
    assert weight.grad.is_contiguous(memory_format=CL)
    assert torch.equal(weight.grad, keep.float())


def test_plan_refuses_a_mask_in_another_memory_order():
    weight = nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=CL))
    with pytest.raises(ValueError, match=r"keep\[0\] must be contiguous"):
        TruncationPlan([weight], [torch.ones(4, 3, 2, 2, dtype=torch.bool)])


# ----------------------------------------------------------------- methods on a channels_last ResNet
def twin_models() -> tuple[nn.Module, nn.Module]:
    """One ResNet-20 (width 8), and a channels_last copy of it."""
    torch.manual_seed(0)
    model = resnet20(classes=4, width=8)
    return model, copy.deepcopy(model).to(memory_format=CL)


def sgd_steps(model: nn.Module, method, steps: int = 3, *, optimizer: torch.optim.Optimizer | None = None) -> None:
    """A few SGD+momentum steps on fixed data with the method's hooks."""
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(8, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 4, (8,), generator=generator)
    if next(model.parameters()).is_contiguous(memory_format=CL) and not next(model.parameters()).is_contiguous():
        images = images.to(memory_format=CL)
    optimizer = optimizer or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05,
                                             momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        method.after_backward()
        optimizer.step()
        method.after_step()


def conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [module.weight for module in model.modules() if isinstance(module, nn.Conv2d)]


def test_imp_on_channels_last_matches_row_major():
    dense, channels_last = twin_models()
    results = []
    for model in (dense, channels_last):
        imp = IMP(model, rate=0.5)
        imp.prune_round()
        sgd_steps(model, imp)
        imp.prune_round()
        sgd_steps(model, imp)
        results.append(imp)
    for weight in conv_weights(channels_last):
        assert weight.is_contiguous(memory_format=CL) or weight.shape[-1] == 1
    for mask in results[1].masks:
        assert mask.dim() != 4 or mask.is_contiguous(memory_format=CL)  # masks in the parameter's format
    for reference, mask, weight in zip(results[0].masks, results[1].masks, results[1].weights):
        assert torch.equal(reference, mask)
        assert torch.all(weight[~mask] == 0)
    for expected, actual in zip(conv_weights(dense), conv_weights(channels_last)):
        torch.testing.assert_close(actual.contiguous(), expected, rtol=1e-4, atol=1e-5)
    ticket = results[1].ticket()
    fine_tune = copy.deepcopy(channels_last)
    ticket.apply_(fine_tune)
    hook = ticket.gradient_mask(fine_tune)
    fine_tune(torch.randn(2, 3, 8, 8).to(memory_format=CL)).sum().backward()
    hook()
    for name, parameter in fine_tune.named_parameters():
        if name in ticket.masks:
            assert torch.all(parameter.grad[~ticket.masks[name]] == 0)


def test_worm_with_filter_truncation_on_channels_last_matches_row_major():
    dense, channels_last = twin_models()
    grads = []
    for model in (dense, channels_last):
        worm = WORM(model, truncate_filters=True, trigger=1.0, queue=2)
        worm.epoch_end()
        worm.epoch_end()  # a full queue: triggered
        assert worm.truncating
        model.zero_grad()
        model(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))).sum().backward()
        worm.after_backward()
        grads.append([weight.grad.contiguous() for weight in conv_weights(model)])
    for expected, actual in zip(*grads):  # the convolutions' own rounding differs between the layouts
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=5e-5)


def test_earlybird_on_channels_last_matches_row_major():
    dense, channels_last = twin_models()
    masks = []
    for model in (dense, channels_last):
        eb = EarlyBird(model, l1=1e-2)
        for _ in range(2):
            sgd_steps(model, eb)
            eb.epoch_end()
        masks.append(eb.channel_mask())
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][name], masks[1][name]) for name in masks[0])


def test_gemminer_on_channels_last_matches_row_major():
    dense, channels_last = twin_models()
    miners = [GemMiner(model, density=0.3, epochs=3, period=1, seed=0) for model in (dense, channels_last)]
    with torch.no_grad():  # the flat draw fills memory order: give both the same logical scores
        for source, target in zip(miners[0]._score_masks, miners[1]._score_masks):
            target.scores.copy_(source.scores)
    grads = []
    images = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for miner, model, inputs in zip(miners, (dense, channels_last), (images, images.to(memory_format=CL))):
        model(inputs).square().mean().backward()
        grads.append([score_mask.scores.grad.clone(memory_format=torch.contiguous_format)
                      for score_mask in miner._score_masks])
        miner.after_backward()
    for weight, score_mask in zip(miners[1].weights, miners[1]._score_masks):
        if weight.stored.dim() == 4 and not weight.stored.is_contiguous():
            assert score_mask.scores.is_contiguous(memory_format=CL)  # scores follow the weight's layout
    for expected, actual in zip(*grads):  # a layout mistake would be O(|grad|) off, not rounding
        torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
    first, second = (miner.ticket() for miner in miners)
    for name in first.masks:
        torch.testing.assert_close(second.scores[name], first.scores[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend_name", ["reference", "cpp"])
def test_gemminer_refuses_a_model_converted_after_it_was_made(backend_name):
    model, _ = twin_models()
    miner = GemMiner(model, density=0.5, epochs=2, period=1)
    model.to(memory_format=CL)
    with ops.cpu_backend(backend_name), pytest.raises((RuntimeError, ValueError), match="after the GemMiner was made"):
        model(torch.randn(2, 3, 8, 8)).sum().backward()  # the C++ path refuses the forward already
        miner.step()  # other paths: the step


@pytest.mark.parametrize("stepped_before", [False, True])
def test_imp_refuses_a_model_converted_after_it_was_made(stepped_before):
    model, _ = twin_models()
    imp = IMP(model)
    if stepped_before:  # the plan exists already: the C++ plan notices the new layout
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        imp.after_backward()
    model.to(memory_format=CL)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    with pytest.raises(ValueError, match="changed memory format"):
        imp.after_backward()
    with pytest.raises(ValueError, match="changed memory format"):
        imp.after_step()
