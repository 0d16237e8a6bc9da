"""Bad input raises TypeError/ValueError naming the argument, before any kernel runs."""

from __future__ import annotations

import pytest
import torch

from sparseticket.ops import (
    MaskedWeightSlots,
    gemminer_mask,
    gemminer_masked_weight,
    gemminer_step_,
    kth_value,
    mask_distances,
    pack_mask,
    scale_columns,
    truncate_grads_,
    unpack_mask,
)

GRAD = torch.zeros(4, 3)
KEEP = torch.ones(4, dtype=torch.bool)
CLAIMED = torch.zeros(1, dtype=torch.uint8)


def _slots() -> MaskedWeightSlots:
    return MaskedWeightSlots(torch.zeros(3), torch.zeros(1, dtype=torch.uint8))


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: truncate_grads_(GRAD, [KEEP]), TypeError, "grads must be a list"),
        (lambda: truncate_grads_([GRAD.long()], [KEEP]), TypeError, "grads[0] must be float32"),
        (lambda: truncate_grads_([GRAD.double()], [KEEP]), TypeError, "got float64"),
        (lambda: truncate_grads_([GRAD, GRAD.half()], [KEEP, KEEP]), TypeError, "grads must all have one dtype"),
        (lambda: truncate_grads_([GRAD], [KEEP, KEEP]), ValueError, "keep must have one mask per gradient"),
        (lambda: truncate_grads_([GRAD], [KEEP.float()]), TypeError, "keep[0] must be bool"),
        (lambda: truncate_grads_([GRAD], [torch.ones(3, dtype=torch.bool)]),
         ValueError, "keep[0] must have shape (4,) or (4, 3)"),
        (lambda: truncate_grads_([GRAD], [KEEP], l1=1e-4), ValueError, "l1 != 0 requires params"),
        (lambda: truncate_grads_([GRAD], [KEEP], l1=1e-4, params=[GRAD, GRAD]),
         ValueError, "params must have one tensor per gradient"),
        (lambda: truncate_grads_([GRAD], [KEEP], l1=1e-4, params=[torch.zeros(4)]),
         ValueError, "params[0] must have the shape of grads[0]"),
        (lambda: truncate_grads_([GRAD], [KEEP], scale=float("nan")), ValueError, "scale must be finite"),
        (lambda: truncate_grads_([GRAD], [KEEP], scale="0.1"), TypeError, "scale must be a float"),
        (lambda: truncate_grads_([GRAD.t()], [torch.ones(3, dtype=torch.bool)]),
         ValueError, "grads[0] must be contiguous"),
        (lambda: truncate_grads_([GRAD], [KEEP.to("meta")]), TypeError, "keep[0] must be bool on cpu"),
        (lambda: pack_mask(torch.ones(3)), TypeError, "mask must be bool"),
        (lambda: pack_mask([True]), TypeError, "mask must be a torch.Tensor"),
        (lambda: unpack_mask(torch.zeros(2, dtype=torch.uint8), 20),
         ValueError, "packed must be 1-D with ceil(n/8) = 3"),
        (lambda: unpack_mask(torch.zeros(2, dtype=torch.int32), 16), TypeError, "packed must be uint8"),
        (lambda: unpack_mask(torch.zeros(2, dtype=torch.uint8), -1), ValueError, "n must be in [0"),
        (lambda: kth_value([torch.ones(3)], 3), ValueError, "k must be in [0, 3)"),
        (lambda: kth_value([torch.ones(3)], -1), ValueError, "k must be in [0, 3)"),
        (lambda: kth_value([torch.ones(3)], 1.0), TypeError, "k must be an int"),
        (lambda: kth_value([torch.ones(3)], torch.tensor(1)), TypeError, "k must be a Python int"),
        (lambda: kth_value([], 0), ValueError, "values must hold at least one element"),
        (lambda: kth_value([torch.empty(0)], 0), ValueError, "values must hold at least one element"),
        (lambda: kth_value([torch.ones(3, dtype=torch.int64)], 0), TypeError, "values[0] must be float32"),
        (lambda: kth_value([torch.ones(3), torch.ones(2).bfloat16()], 0), TypeError, "values must all have one dtype"),
        (lambda: mask_distances(torch.rand(9), 0.5, torch.zeros(1, 1, dtype=torch.uint8)),
         ValueError, "history must have shape [K, ceil(N/8) = 2]"),
        (lambda: mask_distances(torch.rand(9), 0.5, torch.zeros(2, dtype=torch.uint8)),
         ValueError, "history must have shape"),
        (lambda: mask_distances(torch.rand(9), 0.5, torch.zeros(1, 2)), TypeError, "history must be uint8"),
        (lambda: mask_distances(torch.rand(9).long(), 0.5, torch.zeros(1, 2, dtype=torch.uint8)),
         TypeError, "importance must be float32"),
        (lambda: mask_distances(torch.rand(9), torch.ones(2), torch.zeros(1, 2, dtype=torch.uint8)),
         ValueError, "threshold must be a number or a one-element tensor"),
        (lambda: mask_distances(torch.rand(9), float("nan"), torch.zeros(1, 2, dtype=torch.uint8)),
         ValueError, "threshold must be finite"),
        (lambda: mask_distances(torch.rand(9), 0.5, torch.zeros(1, 2, dtype=torch.uint8), static_runs=torch.zeros(9)),
         TypeError, "static_runs must be int32"),
        (lambda: mask_distances(torch.rand(9), 0.5, torch.zeros(1, 2, dtype=torch.uint8),
                                static_runs=torch.zeros(8, dtype=torch.int32)),
         ValueError, "static_runs must have shape (9,)"),
        (lambda: gemminer_mask(torch.ones(3), torch.ones(4), torch.ones(3, dtype=torch.bool)),
         ValueError, "scores must have the shape of weight"),
        (lambda: gemminer_mask(torch.ones(3), torch.ones(3), torch.ones(3)), TypeError, "flags must be bool"),
        (lambda: gemminer_mask(torch.ones(3), torch.ones(3, dtype=torch.int64), torch.ones(3, dtype=torch.bool)),
         TypeError, "scores must be float32/float16/bfloat16 on cpu, got int64 on cpu"),
        (lambda: gemminer_step_(torch.ones(3), torch.ones(3), torch.ones(3), torch.ones(3, dtype=torch.bool)),
         TypeError, "lr"),
        (lambda: gemminer_step_(torch.ones(3), torch.ones(2), torch.ones(3), torch.ones(3, dtype=torch.bool), lr=0.1),
         ValueError, "grads must have the shape of scores"),
        (lambda: gemminer_step_(torch.ones(3), torch.ones(3), torch.ones(3), torch.ones(3, dtype=torch.bool),
                                lr=float("inf")),
         ValueError, "lr must be finite"),
        (lambda: gemminer_step_(torch.ones(3, 2).t(), torch.ones(2, 3), torch.ones(2, 3),
                                torch.ones(2, 3, dtype=torch.bool), lr=0.1),
         ValueError, "scores must be contiguous"),
        (lambda: gemminer_step_(torch.ones(3), torch.ones(3), torch.ones(3), torch.ones(3, dtype=torch.uint8), lr=0.1),
         TypeError, "flags must be bool"),
        (lambda: gemminer_step_(torch.ones(3), torch.ones(3), torch.ones(3), torch.ones(3, dtype=torch.bool), lr=0.1,
                                as_tensor="yes"),
         TypeError, "as_tensor must be a bool"),
        (lambda: gemminer_masked_weight(torch.ones(3), torch.ones(3), torch.ones(3), slots=_slots()),
         TypeError, "flags must be bool"),
        (lambda: gemminer_masked_weight(torch.ones(3).long(), torch.ones(3), torch.ones(3, dtype=torch.bool),
                                        slots=_slots()),
         TypeError, "weight must be float32/float16/bfloat16"),
        (lambda: gemminer_masked_weight(torch.ones(3), torch.ones(3), torch.ones(3, dtype=torch.bool), slots="slots"),
         TypeError, "slots must be a MaskedWeightSlots or None, got str"),
        (lambda: gemminer_masked_weight(torch.ones(3), torch.ones(3), [True] * 3),
         TypeError, "flags must be a torch.Tensor"),
        (lambda: MaskedWeightSlots(torch.zeros(3).long(), CLAIMED),
         TypeError, "grad_slot must be float32/float16/bfloat16"),
        (lambda: MaskedWeightSlots(torch.zeros(3, 2).t(), CLAIMED),
         ValueError, "grad_slot must be contiguous or channels_last"),
        (lambda: MaskedWeightSlots(torch.zeros(3), torch.zeros(3, dtype=torch.uint8)),
         ValueError, "claimed must hold one element, got shape (3,)"),
        (lambda: MaskedWeightSlots(torch.zeros(3), torch.zeros(1, dtype=torch.bool)),
         TypeError, "claimed must be uint8 on cpu, got bool on cpu"),
        (lambda: scale_columns(torch.ones(4, 6, dtype=torch.int64), torch.ones(6), 1),
         TypeError, "weight must be float32/float16/bfloat16/float64"),
        (lambda: scale_columns(torch.ones(4, 6), torch.ones(6, dtype=torch.bool), 1),
         TypeError, "coefficients must be float32/float16/bfloat16/float64 on cpu, got bool on cpu"),
        (lambda: scale_columns(torch.ones(4, 6), torch.ones(4), 2),
         ValueError, "coefficients must have weight.shape[1] / width = 6 / 2 entries, got shape (4,)"),
        (lambda: scale_columns(torch.ones(4, 6), torch.ones(6), 0), ValueError, "width must be in [1, inf), got 0"),
        (lambda: scale_columns(torch.ones(4, 6), torch.ones(6), torch.tensor(1)),
         TypeError, "width must be a Python int"),
        (lambda: scale_columns(torch.ones(2, 4, 6), torch.ones(6), 1),
         ValueError, "weight must be 2-D (a Linear weight), got shape (2, 4, 6)"),
        (lambda: scale_columns(torch.ones(4, 6), torch.ones(6), 1, slot=[]),
         TypeError, "slot must be an OutputSlot or None, got list"),
    ],
)
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error) as raised:
        call()
    assert words in str(raised.value)


def test_failed_validation_leaves_inputs_untouched():
    grads = [torch.ones(4), torch.ones(2)]
    with pytest.raises(ValueError):
        truncate_grads_(grads, [torch.zeros(4, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)])
    assert all(torch.equal(grad, torch.ones_like(grad)) for grad in grads)


def test_a_rejected_masked_weight_call_leaves_its_slots_alone():
    slots = _slots()
    scores = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError):
        gemminer_masked_weight(torch.ones(3), scores, torch.ones(2, dtype=torch.bool), slots=slots)
    assert int(slots.claimed[0]) == 0 and not slots.grad_slot.any() and scores.grad is None


def test_non_contiguous_read_only_inputs_work():
    weight = torch.randn(6, 4)
    scores = torch.rand(4, 6).t()
    flags = (torch.rand(4, 6) > 0.3).t()
    assert not scores.is_contiguous() and not flags.is_contiguous()
    assert torch.equal(gemminer_mask(weight, scores, flags), weight * (scores > 0.5) * flags)
    keep = torch.tensor([[True, False], [False, True], [True, True]])[:, 0]
    assert not keep.is_contiguous()
    grads = [torch.ones(3, 2)]
    truncate_grads_(grads, [keep])
    assert torch.equal(grads[0], torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]))
