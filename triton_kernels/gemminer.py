"""Triton kernels for Gem-Miner: the score-masked weight (forward, backward) and the fused step
(which can also write the masked weights of the updated scores)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparseticket.triton_kernels._common import all_aligned, aot_attrs, round_to, to_float32

BLOCK = 2048


@triton.jit
def load_block(pointer, offsets, in_range, full):
    """Load a block: unmasked (vectorisable) when the block is full, else masked with 0."""
    if full:
        return tl.load(pointer + offsets)
    return tl.load(pointer + offsets, mask=in_range, other=0)


@triton.jit
def store_block(pointer, offsets, value, in_range, full):
    """Store a block: unmasked when the block is full, else masked."""
    if full:
        tl.store(pointer + offsets, value)
    else:
        tl.store(pointer + offsets, value, mask=in_range)


@triton.jit
def gemminer_mask_kernel(weight, scores, flags, out, numel, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """out = weight where scores > 0.5 and flags, else 0."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < numel
    full = (tl.program_id(0).to(tl.int64) + 1) * BLOCK <= numel
    if ALIGNED:
        weight = tl.multiple_of(weight, 16)
        scores = tl.multiple_of(scores, 16)
        flags = tl.multiple_of(flags, 16)
        out = tl.multiple_of(out, 16)
    value = load_block(weight, offsets, in_range, full)
    keep = (to_float32(load_block(scores, offsets, in_range, full)) > 0.5) & \
        (load_block(flags, offsets, in_range, full) != 0)
    store_block(out, offsets, tl.where(keep, value, 0), in_range, full)


@triton.jit
def gemminer_mask_backward_kernel(
    grad, weight, scores, flags, grad_weight, grad_scores, numel,
    NEED_WEIGHT: tl.constexpr, NEED_SCORES: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):
    """grad_weight = grad where kept, else 0; grad_scores = grad*weight where flags, else 0."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < numel
    full = (tl.program_id(0).to(tl.int64) + 1) * BLOCK <= numel
    if ALIGNED:
        grad = tl.multiple_of(grad, 16)
        weight = tl.multiple_of(weight, 16)
        scores = tl.multiple_of(scores, 16)
        flags = tl.multiple_of(flags, 16)
    upstream = load_block(grad, offsets, in_range, full)
    active = load_block(flags, offsets, in_range, full) != 0
    if NEED_WEIGHT:
        keep = (to_float32(load_block(scores, offsets, in_range, full)) > 0.5) & active
        result = round_to(to_float32(tl.where(keep, upstream, 0)), grad_weight.dtype.element_ty)
        store_block(grad_weight, offsets, result, in_range, full)
    if NEED_SCORES:
        product = to_float32(upstream) * to_float32(load_block(weight, offsets, in_range, full))
        result = round_to(tl.where(active, product, 0.0), grad_scores.dtype.element_ty)
        store_block(grad_scores, offsets, result, in_range, full)


@triton.jit
def gemminer_step_kernel(
    scores, grads, momentum_buffer, flags, kept, weights, masked_out, numel, lr, momentum, l2,
    HAS_MASKED: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr, GRAD_OF_MASKED: tl.constexpr = False,
):
    """SGD-with-momentum on the scores plus the L2 term, clamp to [0, 1], count kept entries;
    with HAS_MASKED also masked_out = weights where the stored score > 0.5 and flags, else 0. With
    GRAD_OF_MASKED, grads (weights' dtype) is the masked weights' gradient and the scores' is
    grads * weights (fp32)."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < numel
    full = (tl.program_id(0).to(tl.int64) + 1) * BLOCK <= numel
    if ALIGNED:
        scores = tl.multiple_of(scores, 16)
        grads = tl.multiple_of(grads, 16)
        momentum_buffer = tl.multiple_of(momentum_buffer, 16)
        flags = tl.multiple_of(flags, 16)
        if HAS_MASKED or GRAD_OF_MASKED:
            weights = tl.multiple_of(weights, 16)
        if HAS_MASKED:
            masked_out = tl.multiple_of(masked_out, 16)
    p = to_float32(load_block(scores, offsets, in_range, full))
    v = to_float32(load_block(momentum_buffer, offsets, in_range, full))
    g = to_float32(load_block(grads, offsets, in_range, full))
    if GRAD_OF_MASKED:
        g = g * to_float32(load_block(weights, offsets, in_range, full))
    active = (load_block(flags, offsets, in_range, full) != 0) & in_range
    v_new = momentum * v + (g + (2.0 * l2) * p)
    # NaN stays NaN, as in torch.clamp and the C++ kernel (the default min/max drop it on NVIDIA GPUs)
    p_new = tl.clamp(p - lr * v_new, 0.0, 1.0, propagate_nan=tl.PropagateNan.ALL)
    v_out = round_to(tl.where(active, v_new, v), momentum_buffer.dtype.element_ty)
    p_out = round_to(tl.where(active, p_new, p), scores.dtype.element_ty)
    store_block(momentum_buffer, offsets, v_out, in_range, full)
    store_block(scores, offsets, p_out, in_range, full)
    keep = (to_float32(p_out) > 0.5) & active  # the stored score decides, as gemminer_mask reads it
    if HAS_MASKED:
        value = load_block(weights, offsets, in_range, full)
        store_block(masked_out, offsets, tl.where(keep, value, 0), in_range, full)
    count = tl.sum(keep.to(tl.int64), axis=0)
    tl.atomic_add(kept, count)


def _grid(numel: int) -> tuple[int]:
    return (triton.cdiv(numel, BLOCK),)


def gemminer_mask(weight: torch.Tensor, scores: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """weight where (scores > 0.5) and flags, else 0 (contract: reference.gemminer)."""
    out = torch.empty_like(weight)
    if weight.numel():
        gemminer_mask_kernel[_grid(weight.numel())](
            weight, scores, flags, out, weight.numel(),
            ALIGNED=all_aligned([weight, scores, flags, out]), BLOCK=BLOCK)
    return out


def gemminer_mask_backward(
    grad: torch.Tensor,
    weight: torch.Tensor,
    scores: torch.Tensor,
    flags: torch.Tensor,
    need_weight: bool,
    need_scores: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through gradients in one pass (contract: reference.gemminer)."""
    empty = grad.new_empty(0)
    grad_weight = torch.empty_like(weight) if need_weight else empty
    grad_scores = torch.empty_like(scores) if need_scores else empty
    if grad.numel() and (need_weight or need_scores):
        gemminer_mask_backward_kernel[_grid(grad.numel())](
            grad, weight, scores, flags,
            grad_weight if need_weight else grad, grad_scores if need_scores else grad,
            grad.numel(), NEED_WEIGHT=need_weight, NEED_SCORES=need_scores,
            ALIGNED=all_aligned([grad, weight, scores, flags, grad_weight, grad_scores]), BLOCK=BLOCK)
    return grad_weight, grad_scores


def gemminer_step_(
    scores: torch.Tensor,
    grads: torch.Tensor,
    momentum_buffer: torch.Tensor,
    flags: torch.Tensor,
    lr: float,
    momentum: float,
    l2: float,
    weights: torch.Tensor | None = None,
    masked_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused score update, with ``weights`` also the masked weights into ``masked_out``; returns
    the kept count as a 0-d int64 tensor (contract: reference)."""
    kept = torch.zeros((), dtype=torch.int64, device=scores.device)
    has_masked = masked_out is not None
    if scores.numel():
        streams = [scores, grads, momentum_buffer, flags] + ([weights, masked_out] if has_masked else [])
        gemminer_step_kernel[_grid(scores.numel())](
            scores, grads, momentum_buffer, flags, kept,
            weights if has_masked else scores, masked_out if has_masked else scores,  # unread placeholders
            scores.numel(), float(lr), float(momentum), float(l2),
            HAS_MASKED=has_masked, ALIGNED=all_aligned(streams), BLOCK=BLOCK)
    return kept


def gemminer_step_from_masked_grads_(
    scores: torch.Tensor,
    masked_grads: list[torch.Tensor],
    momentum_buffer: torch.Tensor,
    flags: torch.Tensor,
    lr: float,
    momentum: float,
    l2: float,
    weights: torch.Tensor,
    masked_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``gemminer_step_`` with the scores' gradient ``masked_grads * weights``: one launch per layer
    on its slice of the flat buffers, all counting into one kept total (contract: reference)."""
    kept = torch.zeros((), dtype=torch.int64, device=scores.device)
    has_masked = masked_out is not None
    start = 0
    for grad in masked_grads:
        count = grad.numel()
        if count:
            part = slice(start, start + count)
            flat_grad = grad.as_strided((count,), (1,))  # its memory order
            out = masked_out[part] if has_masked else scores[part]  # unread placeholder without masked_out
            streams = [scores[part], flat_grad, momentum_buffer[part], flags[part], weights[part], out]
            gemminer_step_kernel[_grid(count)](
                scores[part], flat_grad, momentum_buffer[part], flags[part], kept, weights[part], out,
                count, float(lr), float(momentum), float(l2),
                HAS_MASKED=has_masked, ALIGNED=all_aligned(streams), BLOCK=BLOCK, GRAD_OF_MASKED=True)
        start += count
    return kept


_STEP_SIGNATURE = {
    "scores": "*fp32", "grads": "*fp32", "momentum_buffer": "*fp32", "flags": "*i1", "kept": "*i64",
    "weights": "*fp32", "masked_out": "*fp32", "numel": "i64", "lr": "fp32", "momentum": "fp32", "l2": "fp32",
    "HAS_MASKED": "constexpr", "ALIGNED": "constexpr", "BLOCK": "constexpr", "GRAD_OF_MASKED": "constexpr",
}
AOT_SPECS = [
    {
        "name": "gemminer_mask_kernel",
        "fn": gemminer_mask_kernel,
        "signature": {"weight": "*fp32", "scores": "*fp32", "flags": "*i1", "out": "*fp32",
                      "numel": "i64", "ALIGNED": "constexpr", "BLOCK": "constexpr"},
        "constexprs": {"ALIGNED": True, "BLOCK": BLOCK},
        "attrs": aot_attrs([0, 1, 2, 3]),
        "streaming": True,
    },
    {
        "name": "gemminer_mask_backward_kernel",
        "fn": gemminer_mask_backward_kernel,
        "signature": {"grad": "*fp32", "weight": "*fp32", "scores": "*fp32", "flags": "*i1",
                      "grad_weight": "*fp32", "grad_scores": "*fp32", "numel": "i64",
                      "NEED_WEIGHT": "constexpr", "NEED_SCORES": "constexpr",
                      "ALIGNED": "constexpr", "BLOCK": "constexpr"},
        "constexprs": {"NEED_WEIGHT": True, "NEED_SCORES": True, "ALIGNED": True, "BLOCK": BLOCK},
        "attrs": aot_attrs([0, 1, 2, 3, 4, 5]),
        "streaming": True,
    },
    {
        "name": "gemminer_step_kernel",
        "fn": gemminer_step_kernel,
        "signature": _STEP_SIGNATURE,
        "constexprs": {"HAS_MASKED": True, "ALIGNED": True, "BLOCK": BLOCK, "GRAD_OF_MASKED": False},
        "attrs": aot_attrs([0, 1, 2, 3, 4, 5, 6]),
        "streaming": True,
    },
]

__all__ = ["gemminer_mask", "gemminer_mask_backward", "gemminer_step_", "gemminer_step_from_masked_grads_"]
