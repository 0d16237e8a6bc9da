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

    ``keep[i]`` is bool with ``grads[i].numel() // keep[i].numel()`` consecutive elements of
    ``grads[i]`` per entry (1: per element; numel/shape[0]: per output channel).
    ``params`` is empty when ``l1 == 0``.
    """
    for index, grad in enumerate(grads):
        if grad.numel() == 0:
            continue
        flat = grad.view(-1)
        inner = flat.numel() // keep[index].numel()
        kept = keep[index].reshape(-1).repeat_interleave(inner)
        value = flat.to(torch.float32)
        if l1 != 0.0:
            value = value + l1 * torch.sign(params[index].reshape(-1).to(torch.float32))
        dropped = torch.zeros_like(value) if scale == 0.0 else value * scale
        flat.copy_(torch.where(kept, value, dropped))
