"""gemminer_step_from_masked_grads_: the score step that forms the scores' gradient from the masked
weights' gradients (one tensor per layer) in its own pass. On every backend it equals gemminer_step_
given the product ``masked_grads * weights`` bit for bit (fp32 scores), the hand formula to rounding,
and it refuses bad lists with errors that name the argument."""

from __future__ import annotations

import pytest
import torch
from conftest import FLOAT_DTYPES, assert_float_close

from sparseticket.ops import gemminer_mask, gemminer_step_, gemminer_step_from_masked_grads_

LAYERS = [(8, 3, 3, 3), (0,), (5, 7), (2049,), (6, 4, 2, 2)]  # an empty layer; the last one channels_last


def _pieces(dtype, generator):
    pieces = []
    for index, shape in enumerate(LAYERS):
        grad = torch.randn(shape, generator=generator).to(dtype)
        if index == len(LAYERS) - 1:
            grad = grad.to(memory_format=torch.channels_last)
        pieces.append(grad)
    return pieces


def _in_memory_order(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() == 4 and not tensor.is_contiguous():
        return tensor.permute(0, 2, 3, 1).reshape(-1)
    return tensor.reshape(-1)


def _state(total, generator):
    scores = torch.rand(total, generator=generator)
    scores[::13] = 0.5
    buffer = torch.randn(total, generator=generator) * 0.1
    flags = torch.rand(total, generator=generator) > 0.25
    return scores, buffer, flags


@pytest.mark.parametrize("weight_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("with_masked", [False, True])
def test_equals_the_step_given_the_product(backend, generator, weight_dtype, with_masked):
    pieces = _pieces(weight_dtype, generator)
    total = sum(piece.numel() for piece in pieces)
    weights = torch.randn(total, generator=generator).to(weight_dtype)
    scores, buffer, flags = _state(total, generator)
    hyper = {"lr": 0.7, "momentum": 0.9, "l2": 3e-3}
    product = torch.cat([_in_memory_order(piece) for piece in pieces]).float() * weights.float()

    plain_scores, plain_buffer = scores.clone(), buffer.clone()
    plain_kept = gemminer_step_(plain_scores, product, plain_buffer, flags, **hyper)

    masked = torch.full((total,), float("nan"), dtype=weight_dtype) if with_masked else None
    kept = gemminer_step_from_masked_grads_(scores, pieces, buffer, flags, weights=weights, masked_out=masked, **hyper)
    assert isinstance(kept, torch.Tensor) and kept.dtype == torch.int64 and int(kept) == plain_kept
    assert torch.equal(scores.view(torch.int32), plain_scores.view(torch.int32))
    assert torch.equal(buffer.view(torch.int32), plain_buffer.view(torch.int32))
    if with_masked:
        assert torch.equal(masked, gemminer_mask(weights, scores, flags))


@pytest.mark.parametrize("weight_dtype", FLOAT_DTYPES)
def test_matches_the_hand_formula(backend, generator, weight_dtype):
    pieces = _pieces(weight_dtype, generator)
    total = sum(piece.numel() for piece in pieces)
    weights = torch.randn(total, generator=generator).to(weight_dtype)
    scores, buffer, flags = _state(total, generator)
    lr, momentum, l2 = 0.5, 0.8, 1e-2
    g = torch.cat([_in_memory_order(piece) for piece in pieces]).double() * weights.double()
    v_new = momentum * buffer.double() + g + 2 * l2 * scores.double()
    p_new = (scores.double() - lr * v_new).clamp(0, 1)
    want_scores = torch.where(flags, p_new, scores.double()).float()
    want_buffer = torch.where(flags, v_new, buffer.double()).float()
    original_scores, original_buffer = scores.clone(), buffer.clone()
    gemminer_step_from_masked_grads_(scores, pieces, buffer, flags, lr=lr, momentum=momentum, l2=l2, weights=weights)
    assert_float_close(scores, want_scores)
    assert_float_close(buffer, want_buffer)
    assert torch.equal(scores[~flags], original_scores[~flags]) and torch.equal(buffer[~flags], original_buffer[~flags])


def test_an_empty_list_of_an_empty_step(backend):
    empty = torch.empty(0)
    kept = gemminer_step_from_masked_grads_(empty, [], empty.clone(), torch.empty(0, dtype=torch.bool), lr=0.1,
                                            weights=torch.empty(0))
    assert int(kept) == 0


def test_bad_arguments_are_named(backend, generator):
    pieces = _pieces(torch.float32, generator)
    total = sum(piece.numel() for piece in pieces)
    weights = torch.randn(total, generator=generator)
    scores, buffer, flags = _state(total, generator)

    def step(**changes):
        arguments = {"scores": scores, "masked_grads": pieces, "momentum_buffer": buffer, "flags": flags,
                     "weights": weights, "masked_out": None, **changes}
        masked_grads = arguments.pop("masked_grads")
        gemminer_step_from_masked_grads_(arguments.pop("scores"), masked_grads, arguments.pop("momentum_buffer"),
                                         arguments.pop("flags"), lr=0.1, **arguments)

    with pytest.raises(ValueError, match="masked_grads must hold one gradient per entry of scores"):
        step(masked_grads=pieces[:-1])
    with pytest.raises(TypeError, match=r"masked_grads\[2\] must be"):
        step(masked_grads=[pieces[0], pieces[1], pieces[2].double(), *pieces[3:]])
    with pytest.raises(ValueError, match=r"masked_grads\[2\] must be contiguous or channels_last"):
        step(masked_grads=[pieces[0], pieces[1], pieces[2].t().contiguous().t(), *pieces[3:]])
    with pytest.raises(ValueError, match="weights must be 1-D and contiguous"):
        step(weights=weights[:-1])
    both = r"(masked_out|scores)(\[0\])? must not share memory with (scores|masked_out)"  # the two, in C++ or Python
    with pytest.raises(ValueError, match=both):
        step(masked_out=scores)
    aliased = [buffer[:pieces[0].numel()].view(pieces[0].shape), *pieces[1:]]  # an input on an output's memory
    with pytest.raises(ValueError, match=r"momentum_buffer(\[0\])? must not share memory with masked_grads\[0\]"):
        step(masked_grads=aliased)
    assert torch.isfinite(scores).all()
