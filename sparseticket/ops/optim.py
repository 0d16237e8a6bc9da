"""Masked optimizer steps: ``masked_sgd_`` and ``masked_adam_`` (Adam and AdamW).

One multi-tensor pass does the optimizer's step and keeps the pruned weights (and their
optimizer state) at exactly 0: the two extra passes a pruning method pays otherwise (zero the
pruned gradients, zero the pruned weights again after the step) are not needed. On the kept
entries the result is ``torch.optim``'s (see ``docs/ops.md`` for the bit-for-bit guarantees per
backend). ``sparseticket.methods.masked_optimizer`` wraps them as a drop-in optimizer.

A mask is one bool per entry, or packed: one bit per entry (``pack_optimizer_mask``), 1/8 byte per
weight instead of 1 on a step that moves 20 (SGD with momentum) to 28 (Adam) bytes per weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparseticket._kernels.cpp import cpp_kernels
from sparseticket.ops._backend import cpp_runs_cpu_ops
from sparseticket.ops._library import define_op, register_fake
from sparseticket.ops._validate import FLOAT_DTYPES, check_tensor, in_order_of, memory_order
from sparseticket.ops.masks import pack_mask

_sgd_op = define_op(
    "masked_sgd_",
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, Tensor[] masks, float lr, "
    "float weight_decay, float momentum, float dampening, bool nesterov, bool maximize, bool first_step) -> ()",
)
_adam_op = define_op(
    "masked_adam_",
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
    "Tensor(d!)[] max_exp_avg_sqs, Tensor[] masks, float lr, float beta1, float beta2, float eps, "
    "float weight_decay, float step, bool decoupled, bool maximize) -> ()",
)


@register_fake("masked_sgd_")
def _sgd_fake(*args) -> None:
    return None


@register_fake("masked_adam_")
def _adam_fake(*args) -> None:
    return None


def pack_optimizer_mask(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``mask`` (bool, ``param``'s shape) packed for ``masked_sgd_``/``masked_adam_``: uint8
    ``[ceil(numel / 8)]``, bit j of byte i = entry 8i+j of ``param`` counted in its memory order
    (row-major, or channels_last's NHWC order for a channels_last parameter)."""
    check_tensor("param", param, FLOAT_DTYPES)
    check_tensor("mask", mask, (torch.bool,), param.device)
    if mask.shape != param.shape:
        raise ValueError(f"mask must have the shape of param {tuple(param.shape)}, got {tuple(mask.shape)}")
    if memory_order(param) is None:
        raise ValueError("param must be contiguous or channels_last (as masked_sgd_/masked_adam_ take it)")
    ordered = in_order_of(mask, param)  # param's strides: its memory holds the entries in param's order
    return pack_mask(ordered.as_strided((ordered.numel(),), (1,)))


def _straight_to_cpp(params: list) -> bool:
    """Whether an eager call on plain CPU tensors goes straight to the C++ op, which checks the
    contract itself: the dispatch through ``torch.ops.sparseticket`` (a Python kernel that picks
    the backend) costs about as much as the C++ op's own per-call work at small sizes, on a step
    every training iteration pays. Tensor subclasses (fake, DTensor) and tracing take the op."""
    return (bool(params) and type(params[0]) in (torch.Tensor, torch.nn.Parameter)
            and params[0].device.type == "cpu" and not torch.compiler.is_compiling() and cpp_runs_cpu_ops())


def masked_sgd_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    momentum_buffers: Sequence[torch.Tensor] = (),
    masks: Sequence[torch.Tensor] = (),
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    maximize: bool = False,
    first_step: bool = False,
) -> None:
    """One ``torch.optim.SGD`` step over every parameter of the list (one launch), in place, with
    the pruned entries (``masks[i]`` False) of each weight and momentum buffer set to 0.

    ``momentum_buffers``: one per parameter (its shape, dtype and layout) when ``momentum != 0``,
    else empty; ``first_step=True`` sets them to the gradient (torch's first step, when the
    optimizer has no buffer yet) instead of blending. ``masks``: empty (a dense step), or one mask
    per parameter, all bool or all packed: bool of the parameter's shape, or packed bits (uint8
    ``[ceil(numel / 8)]``, bit j of byte i = entry 8i+j in the parameter's memory order: see
    ``pack_optimizer_mask``), which the kernels read at 1/8 byte per weight instead of 1. The
    hyper-parameters are ``torch.optim.SGD``'s.
    """
    params = list(params)
    op = cpp_kernels().masked_sgd_ if _straight_to_cpp(params) else _sgd_op
    op(params, list(grads), list(momentum_buffers), list(masks), lr, weight_decay, momentum, dampening, nesterov,
       maximize, first_step)


def masked_adam_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    max_exp_avg_sqs: Sequence[torch.Tensor] = (),
    masks: Sequence[torch.Tensor] = (),
    *,
    lr: float,
    step: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled: bool = True,
    maximize: bool = False,
) -> None:
    """One Adam step (``decoupled=False``: ``torch.optim.Adam``; True: ``AdamW``) over every
    parameter of the list (one launch), in place, with the pruned entries of each weight and
    moment set to 0.

    ``step``: every parameter's step count after this step (1 on the first; the caller advances
    its own counters). ``max_exp_avg_sqs``: AMSGrad's running maxima, one per parameter, or empty
    (no AMSGrad). ``masks`` as in ``masked_sgd_``. The hyper-parameters are torch's.
    """
    params = list(params)
    op = cpp_kernels().masked_adam_ if _straight_to_cpp(params) else _adam_op
    op(params, list(grads), list(exp_avgs), list(exp_avg_sqs), list(max_exp_avg_sqs), list(masks), lr, beta1, beta2,
       eps, weight_decay, step, decoupled, maximize)
