"""``scale_columns``: the columns of a Linear weight times per-group coefficients (EarlyBERT
slimming's coefficient per attention head or FFN neuron), differentiable in both.

Backends: float32 CPU tensors with the C++ kernels active run one C++ autograd op
(csrc/scale_columns.cpp: the result in reused memory, one backward pass). Every other case (CUDA
tensors, fp16/bf16, the Triton or reference CPU backends, ``torch.compile`` tracing) runs the
plain-PyTorch reference: there is no Triton kernel for this op.
"""

from __future__ import annotations

import torch

from sparseticket import reference
from sparseticket._kernels.cpp import cpp_kernels
from sparseticket.ops import _contracts as contracts
from sparseticket.ops._backend import cpp_runs_cpu_ops
from sparseticket.ops.slots import OutputSlot


def _runs_in_cpp(weight: torch.Tensor, coefficients: torch.Tensor) -> bool:
    """Whether the C++ op serves these (checked) arguments: eager, float32, CPU, C++ kernels active."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and coefficients.dtype == torch.float32
            and not torch.compiler.is_compiling() and cpp_runs_cpu_ops())


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
    return reference.scale_columns(weight, coefficients, width)
