"""A drop-in optimizer whose ``step()`` is one fused, masked pass (``sparseticket.ops.masked_sgd_`` /
``masked_adam_``): pruned weights and their optimizer state stay exactly 0, with no extra pass.

``masked_optimizer(optimizer, masks)`` takes the user's own ``torch.optim.SGD``, ``Adam`` or
``AdamW`` and turns that very object into ``MaskedSGD``/``MaskedAdam``/``MaskedAdamW`` (subclasses of
its class) and returns it: param groups, hyper-parameters, state, hooks, a scheduler or a
``GradScaler`` already made for it all stay as they are, and ``state_dict()`` keeps torch's format.
Only ``step`` differs. ``IMP.optimizer`` and ``Ticket.optimizer`` call it; the masks are theirs
(edited in place by IMP).

The step reads each mask packed, one bit per weight (``sparseticket.ops.pack_optimizer_mask``): 1/8
byte per weight instead of a bool's 1, on a step that moves 20 (SGD with momentum) to 28 (AdamW)
bytes per weight. The packed masks are cached and made again when a mask changes: an in-place edit
(``mask &= keep``, ``mask.copy_(...)``, what ``prune_round``/``rewind``/``load_state_dict`` do) shows in
its version counter, read at every step (an edit that bypasses it, through ``mask.data`` or NumPy,
is not seen: call ``masked_optimizer`` again then).

On the kept entries the step is torch's (see docs/ops.md, "Masked optimizer steps", for what is
bit for bit equal to what on each backend). Pruned entries: weights, momentum buffers and Adam's
moments are stored as 0 whatever the gradient holds, so no ``after_backward``/``after_step`` pass is
needed (gradients of pruned weights are left in ``.grad``; they are never read by the step).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import Optimizer, _get_scalar_dtype

from sparseticket.ops import masked_adam_, masked_sgd_, pack_optimizer_mask

SUPPORTED_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def safe_with_masked_state(optimizer: Optimizer) -> bool:
    """Whether masked gradients alone keep pruned weights at 0 once the optimizer's state is masked
    (``mask_optimizer_state``): SGD (momentum, Nesterov, weight decay), Adam and AdamW, fused or not."""
    return isinstance(optimizer, SUPPORTED_OPTIMIZERS) and not _group_option(optimizer, "differentiable")


def _group_option(optimizer: Optimizer, name: str) -> bool:
    return any(bool(group.get(name, False)) for group in optimizer.param_groups)


@torch.no_grad()
def mask_optimizer_state(optimizer: Optimizer, masks: dict[torch.Tensor, torch.Tensor]) -> None:
    """Zero, in every state tensor shaped like its parameter (momentum, moments, ...), the entries
    whose mask is False: what ``prune_round``/``rewind`` do so that no stale momentum moves a pruned
    weight. ``masks`` maps parameters to bool masks of their shape."""
    for param, mask in masks.items():
        state = optimizer.state.get(param)
        if not state:
            continue
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape and value.is_floating_point():
                value.masked_fill_(~mask.to(value.device), 0)


def _float_of(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _check_supported(optimizer: object) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if type(optimizer) not in SUPPORTED_OPTIMIZERS and not isinstance(optimizer, MaskedStep):
        names = ", ".join(f"torch.optim.{cls.__name__}" for cls in SUPPORTED_OPTIMIZERS)
        raise TypeError(f"optimizer: the fused masked step exists for {names} (exactly those classes), got "
                        f"{type(optimizer).__name__}; keep your optimizer and the method's hooks "
                        "(after_backward/after_step) instead")
    for name in ("differentiable", "capturable"):
        if _group_option(optimizer, name):
            raise ValueError(f"optimizer: {name}=True is not supported by the fused masked step")


class MaskedStep:
    """The ``step`` of a masked optimizer (mixed in before the torch optimizer class); the masks
    are the instance's ``_masks`` (``id(parameter)`` -> (parameter, bool mask)), packed into
    ``_packed_masks``. Each group is one launch: a parameter without a mask steps with an all-ones
    mask (1/8 byte per weight), so masked and dense parameters go together.

    The per-step Python work is what torch's own step does per parameter (one state lookup): the
    caches are keyed by ``id`` (the entries hold the parameter, so the id stays its own), because
    ``Tensor.__hash__`` is a Python function and the step would otherwise call it a few times per
    parameter."""

    _masks: dict[int, tuple[torch.Tensor, torch.Tensor]]
    # id(parameter) -> (parameter, its bool mask or None, the mask's version, the parameter's shape and strides,
    # the packed mask)
    _packed_masks: dict[int, tuple[torch.Tensor, torch.Tensor | None, int | None, torch.Size, tuple, torch.Tensor]]

    def _packed(self, param: torch.Tensor) -> torch.Tensor:
        """``param``'s mask packed in its memory order (all ones without a mask): the cached one unless
        the mask was edited (its version changed) or the parameter's layout changed (e.g.
        ``model.to(memory_format=...)``)."""
        key = id(param)
        entry = self._masks.get(key)
        mask = None if entry is None else entry[1]
        try:
            version = None if mask is None else mask._version
        except RuntimeError:  # an inference-mode tensor has no version counter: packed at every step
            version = -1
        cached = self._packed_masks.get(key)
        if (cached is not None and cached[1] is mask and cached[2] == version and version != -1
                and cached[3] == param.shape and cached[4] == param.stride()):
            return cached[5]
        whole = mask if mask is not None else torch.ones_like(param, dtype=torch.bool)
        packed = pack_optimizer_mask(whole, param)
        self._packed_masks[key] = (param, mask, version, param.shape, param.stride(), packed)
        return packed

    def _masked_step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                params = [param for param in group["params"] if param.grad is not None]
                for param in params:
                    if param.grad.is_sparse or param.is_complex():
                        raise RuntimeError("the fused masked step takes dense real parameters and gradients")
                if not params:
                    continue
                if isinstance(self, torch.optim.SGD):
                    self._sgd_group(group, params)
                else:
                    self._adam_group(group, params)
        return loss

    step = Optimizer.profile_hook_step(_masked_step)

    def _sgd_group(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        momentum = group["momentum"]
        scalars = {"lr": _float_of(group["lr"]), "weight_decay": group["weight_decay"], "momentum": momentum,
                   "dampening": group["dampening"], "nesterov": group["nesterov"], "maximize": group["maximize"]}
        masks = [self._packed(param) for param in params]
        if momentum == 0:
            masked_sgd_(params, [param.grad for param in params], [], masks, **scalars)
            return
        states = [self.state[param] for param in params]
        buffers = [state.get("momentum_buffer") for state in states]
        for first_step in (False, True):
            indices = [index for index, buffer in enumerate(buffers) if (buffer is None) == first_step]
            if not indices:
                continue
            if first_step:
                for index in indices:  # torch's first step: the buffer is the gradient (its memory format)
                    buffers[index] = states[index]["momentum_buffer"] = torch.empty_like(params[index])
            subset = [params[index] for index in indices] if len(indices) < len(params) else params
            masked_sgd_(subset, [param.grad for param in subset],
                        [buffers[index] for index in indices], [masks[index] for index in indices],
                        first_step=first_step, **scalars)

    def _adam_group(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        amsgrad = group["amsgrad"]
        states = [self.state[param] for param in params]
        for param, state in zip(params, states):
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                if amsgrad:
                    state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        steps = [state["step"] for state in states]
        torch._foreach_add_(steps, 1)
        counts = torch.stack(steps).tolist()  # one op and one read for the whole group, not one per parameter
        beta1, beta2 = (_float_of(beta) for beta in group["betas"])
        decoupled = isinstance(self, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay", False))
        scalars = {"lr": _float_of(group["lr"]), "beta1": beta1, "beta2": beta2, "eps": group["eps"],
                   "weight_decay": group["weight_decay"], "decoupled": decoupled, "maximize": group["maximize"]}
        masks = [self._packed(param) for param in params]
        for count in sorted(set(counts)):  # parameters skipped at some step have their own count
            indices = [index for index, value in enumerate(counts) if value == count]
            chosen = [states[index] for index in indices]
            subset = [params[index] for index in indices]
            masked_adam_(subset, [param.grad for param in subset], [state["exp_avg"] for state in chosen],
                         [state["exp_avg_sq"] for state in chosen],
                         [state["max_exp_avg_sq"] for state in chosen] if amsgrad else [],
                         [masks[index] for index in indices], step=count, **scalars)


class MaskedSGD(MaskedStep, torch.optim.SGD):
    """``torch.optim.SGD`` whose step is ``masked_sgd_`` (made by ``masked_optimizer``)."""


class MaskedAdam(MaskedStep, torch.optim.Adam):
    """``torch.optim.Adam`` whose step is ``masked_adam_`` (made by ``masked_optimizer``)."""


class MaskedAdamW(MaskedStep, torch.optim.AdamW):
    """``torch.optim.AdamW`` whose step is ``masked_adam_`` (made by ``masked_optimizer``)."""


_MASKED = {torch.optim.SGD: MaskedSGD, torch.optim.Adam: MaskedAdam, torch.optim.AdamW: MaskedAdamW}


def _retarget_scheduler_hook(optimizer: Optimizer) -> None:
    """An LR scheduler made before the swap wrapped the instance's ``step`` around the old class's
    function (to notice ``optimizer.step()`` calls): wrap the masked step the same way instead."""
    hooked = optimizer.__dict__.get("step")
    if hooked is None:
        return
    if not getattr(hooked, "_wrapped_by_lr_sched", False):
        raise ValueError("optimizer: its step() was replaced on the instance by something other than an LR "
                         "scheduler; the fused masked step cannot take its place")
    masked_step = type(optimizer).step
    owner = weakref.ref(optimizer)

    @functools.wraps(masked_step)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        target = owner()
        target._opt_called = True
        return masked_step(target, *args, **kwargs)

    wrapper._wrapped_by_lr_sched = True
    optimizer.__dict__["step"] = wrapper


def masked_optimizer(optimizer: Optimizer, masks: dict[torch.Tensor, torch.Tensor]) -> Optimizer:
    """``optimizer``, now stepping with the fused masked step (see the module docstring); returned.

    ``masks`` maps parameters of the optimizer to bool masks of their shape, read at every step
    (edit them in place to prune further: the step packs them again when their version changes).
    Parameters without a mask get the dense step. Called again on a masked optimizer, it replaces
    the masks.
    """
    _check_supported(optimizer)
    base = next(cls for cls in type(optimizer).__mro__ if cls in SUPPORTED_OPTIMIZERS)
    owned = {param for group in optimizer.param_groups for param in group["params"]}
    for param, mask in masks.items():
        if param not in owned:
            raise ValueError("masks: a masked parameter is not in the optimizer's param groups")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != param.shape:
            raise ValueError(f"masks: each mask must be a bool tensor of its parameter's shape {tuple(param.shape)}")
        if mask.device != param.device:
            raise ValueError(f"masks: a mask is on {mask.device}, its parameter on {param.device}")
    optimizer.__class__ = _MASKED[base]
    optimizer._masks = {id(param): (param, mask) for param, mask in masks.items()}
    optimizer._packed_masks = {}
    _retarget_scheduler_hook(optimizer)
    return optimizer
