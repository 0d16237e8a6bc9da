"""Fused ops against the plain-PyTorch way, at ResNet-18, ResNet-50 and BERT-base shapes (CPU).

Run: ``python benchmarks/run.py`` (writes RESULTS.md and a plot), or
``pytest benchmarks/ --benchmark-only --benchmark-group-by=group``. Each group holds the fused
op and, measured in the same run:

- ``peer_*``: what a competent PyTorch user writes (``torch._foreach_*`` over the layers; for
  Gem-Miner ``SGD(momentum, weight_decay=2*l2, foreach=True)``, ``clamp_`` and
  ``torch.count_nonzero``);
- ``official_*``: the way the method's original repository does it (a Python loop over layers;
  for Gem-Miner the L2 term built through autograd in the loss);
- ``compiled``: ``torch.compile`` of the reference.

Fused tests record the bytes the op must move (``extra_info["bytes"]``) so the runner reports
achieved bandwidth against ``test_copy_bandwidth``.
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import median_with_interval, tensors_like

import sparseticket.ops as ops

L1, CHI, RATIO, L2 = 1e-4, 0.003, 0.5, 1e-4
FLOAT, FLAG = 4, 1
PAIRED_ROUNDS = 40  # rounds of the interleaved masked-vs-torch optimizer step


def _numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


def _compiled(function):
    """torch.compile of a reference function, compiled before timing starts."""
    compiled = torch.compile(function)
    compiled()
    return compiled


def test_copy_bandwidth(benchmark):
    """The machine's copy bandwidth in this run: read + write of 64M floats (256 MB each way)."""
    source = torch.ones(64 * 1024 * 1024)
    target = torch.empty_like(source)
    benchmark.group = "copy bandwidth"
    benchmark.extra_info["bytes"] = 2 * source.numel() * FLOAT
    benchmark(target.copy_, source)


def test_inplace_bandwidth(benchmark):
    """In-place update bandwidth in this run: read + write of 64M floats (no write-allocate traffic)."""
    data = torch.ones(64 * 1024 * 1024)
    benchmark.group = "copy bandwidth"
    benchmark.extra_info["bytes"] = 2 * data.numel() * FLOAT
    benchmark(data.mul_, 1.0)


def _bn_case(shapes):
    gammas = tensors_like(shapes["bn"], seed=1)
    grads = tensors_like(shapes["bn"], seed=2)
    keep = [gamma.abs() > 0.5 for gamma in gammas]
    return gammas, grads, keep


@pytest.mark.parametrize("way", ["official_loop", "peer_foreach", "compiled", "fused", "fused_plan"])
def test_earlybird_worm_bn_update(benchmark, network, way):
    """EarlyBird's L1 on every BN gamma plus WORM's per-channel scaling of its gradient.
    ``official_loop``: per BN layer, ``grad.add_(l1 * sign(gamma))`` as the EarlyBird repository does,
    then the scaling; ``peer_foreach``: ``torch._foreach_add_`` of the L1 sign term and
    ``torch._foreach_mul_``; ``fused_plan``: the fused op through a TruncationPlan (lists checked
    once, a C++ call per step), as the methods call it."""
    name, shapes = network
    gammas, grads, keep = _bn_case(shapes)
    benchmark.group = f"EB L1 + WORM scale, {len(gammas)} BN layers ({name})"
    factors = [mask.float() + CHI * (~mask).float() for mask in keep]
    if way == "fused_plan":
        params = [torch.nn.Parameter(gamma) for gamma in gammas]
        for param, grad in zip(params, grads):
            param.grad = grad
        benchmark(ops.TruncationPlan(params, keep, scale=CHI, l1=L1))
        return

    def loop():
        for gamma, grad, factor in zip(gammas, grads, factors):
            grad.add_(torch.sign(gamma), alpha=L1)
            grad.mul_(factor)

    if way == "official_loop":
        run = loop
    elif way == "compiled":
        run = _compiled(loop)
    elif way == "peer_foreach":
        def run():
            torch._foreach_add_(grads, torch._foreach_sign(gammas), alpha=L1)
            torch._foreach_mul_(grads, factors)
    else:
        benchmark.extra_info["bytes"] = _numel(grads) * (3 * FLOAT + FLAG)

        def run():
            ops.truncate_grads_(grads, keep, scale=CHI, params=gammas, l1=L1)
    benchmark(run)


@pytest.mark.parametrize("way", ["official_loop", "peer_foreach", "compiled", "fused", "fused_plan"])
def test_imp_masked_gradients(benchmark, network, way):
    """Zeroing the gradients of pruned weights (IMP), every conv/linear weight of the network.
    ``official_loop``: ``grad.mul_(mask)`` per layer (open_lth multiplies per layer too);
    ``peer_foreach``: ``torch._foreach_mul_`` with float masks."""
    name, shapes = network
    grads = tensors_like(shapes["conv"] + shapes["linear"], seed=3)
    keep = [torch.rand(grad.shape) > 0.8 for grad in grads]
    benchmark.group = f"IMP masked grads, {len(grads)} tensors, {_numel(grads) / 1e6:.1f}M ({name})"
    factors = [mask.float() for mask in keep]
    if way == "fused_plan":
        params = [torch.nn.Parameter(torch.empty_like(grad)) for grad in grads]
        for param, grad in zip(params, grads):
            param.grad = grad
        benchmark(ops.TruncationPlan(params, keep))
        return

    def loop():
        for grad, factor in zip(grads, factors):
            grad.mul_(factor)

    if way == "fused":
        benchmark.extra_info["bytes"] = _numel(grads) * (2 * FLOAT + FLAG)

        def run():
            ops.truncate_grads_(grads, keep)
    elif way == "official_loop":
        run = loop
    elif way == "compiled":
        run = _compiled(loop)
    else:
        def run():
            torch._foreach_mul_(grads, factors)
    benchmark(run)


@pytest.mark.parametrize("way", ["cat_sort", "cat_kthvalue", "fused"])
def test_global_threshold(benchmark, network, way):
    """Global magnitude threshold over every conv/linear weight (IMP, Gem-Miner)."""
    name, shapes = network
    if way == "cat_sort" and name == "bert_base":
        pytest.skip("sorting 109M floats takes ~15 s a round; cat_kthvalue is the stronger baseline")
    weights = [weight.abs() for weight in tensors_like(shapes["conv"] + shapes["linear"], seed=4)]
    count = _numel(weights)
    k = int(count * 0.2)
    benchmark.group = f"global kth value, {count / 1e6:.1f}M weights ({name})"
    if way == "cat_sort":
        def run():
            return torch.sort(torch.cat([weight.reshape(-1) for weight in weights])).values[k]
    elif way == "cat_kthvalue":
        def run():
            return torch.kthvalue(torch.cat([weight.reshape(-1) for weight in weights]), k + 1).values
    else:
        benchmark.extra_info["bytes"] = 2 * count * FLOAT  # two radix passes read the data (C++)

        def run():
            return ops.kth_value(weights, k)
    result = benchmark(run)
    assert result.item() == torch.kthvalue(torch.cat([w.reshape(-1) for w in weights]), k + 1).values.item()


@pytest.mark.parametrize("way", ["loop", "compiled", "fused"])
def test_earlybird_mask_queue(benchmark, network, way):
    """EarlyBird's epoch end: global channel mask and its distance to the 4 older masks."""
    name, shapes = network
    gammas = [gamma.abs() for gamma in tensors_like(shapes["bn"], seed=5)]
    count = _numel(gammas)
    k = int(count * RATIO)
    older = [torch.rand(count) > 0.5 for _ in range(4)]
    history = torch.stack([ops.pack_mask(mask) for mask in older])
    benchmark.group = f"EB mask + distances, {count} channels ({name})"

    def loop():
        flat = torch.cat(gammas)
        threshold = torch.kthvalue(flat, k + 1).values
        mask = flat > threshold
        return [(mask != old).float().mean() for old in older]

    if way == "loop":
        run = loop
    elif way == "compiled":
        run = _compiled(loop)
    else:
        def run():
            flat = torch.cat(gammas)
            return ops.mask_distances(flat, ops.kth_value(flat, k), history)[1]
    benchmark(run)


@pytest.mark.parametrize("way", ["official_autograd_l2", "peer_sgd_weight_decay", "compiled", "fused"])
def test_gemminer_score_step(benchmark, network, way):
    """One Gem-Miner score update (SGD momentum + L2 + clamp + the count of kept scores) over one
    flat score buffer. ``peer_sgd_weight_decay``: ``SGD(momentum=0.9, weight_decay=2*l2,
    foreach=True)`` (the gradient of l2*||p||^2 is 2*l2*p), ``clamp_``, ``torch.count_nonzero``;
    ``official_autograd_l2``: as the Gem-Miner repository, l2*||p||^2 added to the loss and
    differentiated by autograd, the default SGD, ``clamp_``, the same count."""
    name, shapes = network
    count = sum(torch.Size(shape).numel() for shape in shapes["conv"] + shapes["linear"])
    generator = torch.Generator().manual_seed(6)
    scores = torch.rand(count, generator=generator)
    grads = torch.randn(count, generator=generator) * 1e-3
    flags = torch.ones(count, dtype=torch.bool)
    buffer = torch.zeros(count)
    benchmark.group = f"Gem-Miner score step, {count / 1e6:.1f}M scores ({name})"
    if way == "fused":
        benchmark.extra_info["bytes"] = count * (5 * FLOAT + FLAG)  # read p, v, g, flags; write p, v

        def run():
            return ops.gemminer_step_(scores, grads, buffer, flags, lr=0.1, momentum=0.9, l2=L2)
    elif way == "compiled":
        def step():
            new_buffer = 0.9 * buffer + grads + 2 * L2 * scores
            new_scores = torch.clamp(scores - 0.1 * new_buffer, 0, 1)
            buffer.copy_(torch.where(flags, new_buffer, buffer))
            scores.copy_(torch.where(flags, new_scores, scores))
            return torch.count_nonzero((scores > 0.5) & flags)

        compiled = _compiled(step)

        def run():
            return int(compiled())
    elif way == "peer_sgd_weight_decay":
        parameter = torch.nn.Parameter(scores.clone())
        parameter.grad = grads  # SGD reads it; weight decay is added out of place
        optimizer = torch.optim.SGD([parameter], lr=0.1, momentum=0.9, weight_decay=2 * L2, foreach=True)

        def run():
            optimizer.step()
            with torch.no_grad():
                parameter.clamp_(0, 1)
            return int(torch.count_nonzero(parameter > 0.5))
    else:
        parameter = torch.nn.Parameter(scores.clone())
        optimizer = torch.optim.SGD([parameter], lr=0.1, momentum=0.9)

        def run():
            parameter.grad = None
            (L2 * torch.norm(parameter, p=2) ** 2).backward()
            parameter.grad.add_(grads)
            optimizer.step()
            with torch.no_grad():
                parameter.clamp_(0, 1)
            return int(torch.count_nonzero(parameter > 0.5))
    benchmark(run)


def _optimizer_case(shapes, optimizer: str, way: str):
    """Parameters with gradients (pruned to 20% density), masks, and the optimizer ``way`` steps with."""
    params = [torch.nn.Parameter(tensor) for tensor in tensors_like(shapes["conv"] + shapes["linear"], seed=5)]
    for param, grad in zip(params, tensors_like(shapes["conv"] + shapes["linear"], seed=6)):
        param.grad = grad
    keep = [torch.rand(param.shape) > 0.8 for param in params]
    flags = {"foreach": True} if way in ("peer_foreach", "two_pass") else {"fused": True} if way == "peer_fused" \
        else {}
    if optimizer == "sgd":
        made = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4, **flags)
    else:
        made = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-2, **flags)
    return params, keep, made


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("way", ["peer_foreach", "peer_fused", "two_pass", "fused"])
def test_masked_optimizer_step(benchmark, network, optimizer, way):
    """One optimizer step over every conv/linear weight, pruned weights kept at 0.
    ``fused``: ``imp.optimizer(...)``'s step (``masked_sgd_``/``masked_adam_`` reading the masks packed, one
    bit per weight, one pass);
    ``peer_foreach``/``peer_fused``: torch's fastest *dense* steps (``foreach=True``, ``fused=True``), the
    floor a masked step is held to; ``two_pass``: the foreach step plus zeroing the pruned gradients before
    and the pruned weights after (what IMP did on every step, and still does for other optimizers).

    The ``fused`` test also times torch's ``fused=True`` dense step (its own copy of the tensors) in the
    untimed setup of every round, so the two alternate: ``extra_info["paired"]`` keeps the median over
    rounds of (torch's time / ours) with a 95% confidence interval of that median, free of the drifts
    that separate the medians of tests run one after the other."""
    from sparseticket.methods.masked_optimizer import masked_optimizer

    name, shapes = network
    params, keep, made = _optimizer_case(shapes, optimizer, way)
    count = _numel(params)
    benchmark.group = f"masked {optimizer} step, {count / 1e6:.1f}M weights at 20% ({name})"
    if way == "fused":
        made = masked_optimizer(made, dict(zip(params, keep)))  # its step packs the masks (once) and reads bits
        # SGD reads weight, grad, momentum, the packed mask (1 bit per weight) and writes weight, momentum;
        # AdamW two moments
        packed_bytes = sum((param.numel() + 7) // 8 for param in params)
        benchmark.extra_info["bytes"] = count * (5 if optimizer == "sgd" else 7) * FLOAT + packed_bytes
    made.step()  # the state (momentum buffers, moments) exists before timing
    if way == "two_pass":
        grad_plan = ops.TruncationPlan(params, keep)
        weight_plan = ops.TruncationPlan(params, keep, of="data")

        def run():
            grad_plan()
            made.step()
            weight_plan()
    else:
        run = made.step
    if way != "fused":
        benchmark(run)
        return
    peer = _optimizer_case(shapes, optimizer, "peer_fused")[2]
    peer.step()
    peer_times: list[float] = []

    def time_peer() -> None:
        start = time.perf_counter()
        peer.step()
        peer_times.append(time.perf_counter() - start)

    for _ in range(3):  # warm-up of both
        time_peer()
        run()
    peer_times.clear()
    benchmark.pedantic(run, setup=time_peer, rounds=PAIRED_ROUNDS, iterations=1, warmup_rounds=0)
    ratios = [theirs / ours for theirs, ours in zip(peer_times, benchmark.stats.stats.data)]
    benchmark.extra_info["paired"] = {"against": "peer_fused", **median_with_interval(ratios)}
