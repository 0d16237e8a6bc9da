"""Every op inside torch.compile(fullgraph=True) on CPU: no graph break, same results as eager."""

from __future__ import annotations

import torch

import sparseticket.ops as ops


def _all_ops(grads, keep, params, importance, history, runs, weight, scores, flags, buffer, step_grads):
    ops.truncate_grads_(grads, keep, scale=0.003, params=params, l1=1e-4)
    threshold = ops.kth_value([importance], importance.numel() // 2)
    packed, distances = ops.mask_distances(importance, threshold, history, static_runs=runs)
    unpacked = ops.unpack_mask(ops.pack_mask(importance > threshold), importance.numel())
    masked = ops.gemminer_mask(weight, scores, flags)
    loss = (masked * masked).sum()
    kept = torch.ops.sparseticket.gemminer_step_(scores.detach(), step_grads, buffer, flags, 0.1, 0.9, 1e-4)
    return threshold, packed, distances, unpacked, loss, kept


def _inputs(seed: int):
    generator = torch.Generator().manual_seed(seed)
    grads = [torch.randn(8, 3, 3, 3, generator=generator), torch.randn(8, generator=generator)]
    keep = [torch.rand(8, generator=generator) > 0.5, torch.rand(8, generator=generator) > 0.5]
    params = [torch.randn(8, 3, 3, 3, generator=generator), torch.randn(8, generator=generator)]
    importance = torch.rand(37, generator=generator)
    history = torch.randint(0, 256, (3, 5), generator=generator, dtype=torch.uint8)
    runs = torch.zeros(37, dtype=torch.int32)
    weight = torch.randn(16, 4, generator=generator)
    scores = torch.rand(16, 4, generator=generator)
    flags = torch.rand(16, 4, generator=generator) > 0.2
    return grads, keep, params, importance, history, runs, weight, scores, flags, torch.zeros(16, 4), \
        torch.randn(16, 4, generator=generator)


def test_all_ops_fullgraph_match_eager(backend):
    torch._dynamo.reset()
    compiled = torch.compile(_all_ops, fullgraph=True)
    eager_inputs, compiled_inputs = _inputs(0), _inputs(0)
    compiled_inputs[7].requires_grad_(True)
    eager_inputs[7].requires_grad_(True)
    eager = _all_ops(*eager_inputs)
    got = compiled(*compiled_inputs)
    for want, have in zip(eager, got):
        assert torch.equal(want.detach(), have.detach())
    for want, have in zip(eager_inputs, compiled_inputs):  # in-place updates happened in both
        for a, b in zip(want if isinstance(want, list) else [want], have if isinstance(have, list) else [have]):
            assert torch.equal(a.detach(), b.detach())
    eager[4].backward()
    got[4].backward()
    assert torch.equal(eager_inputs[7].grad, compiled_inputs[7].grad)


def test_gemminer_step_int_result_under_compile():
    torch._dynamo.reset()
    scores, grads, buffer = torch.rand(50), torch.randn(50), torch.zeros(50)
    flags = torch.ones(50, dtype=torch.bool)

    def step(scores, grads, buffer, flags):
        return ops.gemminer_step_(scores, grads, buffer, flags, lr=0.1)

    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        kept = torch.compile(step, fullgraph=True)(scores, grads, buffer, flags)
    assert kept == int((scores > 0.5).sum())
