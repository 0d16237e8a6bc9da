"""Gem-Miner ops: the score-masked weight (straight-through gradient) and the fused score step."""

from __future__ import annotations

import torch

from sparseticket.ops._library import define_op, register_fake
from sparseticket.ops._validate import check_float, require_tensors

_mask_op = define_op("gemminer_mask", "(Tensor weight, Tensor scores, Tensor flags) -> Tensor")
_mask_backward_op = define_op(
    "gemminer_mask_backward",
    "(Tensor grad, Tensor weight, Tensor scores, Tensor flags, bool need_weight, bool need_scores)"
    " -> (Tensor, Tensor)",
)
_step_op = define_op(
    "gemminer_step_",
    "(Tensor(a!) scores, Tensor grads, Tensor(b!) momentum_buffer, Tensor flags, float lr, "
    "float momentum, float l2) -> Tensor",
)


@register_fake("gemminer_mask")
def _mask_fake(weight, scores, flags):
    return torch.empty_like(weight)


@register_fake("gemminer_mask_backward")
def _mask_backward_fake(grad, weight, scores, flags, need_weight, need_scores):
    empty = grad.new_empty(0)
    return (torch.empty_like(weight) if need_weight else empty,
            torch.empty_like(scores) if need_scores else empty)


@register_fake("gemminer_step_")
def _step_fake(scores, grads, momentum_buffer, flags, lr, momentum, l2):
    return scores.new_empty((), dtype=torch.int64)


def _setup_context(ctx, inputs, output) -> None:
    weight, scores, flags = inputs
    ctx.save_for_backward(weight, scores, flags)


def _backward(ctx, grad):
    weight, scores, flags = ctx.saved_tensors
    need_weight, need_scores = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_weight, grad_scores = _mask_backward_op(grad, weight, scores, flags, need_weight, need_scores)
    return (grad_weight if need_weight else None, grad_scores if need_scores else None, None)


torch.library.register_autograd("sparseticket::gemminer_mask", _backward, setup_context=_setup_context)


def gemminer_mask(weight: torch.Tensor, scores: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """``weight * (scores > 0.5) * flags`` with Gem-Miner's straight-through gradient.

    Backward: d/dscores = grad * weight * flags; d/dweight = grad * (scores > 0.5) * flags.
    ``flags`` is bool (False: frozen to zero). Output dtype is weight's; math in fp32.
    """
    require_tensors(weight=weight, scores=scores, flags=flags)
    return _mask_op(weight, scores, flags)  # the op checks dtypes, devices and shapes


def gemminer_step_(
    scores: torch.Tensor,
    grads: torch.Tensor,
    momentum_buffer: torch.Tensor,
    flags: torch.Tensor,
    *,
    lr: float,
    momentum: float = 0.9,
    l2: float = 0.0,
) -> int:
    """One fused SGD-with-momentum step on Gem-Miner scores, clamped to [0, 1], in place.

    Where ``flags``: ``v <- momentum*v + g + 2*l2*p``; ``p <- clamp(p - lr*v, 0, 1)``; entries
    with ``flags`` False stay unchanged. Equals ``torch.optim.SGD(momentum, dampening=0)`` on
    ``task + l2*||p||^2`` followed by a clamp. Returns the number of entries with p > 0.5 and
    flags after the update (this syncs with the GPU: ``torch.ops.sparseticket.gemminer_step_``
    takes the same arguments positionally and returns the count as a 0-d tensor instead).
    """
    require_tensors(scores=scores, grads=grads, momentum_buffer=momentum_buffer, flags=flags)
    lr = check_float("lr", lr)
    momentum = check_float("momentum", momentum)
    l2 = check_float("l2", l2)
    kept = _step_op(scores.detach(), grads.detach(), momentum_buffer.detach(), flags, lr, momentum, l2)
    return int(kept.item())
