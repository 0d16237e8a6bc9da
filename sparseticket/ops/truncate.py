"""``truncate_grads_``: L1 subgradient and keep/scale truncation of many gradients in one launch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparseticket.ops._library import define_op
from sparseticket.ops._validate import (
    FLOAT_DTYPES,
    check_contiguous,
    check_float,
    check_same_shape,
    check_tensor,
    check_tensor_list,
)

_truncate_op = define_op(
    "truncate_grads_",
    "(Tensor(a!)[] grads, Tensor[] keep, Tensor[] params, float scale, float l1) -> ()",
)


@torch.library.register_fake("sparseticket::truncate_grads_")
def _truncate_fake(grads, keep, params, scale, l1) -> None:
    return None


def _checked_keep(index: int, mask: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    name = f"keep[{index}]"
    check_tensor(name, mask, (torch.bool,), grad.device)
    per_channel = grad.dim() >= 1 and mask.dim() == 1 and mask.shape[0] == grad.shape[0]
    if not per_channel and mask.shape != grad.shape:
        expected = f"({grad.shape[0]},) or " if grad.dim() >= 1 else ""
        raise ValueError(f"{name} must have shape {expected}{tuple(grad.shape)} (per channel or per "
                         f"element of grads[{index}]), got {tuple(mask.shape)}")
    return mask.contiguous()


def truncate_grads_(
    grads: Sequence[torch.Tensor],
    keep: Sequence[torch.Tensor],
    *,
    scale: float = 0.0,
    params: Sequence[torch.Tensor] | None = None,
    l1: float = 0.0,
) -> None:
    """In place, for each i: ``g_i <- (g_i + l1*sign(params_i)) * (keep_i + scale*~keep_i)``.

    ``keep_i`` is bool, per channel (shape ``(g_i.shape[0],)``, broadcast over trailing dims) or
    per element (shape of ``g_i``). All gradients are updated in one kernel launch. With
    ``scale=0`` the gradients of dropped entries become zero (IMP); ``scale=chi`` is WORM's
    truncation; ``l1`` adds EarlyBird's L1 subgradient (needs ``params``). Math is in fp32.
    """
    grads = check_tensor_list("grads", grads, FLOAT_DTYPES)
    keep_list = check_tensor_list("keep", keep, (torch.bool,), grads[0].device if grads else None)
    if len(keep_list) != len(grads):
        raise ValueError(f"keep must have one mask per gradient: got {len(keep_list)} masks "
                         f"for {len(grads)} grads")
    scale = check_float("scale", scale)
    l1 = check_float("l1", l1)
    if l1 != 0.0 and params is None:
        raise ValueError("l1 != 0 requires params (the tensors whose sign is added to grads)")
    param_list: list[torch.Tensor] = []
    if params is not None:
        param_list = check_tensor_list("params", params, FLOAT_DTYPES, grads[0].device if grads else None)
        if len(param_list) != len(grads):
            raise ValueError(f"params must have one tensor per gradient: got {len(param_list)} "
                             f"for {len(grads)} grads")
    if not grads:
        return
    device = grads[0].device
    masks = []
    for index, grad in enumerate(grads):
        check_contiguous(f"grads[{index}]", grad)
        masks.append(_checked_keep(index, keep_list[index], grad))
    if l1 == 0.0:
        param_list = []
    for index, param in enumerate(param_list):
        check_tensor(f"params[{index}]", param, FLOAT_DTYPES, device)
        check_same_shape(f"params[{index}]", param, f"grads[{index}]", grads[index])
    _truncate_op(grads, masks, [param.detach().contiguous() for param in param_list], scale, l1)
