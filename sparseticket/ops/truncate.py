"""``truncate_grads_``: L1 subgradient and keep/scale truncation of many gradients in one launch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparseticket._kernels.cpp import cpp_extension
from sparseticket.ops import _contracts as contracts
from sparseticket.ops._backend import cpp_runs_cpu_ops
from sparseticket.ops._library import define_op, register_fake
from sparseticket.ops._validate import check_float

_truncate_op = define_op(
    "truncate_grads_",
    "(Tensor(a!)[] grads, Tensor[] keep, Tensor[] params, float scale, float l1) -> ()",
)


@register_fake("truncate_grads_")
def _truncate_fake(grads, keep, params, scale, l1) -> None:
    return None


def _tensor_list(name: str, values: object) -> list[torch.Tensor]:
    """A list or tuple of tensors (a Python-type mistake gets a TypeError, not the schema's error)."""
    if isinstance(values, torch.Tensor) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(values).__name__}")
    for index, value in enumerate(values):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}[{index}] must be a torch.Tensor, got {type(value).__name__}")
    return list(values)


def truncate_grads_(
    grads: Sequence[torch.Tensor],
    keep: Sequence[torch.Tensor],
    *,
    scale: float = 0.0,
    params: Sequence[torch.Tensor] | None = None,
    l1: float = 0.0,
) -> None:
    """In place, for each i: ``g_i <- g_i + l1*sign(params_i)`` where ``keep_i``, else that times ``scale``.

    Where ``keep_i`` is False and ``scale`` is 0 the gradient is exactly 0 (even if it was inf or
    NaN); elsewhere NaN and inf propagate as the arithmetic says.

    ``keep_i`` is bool, per channel (shape ``(g_i.shape[0],)``, broadcast over trailing dims) or
    per element (shape of ``g_i``). All gradients are updated in one kernel launch. With
    ``scale=0`` the gradients of dropped entries become zero (IMP); ``scale=chi`` is WORM's
    truncation; ``l1`` adds EarlyBird's L1 subgradient (needs ``params``). Math is in fp32.
    """
    scale = check_float("scale", scale)
    l1 = check_float("l1", l1)
    grads, keep = _tensor_list("grads", grads), _tensor_list("keep", keep)
    params = _tensor_list("params", params) if params is not None else []
    if grads or keep or params:  # the op checks the rest (as it does when called directly)
        _truncate_op(grads, keep, params if l1 != 0.0 else [], scale, l1)


class TruncationPlan:
    """``truncate_grads_`` on the gradients of a fixed list of parameters, checked once.

    ``TruncationPlan(params, keep, scale=..., l1=..., l1_params=...)`` checks the lists as
    ``truncate_grads_`` would; each call ``plan()`` then reads every parameter's ``.grad`` and
    launches once, checking only that each gradient is contiguous (PyTorch keeps a gradient's
    shape, dtype and device equal to its parameter's). That is what the methods run every step.
    ``l1_params`` (default: ``params``) give the sign of the L1 term. Parameters without a
    gradient are left out of that call. The keep masks may be edited in place between calls.
    ``of="data"`` truncates the parameters' own values instead of their gradients (IMP zeroing
    its pruned weights after each optimizer step), as ``torch.no_grad()`` in-place ops would.

    On CPU with the C++ kernels a call is one C++ method (``NativeTruncationPlan``) that reads
    the gradients and runs the kernel: a few microseconds for the 53 BN layers of ResNet-50.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        keep: Sequence[torch.Tensor],
        *,
        scale: float = 0.0,
        l1: float = 0.0,
        l1_params: Sequence[torch.Tensor] | None = None,
        of: str = "grad",
    ) -> None:
        if of not in ("grad", "data"):
            raise ValueError(f"of must be 'grad' or 'data', got {of!r}")
        self._of_grads = of == "grad"
        self._scale = check_float("scale", scale)
        self._l1 = check_float("l1", l1)
        if isinstance(params, torch.Tensor) or not isinstance(params, Sequence):
            raise TypeError(f"params must be a list or tuple of tensors, got {type(params).__name__}")
        if self._l1 != 0.0 and l1_params is None:
            l1_params = params
        names = ("params", "keep", "l1_params")
        self._params, self._keep, self._l1_params, _, _ = contracts.truncate_grads_(
            params, keep, l1_params if self._l1 != 0.0 else None, self._scale, self._l1, names)
        # the contract copies masks and sign tensors not laid out like their parameter: a plan would
        # then read stale copies
        for name, given, kept in (("keep", keep, self._keep), ("l1_params", l1_params or [], self._l1_params)):
            for index, (original, used) in enumerate(zip(given, kept)):
                if used is not original:
                    raise ValueError(f"{name}[{index}] must be contiguous and in the memory format of params[{index}] "
                                     "(channels_last parameters need channels_last masks, e.g. "
                                     "torch.ones_like(param, dtype=torch.bool)): the plan reads it at every call")
        self._device = self._params[0].device if self._params else None
        extension = cpp_extension()
        # On CPU with the C++ kernels, a call is one C++ method: it reads the .grad of every
        # parameter and runs the kernel (the Python call path costs ~10x the kernel on BN vectors).
        self._native = extension.NativeTruncationPlan(
            self._params, self._keep, self._l1_params if self._l1 != 0.0 else [], self._scale, self._l1,
            self._of_grads) \
            if extension is not None and self._device is not None and self._device.type == "cpu" else None

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
        if self._native is not None and cpp_runs_cpu_ops():
            self._native()  # checks the device and each gradient's contiguity itself
            return
        params = self._params
        if not params:
            return
        if params[0].device != self._device:
            raise RuntimeError(f"TruncationPlan: the parameters moved from {self._device} to "
                               f"{params[0].device} after the plan was made; make a new plan")
        if not self._of_grads:
            with torch.no_grad():
                _truncate_op([param.detach() for param in params], self._keep, self._l1_params, self.scale, self.l1)
            for param in params:  # a kernel writing through a pointer does not tell autograd
                torch.autograd.graph.increment_version(param)
            return
        grads = [param.grad for param in params]
        if any(grad is None for grad in grads):
            present = [index for index, grad in enumerate(grads) if grad is not None]
            if present:
                truncate_grads_([grads[i] for i in present], [self._keep[i] for i in present], scale=self.scale,
                                params=[self._l1_params[i] for i in present] if self.l1 != 0.0 else None,
                                l1=self.l1)
            return
        _truncate_op(grads, self._keep, self._l1_params, self.scale, self.l1)
