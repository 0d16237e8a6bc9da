"""Reference for the masked optimizer steps ``masked_sgd_`` and ``masked_adam_``.

Each is ``torch.optim``'s for-loop step (``foreach=False``), op for op, followed by zeroing the
pruned entries of the weights and of the optimizer state: on the kept entries it gives
``torch.optim.SGD`` / ``Adam`` / ``AdamW`` bit for bit, in any dtype; pruned entries come out
exactly 0 whatever their gradient held (inf and NaN included). A packed mask (uint8, bit j of
byte i = entry 8i+j of the parameter in its memory order) is unpacked first.
"""

from __future__ import annotations

import torch

from sparseticket.reference.masks import unpack_mask


def _keep(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The bool mask of ``param``'s shape: ``mask`` itself, or a packed mask unpacked into the
    parameter's layout (its bits count the entries in the parameter's memory order)."""
    if mask.dtype == torch.bool:
        return mask
    keep = torch.empty_like(param, dtype=torch.bool)  # param's strides (it is contiguous or channels_last)
    keep.as_strided((keep.numel(),), (1,)).copy_(unpack_mask(mask, param.numel()))
    return keep


def _zero_pruned(mask: torch.Tensor, param: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    pruned = ~_keep(mask, param)
    for tensor in tensors:
        tensor.masked_fill_(pruned, 0)


def masked_sgd_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor],
    masks: list[torch.Tensor],
    lr: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    first_step: bool,
) -> None:
    """One SGD step over the list, in place; then pruned weights and momentum set to 0.

    ``momentum_buffers`` is empty when ``momentum == 0``; ``first_step``: the buffers are set to
    the (decayed) gradient, as torch does when a parameter has no buffer yet. ``masks`` is empty
    (every entry kept), one bool tensor of each parameter's shape, or one packed uint8 mask of
    ``ceil(numel / 8)`` bytes per parameter.
    """
    for index, param in enumerate(params):
        grad = grads[index] if not maximize else -grads[index]
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        buffer = None
        if momentum != 0:
            buffer = momentum_buffers[index]
            if first_step:
                buffer.copy_(grad)
            else:
                buffer.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buffer, alpha=momentum) if nesterov else buffer
        param.add_(grad, alpha=-lr)
        if masks:
            _zero_pruned(masks[index], param, [param] if buffer is None else [param, buffer])


def masked_adam_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    masks: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: float,
    decoupled: bool,
    maximize: bool,
) -> None:
    """One Adam (``decoupled=False``) or AdamW step at step count ``step`` (already incremented),
    in place; then pruned weights and moments set to 0. AMSGrad when ``max_exp_avg_sqs`` is
    not empty. ``masks`` as in ``masked_sgd_``.
    """
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    for index, param in enumerate(params):
        grad = grads[index] if not maximize else -grads[index]
        exp_avg, exp_avg_sq = exp_avgs[index], exp_avg_sqs[index]
        if weight_decay != 0:
            if decoupled:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state = [param, exp_avg, exp_avg_sq]
        if max_exp_avg_sqs:
            torch.maximum(max_exp_avg_sqs[index], exp_avg_sq, out=max_exp_avg_sqs[index])
            denom = (max_exp_avg_sqs[index].sqrt() / bias_correction2_sqrt).add_(eps)
            state.append(max_exp_avg_sqs[index])
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
        if masks:
            _zero_pruned(masks[index], param, state)
