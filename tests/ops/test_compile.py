"""Every op inside torch.compile(fullgraph=True) on CPU: no graph break, same results as eager.

gemminer_masked_weight traces as gemminer_mask (its slots are an eager-only shortcut) and
scale_columns as its reference expression (the C++ op is eager-only)."""

from __future__ import annotations

import torch

import sparseticket.ops as ops


def _all_ops(grads, keep, params, importance, history, runs, weight, scores, flags, buffer, step_grads, slots,
             linear, coefficients):
    ops.truncate_grads_(grads, keep, scale=0.003, params=params, l1=1e-4)
    threshold = ops.kth_value([importance], importance.numel() // 2)
    packed, distances = ops.mask_distances(importance, threshold, history, static_runs=runs)
    unpacked = ops.unpack_mask(ops.pack_mask(importance > threshold), importance.numel())
    masked = ops.gemminer_mask(weight, scores, flags)
    slotted = ops.gemminer_masked_weight(weight, scores, flags, slots=slots)  # traced as gemminer_mask
    scaled = ops.scale_columns(linear, coefficients, 2)
    loss = (masked * masked).sum() + (slotted * 3).sum() + scaled.square().sum()
    kept = torch.ops.sparseticket.gemminer_step_(scores.detach(), step_grads, buffer, flags, 0.1, 0.9, 1e-4)
    return threshold, packed, distances, unpacked, loss, kept, scaled


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
    slots = ops.MaskedWeightSlots(torch.zeros(16, 4), torch.zeros(1, dtype=torch.uint8))
    linear, coefficients = torch.randn(5, 8, generator=generator), torch.rand(4, generator=generator)
    return grads, keep, params, importance, history, runs, weight, scores, flags, torch.zeros(16, 4), \
        torch.randn(16, 4, generator=generator), slots, linear, coefficients


def test_all_ops_fullgraph_match_eager(backend):
    torch._dynamo.reset()
    compiled = torch.compile(_all_ops, fullgraph=True)
    eager_inputs, compiled_inputs = _inputs(0), _inputs(0)
    for inputs in (eager_inputs, compiled_inputs):
        for index in (7, 12, 13):  # scores, the scaled weight and its coefficients
            inputs[index].requires_grad_(True)
    eager = _all_ops(*eager_inputs)
    got = compiled(*compiled_inputs)
    for want, have in zip(eager, got):
        assert torch.equal(want.detach(), have.detach())
    for want, have in zip(eager_inputs, compiled_inputs):  # in-place updates happened in both
        if isinstance(want, ops.MaskedWeightSlots):
            continue
        for a, b in zip(want if isinstance(want, list) else [want], have if isinstance(have, list) else [have]):
            assert torch.equal(a.detach(), b.detach())
    eager[4].backward()
    got[4].backward()
    assert torch.equal(eager_inputs[7].grad, compiled_inputs[7].grad)
    assert torch.equal(eager_inputs[12].grad, compiled_inputs[12].grad)
    torch.testing.assert_close(eager_inputs[13].grad, compiled_inputs[13].grad, rtol=1e-5, atol=1e-6)


def test_gemminer_step_int_result_under_compile():
    torch._dynamo.reset()
    scores, grads, buffer = torch.rand(50), torch.randn(50), torch.zeros(50)
    flags = torch.ones(50, dtype=torch.bool)

    def step(scores, grads, buffer, flags):
        return ops.gemminer_step_(scores, grads, buffer, flags, lr=0.1)

    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        kept = torch.compile(step, fullgraph=True)(scores, grads, buffer, flags)
    assert kept == int((scores > 0.5).sum())


def test_gemminer_step_from_masked_grads_fullgraph_matches_eager(backend):
    """The score step that takes the masked weights' gradients (a list) traces without a break and
    updates the same buffers as eager."""
    def step(scores, grads, buffer, flags, weights, masked):
        return ops.gemminer_step_from_masked_grads_(scores, grads, buffer, flags, lr=0.1, momentum=0.9, l2=1e-4,
                                                    weights=weights, masked_out=masked)

    def inputs():
        generator = torch.Generator().manual_seed(5)
        grads = [torch.randn(4, 3, 2, 2, generator=generator), torch.randn(6, 5, generator=generator)]
        total = sum(grad.numel() for grad in grads)
        return (torch.rand(total, generator=generator), grads, torch.zeros(total),
                torch.rand(total, generator=generator) > 0.2, torch.randn(total, generator=generator),
                torch.empty(total))

    torch._dynamo.reset()
    eager_inputs, compiled_inputs = inputs(), inputs()
    want = step(*eager_inputs)
    got = torch.compile(step, fullgraph=True)(*compiled_inputs)
    assert torch.equal(want, got)
    for index in (0, 2, 5):  # scores, momentum buffer, masked weights: updated in place in both
        assert torch.equal(eager_inputs[index], compiled_inputs[index])
