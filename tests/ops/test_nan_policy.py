"""The NaN/Inf policy of the README, hand-computed, on every backend (reference, C++, Triton):
pruned means exactly 0 (a select), elsewhere NaN and inf propagate as the arithmetic says."""

from __future__ import annotations

import pytest
import torch

import sparseticket.ops as ops

NAN, INF = float("nan"), float("inf")


@pytest.fixture(params=["reference", "cpp", "triton"])
def any_backend(request) -> str:
    with ops.cpu_backend(request.param):
        yield request.param


def _bits(tensor: torch.Tensor) -> list[int]:
    return tensor.view(torch.int32).tolist()


def test_hard_truncation_writes_exact_zero_over_inf_and_nan(any_backend):
    grads = [torch.tensor([INF, NAN, -INF, -3.0, 2.0])]
    keep = [torch.tensor([False, False, False, False, True])]
    ops.truncate_grads_(grads, keep, scale=0.0)
    assert _bits(grads[0][:4]) == [0, 0, 0, 0]  # +0.0 exactly: not NaN (inf*0), not -0.0
    assert grads[0][4] == 2.0


def test_scaled_truncation_propagates_nan_and_inf(any_backend):
    grads = [torch.tensor([INF, NAN, -INF, 1.0]), torch.tensor([[NAN, 1.0], [INF, 2.0]])]
    keep = [torch.tensor([False, False, False, True]), torch.tensor([False, True])]
    ops.truncate_grads_(grads, keep, scale=0.5)
    first, second = grads
    assert first[0] == INF and torch.isnan(first[1]) and first[2] == -INF and first[3] == 1.0
    assert torch.isnan(second[0, 0]) and second[0, 1] == 0.5 and second[1, 0] == INF and second[1, 1] == 2.0


def test_l1_sign_of_nan_is_zero(any_backend):
    grads = [torch.zeros(3)]
    ops.truncate_grads_(grads, [torch.ones(3, dtype=torch.bool)], params=[torch.tensor([NAN, 1.0, -1.0])], l1=0.25)
    assert grads[0].tolist() == [0.0, 0.25, -0.25]


def test_gemminer_step_keeps_nan_through_the_clamp_and_leaves_frozen_scores(any_backend):
    scores = torch.tensor([0.3, 0.7, 0.4, 0.9])
    buffer = torch.zeros(4)
    grads = torch.tensor([NAN, -INF, INF, NAN])
    flags = torch.tensor([True, True, True, False])
    kept = ops.gemminer_step_(scores, grads, buffer, flags, lr=0.1, momentum=0.9)
    assert torch.isnan(scores[0]) and scores[1] == 1.0 and scores[2] == 0.0
    assert scores[3] == 0.9 and buffer[3] == 0.0  # frozen: untouched even by a NaN gradient
    assert kept == 1  # NaN > 0.5 is false: a NaN score is not kept


def test_masked_weight_is_zero_whatever_it_holds(any_backend):
    weight = torch.tensor([NAN, INF, -INF, NAN], requires_grad=True)
    scores = torch.tensor([0.2, 0.9, 0.5, 0.9], requires_grad=True)
    flags = torch.tensor([True, False, True, True])
    out = ops.gemminer_mask(weight, scores, flags)
    assert _bits(out[:3].detach()) == [0, 0, 0] and torch.isnan(out[3])
    out.backward(torch.tensor([INF, NAN, 1.0, 1.0]))
    assert _bits(weight.grad[:3]) == [0, 0, 0] and weight.grad[3] == 1.0
    assert torch.isnan(scores.grad[0]) and scores.grad[1] == 0.0  # straight-through, 0 where flags is False


def test_nan_importance_is_pruned_and_orders_last(any_backend):
    importance = torch.tensor([NAN, 2.0, -NAN, 1.0, INF])
    packed, _ = ops.mask_distances(importance, 0.5, torch.zeros(0, 1, dtype=torch.uint8))
    assert ops.unpack_mask(packed, 5).tolist() == [False, True, False, True, True]
    assert float(ops.kth_value(importance, 2)) == INF
    assert torch.isnan(ops.kth_value(importance, 3)) and torch.isnan(ops.kth_value(importance, 4))
