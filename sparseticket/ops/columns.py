"""``scale_columns``: the columns of a Linear weight times per-group coefficients (EarlyBERT
slimming's coefficient per attention head or FFN neuron), differentiable in both.

Backends: float32 CPU tensors with the C++ kernels active run one C++ autograd op
(csrc/scale_columns.cpp: the result in reused memory, one backward pass). CUDA tensors (Triton
installed, its interpreter off) and CPU tensors under the ``triton`` CPU backend run the Triton
kernels (triton_kernels/columns.py) through an autograd.Function, for float32/float16/bfloat16
weights and coefficients (fp32 math; the coefficients' gradient is a deterministic two-pass sum, no
atomics). Every other case (float64, fp16/bf16 on the C++ CPU backend, the reference CPU backend,
CUDA without Triton, ``torch.compile`` tracing) runs the plain-PyTorch reference.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from sparseticket import reference
from sparseticket._kernels.cpp import cpp_kernels
from sparseticket._kernels.triton import triton_kernels
from sparseticket.ops import _contracts as contracts
from sparseticket.ops._backend import cpp_runs_cpu_ops, kernels_for
from sparseticket.ops._validate import FLOAT_DTYPES
from sparseticket.ops.slots import OutputSlot


def _runs_in_cpp(weight: torch.Tensor, coefficients: torch.Tensor) -> bool:
    """Whether the C++ op serves these (checked) arguments: eager, float32, CPU, C++ kernels active."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and coefficients.dtype == torch.float32
            and not torch.compiler.is_compiling() and cpp_runs_cpu_ops())


def _triton_for(weight: torch.Tensor, coefficients: torch.Tensor) -> ModuleType | None:
    """The Triton kernels when they serve these (checked) arguments: eager, float32/float16/bfloat16,
    and the device's backend is Triton (CUDA, or CPU under the triton backend); else None."""
    if weight.dtype not in FLOAT_DTYPES or coefficients.dtype not in FLOAT_DTYPES or torch.compiler.is_compiling():
        return None
    kernels = kernels_for(weight.device)
    return kernels if kernels is not None and kernels is triton_kernels() else None


class _ScaleColumns(torch.autograd.Function):
    """``weight * coefficients.repeat_interleave(width)`` on the Triton kernels, with its backward
    (one pass writing the weight's gradient and per-column partial sums, one small reduction)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, coefficients: torch.Tensor, width: int,
                kernels: ModuleType) -> torch.Tensor:
        ctx.save_for_backward(weight, coefficients)
        ctx.width, ctx.kernels = width, kernels  # backward runs on the kernels that ran forward
        if weight.device.type == "cuda":
            with torch.cuda.device(weight.device):
                return kernels.scale_columns(weight, coefficients, width)
        return kernels.scale_columns(weight, coefficients, width)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        weight, coefficients = ctx.saved_tensors
        need_weight, need_coefficients = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        arguments = (grad, weight, coefficients, ctx.width, need_weight, need_coefficients)
        if weight.device.type == "cuda":
            with torch.cuda.device(weight.device):
                grad_weight, grad_coefficients = ctx.kernels.scale_columns_backward(*arguments)
        else:
            grad_weight, grad_coefficients = ctx.kernels.scale_columns_backward(*arguments)
        return (grad_weight if need_weight else None, grad_coefficients if need_coefficients else None, None, None)


def scale_columns(
    weight: torch.Tensor,
    coefficients: torch.Tensor,
    width: int,
    *,
    slot: OutputSlot | None = None,
) -> torch.Tensor:
    """``weight * coefficients.repeat_interleave(width)``: column j of the 2-D ``weight`` times
    ``coefficients[j // width]``, differentiable in ``weight`` and ``coefficients``.

    ``slot`` (one per layer, kept by the caller) lets the C++ path write the result into the same
    memory every step while nothing else references the previous one.
    """
    weight, coefficients, width = contracts.scale_columns(weight, coefficients, width)
    if slot is not None and not isinstance(slot, OutputSlot):
        raise TypeError(f"slot must be an OutputSlot or None, got {type(slot).__name__}")
    if _runs_in_cpp(weight, coefficients):
        memory = slot.like(weight, torch.float32) if slot is not None else weight.new_empty(0)
        return cpp_kernels().scale_columns(weight, coefficients, width, memory)
    kernels = _triton_for(weight, coefficients)
    if kernels is not None:
        return _ScaleColumns.apply(weight, coefficients, width, kernels)
    return reference.scale_columns(weight, coefficients, width)
