"""Fused ops against the plain-PyTorch way, at ResNet-18 and ResNet-50 layer shapes (CPU).

Run: ``pytest benchmarks/ --benchmark-only --benchmark-group-by=group,param:network``.
Each group holds the fused op and the code a peer would write (a Python loop over layers) and,
where it applies, ``torch._foreach_*``; compare medians within a group.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tensors_like

import sparseticket.ops as ops

L1, CHI, RATIO = 1e-4, 0.003, 0.5


def _bn_case(shapes):
    gammas = tensors_like(shapes["bn"], seed=1)
    grads = tensors_like(shapes["bn"], seed=2)
    keep = [gamma.abs() > 0.5 for gamma in gammas]
    return gammas, grads, keep


@pytest.mark.parametrize("way", ["loop", "foreach", "fused"])
def test_earlybird_worm_bn_update(benchmark, network, way):
    """EarlyBird's L1 on every BN gamma plus WORM's per-channel scaling of its gradient."""
    name, shapes = network
    gammas, grads, keep = _bn_case(shapes)
    benchmark.group = f"EB L1 + WORM scale, {len(gammas)} BN layers ({name})"
    if way == "loop":
        factors = [mask.float() + CHI * (~mask).float() for mask in keep]

        def run():
            for gamma, grad, factor in zip(gammas, grads, factors):
                grad.add_(torch.sign(gamma), alpha=L1)
                grad.mul_(factor)
    elif way == "foreach":
        factors = [mask.float() + CHI * (~mask).float() for mask in keep]

        def run():
            torch._foreach_add_(grads, torch._foreach_sign(gammas), alpha=L1)
            torch._foreach_mul_(grads, factors)
    else:
        def run():
            ops.truncate_grads_(grads, keep, scale=CHI, params=gammas, l1=L1)
    benchmark(run)


@pytest.mark.parametrize("way", ["loop", "foreach", "fused"])
def test_imp_masked_gradients(benchmark, network, way):
    """Zeroing the gradients of pruned weights (IMP), every conv/linear weight of the network."""
    name, shapes = network
    grads = tensors_like(shapes["conv"] + shapes["linear"], seed=3)
    keep = [torch.rand(grad.shape) > 0.8 for grad in grads]
    count = sum(grad.numel() for grad in grads)
    benchmark.group = f"IMP masked grads, {len(grads)} tensors, {count / 1e6:.1f}M ({name})"
    if way == "fused":
        def run():
            ops.truncate_grads_(grads, keep)
    else:
        factors = [mask.float() for mask in keep]
        if way == "loop":
            def run():
                for grad, factor in zip(grads, factors):
                    grad.mul_(factor)
        else:
            def run():
                torch._foreach_mul_(grads, factors)
    benchmark(run)


@pytest.mark.parametrize("way", ["cat_sort", "cat_kthvalue", "fused"])
def test_global_threshold(benchmark, network, way):
    """Global magnitude threshold over every conv/linear weight (IMP, Gem-Miner)."""
    name, shapes = network
    weights = [weight.abs() for weight in tensors_like(shapes["conv"] + shapes["linear"], seed=4)]
    count = sum(weight.numel() for weight in weights)
    k = int(count * 0.2)
    benchmark.group = f"global kth value, {count / 1e6:.1f}M weights ({name})"
    if way == "cat_sort":
        def run():
            return torch.sort(torch.cat([weight.reshape(-1) for weight in weights])).values[k]
    elif way == "cat_kthvalue":
        def run():
            return torch.kthvalue(torch.cat([weight.reshape(-1) for weight in weights]), k + 1).values
    else:
        def run():
            return ops.kth_value(weights, k)
    result = benchmark(run)
    assert result.item() == torch.sort(torch.cat([w.reshape(-1) for w in weights])).values[k].item()


@pytest.mark.parametrize("way", ["loop", "fused"])
def test_earlybird_mask_queue(benchmark, network, way):
    """EarlyBird's epoch end: global channel mask and its distance to the 4 older masks."""
    name, shapes = network
    gammas = [gamma.abs() for gamma in tensors_like(shapes["bn"], seed=5)]
    count = sum(gamma.numel() for gamma in gammas)
    k = int(count * RATIO)
    older = [torch.rand(count) > 0.5 for _ in range(4)]
    history = torch.stack([ops.pack_mask(mask) for mask in older])
    benchmark.group = f"EB mask + distances, {count} channels ({name})"
    if way == "loop":
        def run():
            flat = torch.cat(gammas)
            threshold = torch.sort(flat).values[k]
            mask = flat > threshold
            return [(mask != old).float().mean() for old in older]
    else:
        def run():
            flat = torch.cat(gammas)
            return ops.mask_distances(flat, ops.kth_value(flat, k), history)[1]
    benchmark(run)


@pytest.mark.parametrize("way", ["sgd_autograd", "foreach_sgd", "fused"])
def test_gemminer_score_step(benchmark, network, way):
    """One Gem-Miner score update (SGD momentum + L2 + clamp) over one flat score buffer."""
    name, shapes = network
    count = sum(torch.Size(shape).numel() for shape in shapes["conv"] + shapes["linear"])
    generator = torch.Generator().manual_seed(6)
    scores = torch.rand(count, generator=generator)
    grads = torch.randn(count, generator=generator) * 1e-3
    flags = torch.ones(count, dtype=torch.bool)
    benchmark.group = f"Gem-Miner score step, {count / 1e6:.1f}M scores ({name})"
    if way == "fused":
        buffer = torch.zeros(count)

        def run():
            ops.gemminer_step_(scores, grads, buffer, flags, lr=0.1, momentum=0.9, l2=1e-4)
    else:
        parameter = torch.nn.Parameter(scores.clone())
        optimizer = torch.optim.SGD([parameter], lr=0.1, momentum=0.9, foreach=way == "foreach_sgd")

        def run():
            parameter.grad = None
            (1e-4 * parameter.square().sum()).backward()
            parameter.grad.add_(grads)
            optimizer.step()
            with torch.no_grad():
                parameter.clamp_(0, 1)
    benchmark(run)
