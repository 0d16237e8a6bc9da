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


ARGUMENT_NAMES = ("grads", "keep", "params")


def _keep_shape_error(index: int, mask: torch.Tensor, grad: torch.Tensor, names: tuple[str, str, str]
                      ) -> ValueError:
    expected = f"({grad.shape[0]},) or " if grad.dim() >= 1 else ""
    return ValueError(f"{names[1]}[{index}] must have shape {expected}{tuple(grad.shape)} (per channel or "
                      f"per element of {names[0]}[{index}]), got {tuple(mask.shape)}")


def _check_lists(grads, keep, params, names: tuple[str, str, str] = ARGUMENT_NAMES) -> tuple[list, list, list]:
    """One pass over the lists (this runs every training step: each tensor is touched once).

    The fast checks compare dtypes and devices with the first tensor; on any mismatch the full
    per-argument checks run to produce the message. ``names``: the arguments as the caller calls them.
    """
    grads_name, keep_name, params_name = names
    for name, values in ((grads_name, grads), (keep_name, keep), (params_name, params)):
        if values is not None and (isinstance(values, torch.Tensor) or not isinstance(values, Sequence)):
            raise TypeError(f"{name} must be a list or tuple of tensors, got {type(values).__name__}")
    grads, keep = list(grads), list(keep)
    params = list(params) if params is not None else []
    if len(keep) != len(grads):
        raise ValueError(f"{keep_name} must have one mask per gradient: got {len(keep)} masks for "
                         f"{len(grads)} {grads_name}")
    if params and len(params) != len(grads):
        raise ValueError(f"{params_name} must have one tensor per gradient: got {len(params)} for "
                         f"{len(grads)} {grads_name}")
    if not grads:
        return grads, keep, params
    first = check_tensor(f"{grads_name}[0]", grads[0], FLOAT_DTYPES)
    grad_dtype, device = first.dtype, first.device
    param_dtype = check_tensor(f"{params_name}[0]", params[0], FLOAT_DTYPES, device).dtype if params else None
    masks = []
    for index, (grad, mask) in enumerate(zip(grads, keep)):
        try:
            fast = grad.dtype is grad_dtype and mask.dtype is torch.bool and grad.device == device \
                and mask.device == device
        except AttributeError:
            fast = False
        if not fast:
            check_tensor_list(grads_name, grads, FLOAT_DTYPES, device)
            check_tensor(f"{keep_name}[{index}]", mask, (torch.bool,), device)
        if not grad.is_contiguous():
            check_contiguous(f"{grads_name}[{index}]", grad)
        shape, mask_shape = grad.shape, mask.shape
        if mask_shape != shape and not (len(mask_shape) == 1 and len(shape) >= 1 and mask_shape[0] == shape[0]):
            raise _keep_shape_error(index, mask, grad, names)
        masks.append(mask if mask.is_contiguous() else mask.contiguous())
    for index, (param, grad) in enumerate(zip(params, grads)):
        if not (isinstance(param, torch.Tensor) and param.dtype is param_dtype and param.device == device):
            check_tensor_list(params_name, params, FLOAT_DTYPES, device)
        if param.shape != grad.shape:
            check_same_shape(f"{params_name}[{index}]", param, f"{grads_name}[{index}]", grad)
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


class TruncationPlan:
    """``truncate_grads_`` on the gradients of a fixed list of parameters, checked once.

    ``TruncationPlan(params, keep, scale=..., l1=..., l1_params=...)`` checks the lists as
    ``truncate_grads_`` would; each call ``plan()`` then reads every parameter's ``.grad`` and
    launches once, checking only that each gradient is contiguous (PyTorch keeps a gradient's
    shape, dtype and device equal to its parameter's). That is what the methods run every step.
    ``l1_params`` (default: ``params``) give the sign of the L1 term. Parameters without a
    gradient are left out of that call. The keep masks may be edited in place between calls.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        keep: Sequence[torch.Tensor],
        *,
        scale: float = 0.0,
        l1: float = 0.0,
        l1_params: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self._scale = check_float("scale", scale)
        self._l1 = check_float("l1", l1)
        if isinstance(params, torch.Tensor) or not isinstance(params, Sequence):
            raise TypeError(f"params must be a list or tuple of tensors, got {type(params).__name__}")
        if self._l1 != 0.0 and l1_params is None:
            l1_params = params
        names = ("params", "keep", "l1_params")
        self._params, self._keep, self._l1_params = _check_lists(
            params, keep, l1_params if self._l1 != 0.0 else None, names)
        # _check_lists copies non-contiguous masks and sign tensors: a plan would then read stale copies
        for name, given, kept in (("keep", keep, self._keep), ("l1_params", l1_params or [], self._l1_params)):
            for index, (original, used) in enumerate(zip(given, kept)):
                if used is not original:
                    raise ValueError(f"{name}[{index}] must be contiguous: the plan reads it at every call")
        self._device = self._params[0].device if self._params else None

    @property
    def scale(self) -> float:
        """Factor of the gradients where keep is False (fixed: make a new plan to change it)."""
        return self._scale

    @property
    def l1(self) -> float:
        """Weight of the L1 sign term (fixed: make a new plan to change it)."""
        return self._l1

    @property
    def device(self) -> torch.device | None:
        """The device of the parameters when the plan was made (None for an empty plan)."""
        return self._device

    def __call__(self) -> None:
        """Truncate the current gradients in place (one launch)."""
        params = self._params
        if not params:
            return
        if params[0].device != self._device:
            raise RuntimeError(f"TruncationPlan: the parameters moved from {self._device} to "
                               f"{params[0].device} after the plan was made; make a new plan")
        grads = [param.grad for param in params]
        if any(grad is None for grad in grads):
            present = [index for index, grad in enumerate(grads) if grad is not None]
            if present:
                truncate_grads_([grads[i] for i in present], [self._keep[i] for i in present], scale=self.scale,
                                params=[self._l1_params[i] for i in present] if self.l1 != 0.0 else None,
                                l1=self.l1)
            return
        for index, grad in enumerate(grads):
            if not grad.is_contiguous():
                check_contiguous(f"params[{index}].grad", grad)
        _truncate_op(grads, self._keep, self._l1_params, self.scale, self.l1)
