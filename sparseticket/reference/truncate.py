"""Reference for ``truncate_grads_``: L1 subgradient plus keep/scale truncation, in place."""

from __future__ import annotations

import torch


def truncate_grads_(
    grads: list[torch.Tensor],
    keep: list[torch.Tensor],
    params: list[torch.Tensor],
    scale: float,
    l1: float,
) -> None:
    """g <- g + l1*sign(p) where keep, else that times scale, in fp32, for each tensor of the list.

    Where keep is False and scale is 0 the result is exactly 0 (a select: inf*0 would be NaN);
    elsewhere NaN and inf propagate as the arithmetic says.

    ``keep[i]`` is bool, per element (``grads[i]``'s shape, or flat in row-major order) or per
    output channel (``(grads[i].shape[0],)``, broadcast over the trailing dims). Computed on the
    logical elements, so it holds for any memory layout (row-major or channels_last).
    ``params`` is empty when ``l1 == 0``.
    """
    for index, grad in enumerate(grads):
        if grad.numel() == 0:
            continue
        mask = keep[index]
        if mask.numel() == grad.numel():
            kept = mask.reshape(grad.shape)
        else:  # per channel
            kept = mask.reshape(-1, *([1] * (grad.dim() - 1)))
        value = grad.to(torch.float32)
        if l1 != 0.0:
            value = value + l1 * torch.sign(params[index].to(torch.float32))
        dropped = torch.zeros_like(value) if scale == 0.0 else value * scale
        grad.copy_(torch.where(kept, value, dropped))
