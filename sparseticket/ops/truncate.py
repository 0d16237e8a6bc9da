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


def _keep_shape_error(index: int, mask: torch.Tensor, grad: torch.Tensor) -> ValueError:
    expected = f"({grad.shape[0]},) or " if grad.dim() >= 1 else ""
    return ValueError(f"keep[{index}] must have shape {expected}{tuple(grad.shape)} (per channel or "
                      f"per element of grads[{index}]), got {tuple(mask.shape)}")


def _check_lists(grads, keep, params) -> tuple[list, list, list]:
    """One pass over the lists (this runs every training step: each tensor is touched once).

    The fast checks compare dtypes and devices with the first tensor; on any mismatch the full
    per-argument checks run to produce the message.
    """
    for name, values in (("grads", grads), ("keep", keep), ("params", params)):
        if values is not None and (isinstance(values, torch.Tensor) or not isinstance(values, Sequence)):
            raise TypeError(f"{name} must be a list or tuple of tensors, got {type(values).__name__}")
    grads, keep = list(grads), list(keep)
    params = list(params) if params is not None else []
    if len(keep) != len(grads):
        raise ValueError(f"keep must have one mask per gradient: got {len(keep)} masks for "
                         f"{len(grads)} grads")
    if params and len(params) != len(grads):
        raise ValueError(f"params must have one tensor per gradient: got {len(params)} for "
                         f"{len(grads)} grads")
    if not grads:
        return grads, keep, params
    first = check_tensor("grads[0]", grads[0], FLOAT_DTYPES)
    grad_dtype, device = first.dtype, first.device
    param_dtype = check_tensor("params[0]", params[0], FLOAT_DTYPES, device).dtype if params else None
    masks = []
    for index, (grad, mask) in enumerate(zip(grads, keep)):
        try:
            fast = grad.dtype is grad_dtype and mask.dtype is torch.bool and grad.device == device \
                and mask.device == device
        except AttributeError:
            fast = False
        if not fast:
            check_tensor_list("grads", grads, FLOAT_DTYPES, device)
            check_tensor(f"keep[{index}]", mask, (torch.bool,), device)
        if not grad.is_contiguous():
            check_contiguous(f"grads[{index}]", grad)
        shape, mask_shape = grad.shape, mask.shape
        if mask_shape != shape and not (len(mask_shape) == 1 and len(shape) >= 1 and mask_shape[0] == shape[0]):
            raise _keep_shape_error(index, mask, grad)
        masks.append(mask if mask.is_contiguous() else mask.contiguous())
    for index, (param, grad) in enumerate(zip(params, grads)):
        if not (isinstance(param, torch.Tensor) and param.dtype is param_dtype and param.device == device):
            check_tensor_list("params", params, FLOAT_DTYPES, device)
        if param.shape != grad.shape:
            check_same_shape(f"params[{index}]", param, f"grads[{index}]", grad)
        if not param.is_contiguous():
            params[index] = param.contiguous()
    return grads, masks, params


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
    scale = check_float("scale", scale)
    l1 = check_float("l1", l1)
    if l1 != 0.0 and params is None:
        raise ValueError("l1 != 0 requires params (the tensors whose sign is added to grads)")
    grads, masks, params = _check_lists(grads, keep, params)
    if grads:
        _truncate_op(grads, masks, params if l1 != 0.0 else [], scale, l1)
