"""Reference for the Gem-Miner ops: the score-masked weight and the fused score update."""

from __future__ import annotations

import torch


def gemminer_mask(weight: torch.Tensor, scores: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """weight where (scores > 0.5) and flags, else 0 (in weight's dtype)."""
    keep = (scores > 0.5) & flags
    return torch.where(keep, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def gemminer_mask_backward(
    grad: torch.Tensor,
    weight: torch.Tensor,
    scores: torch.Tensor,
    flags: torch.Tensor,
    need_weight: bool,
    need_scores: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through gradients: (grad*(scores>0.5)*flags, grad*weight*flags).

    Either result is an empty tensor when not needed. Products are computed in fp32 and cast to
    the dtype of the tensor the gradient is for.
    """
    empty = grad.new_empty(0)
    grad_weight = empty
    grad_scores = empty
    if need_weight:
        keep = (scores > 0.5) & flags
        grad_weight = torch.where(keep, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        grad_weight = grad_weight.to(weight.dtype)
    if need_scores:
        product = grad.to(torch.float32) * weight.to(torch.float32)
        grad_scores = torch.where(flags, product, 0.0).to(scores.dtype)
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
    """Where flags: v <- momentum*v + g + 2*l2*p; p <- clamp(p - lr*v, 0, 1) (fp32 math).

    Returns the number of entries with p > 0.5 and flags after the update (0-d int64). With
    ``weights``, also ``masked_out <- gemminer_mask(weights, updated scores, flags)``.
    """
    p = scores.to(torch.float32)
    v = momentum_buffer.to(torch.float32)
    g = grads.to(torch.float32)
    v_new = momentum * v + (g + (2.0 * l2) * p)
    p_new = torch.clamp(p - lr * v_new, 0.0, 1.0)
    momentum_buffer.copy_(torch.where(flags, v_new, v).to(momentum_buffer.dtype))
    scores.copy_(torch.where(flags, p_new, p).to(scores.dtype))
    if masked_out is not None:
        masked_out.copy_(gemminer_mask(weights, scores, flags))
    return ((scores > 0.5) & flags).sum()


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
    """``gemminer_step_`` with the scores' gradient ``masked_grads * weights`` (fp32 product): the
    masked weights' gradients, one tensor per layer, read in each one's memory order (contiguous or
    channels_last), concatenated in list order to line up with the flat scores."""
    flat = [grad.as_strided((grad.numel(),), (1,)) for grad in masked_grads]  # memory order
    grads = torch.cat(flat).to(torch.float32) if flat else weights.new_empty(0, dtype=torch.float32)
    grads = grads * weights.to(torch.float32)
    return gemminer_step_(scores, grads, momentum_buffer, flags, lr, momentum, l2,
                          weights if masked_out is not None else None, masked_out)
