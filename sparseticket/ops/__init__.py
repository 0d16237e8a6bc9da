"""The fused ops of sparseticket, each a ``torch.library`` op in the ``sparseticket`` namespace.

CPU tensors run C++ kernels, CUDA tensors Triton kernels, and the plain-PyTorch reference is the
fallback and the oracle. ``cpu_backend("triton")`` routes CPU tensors through Triton's
interpreter (tests), ``backends()`` says what is active.

Two ops are eager fast paths over those: ``gemminer_masked_weight`` (``gemminer_mask`` whose
scores gradient lands in a caller's slot; a C++ autograd op on CPU, an autograd.Function over the
Triton/reference kernels elsewhere) and ``scale_columns`` (a C++ autograd op for float32 CPU
tensors, Triton forward and backward kernels for CUDA tensors and the Triton CPU backend, the
reference otherwise). Under ``torch.compile`` they trace as ``gemminer_mask`` and the reference
expression.
"""

from sparseticket.ops._backend import (
    CPU_BACKENDS,
    active_cpu_backend,
    backends,
    cpp_runs_cpu_ops,
    cpu_backend,
    kernels_for,
)
from sparseticket.ops._validate import memory_order
from sparseticket.ops.columns import scale_columns
from sparseticket.ops.gemminer import (
    MaskedWeightSlots,
    gemminer_mask,
    gemminer_masked_weight,
    gemminer_step_,
    gemminer_step_from_masked_grads_,
)
from sparseticket.ops.kth import digit_histogram, kth_value
from sparseticket.ops.masks import mask_distances, pack_mask, unpack_mask
from sparseticket.ops.optim import masked_adam_, masked_sgd_, pack_optimizer_mask
from sparseticket.ops.sharded import sharded_kth_value
from sparseticket.ops.slots import OutputSlot
from sparseticket.ops.truncate import TruncationPlan, truncate_grads_

__all__ = [
    "CPU_BACKENDS",
    "MaskedWeightSlots",
    "OutputSlot",
    "TruncationPlan",
    "backends",
    "active_cpu_backend",
    "cpp_runs_cpu_ops",
    "cpu_backend",
    "digit_histogram",
    "gemminer_mask",
    "gemminer_masked_weight",
    "gemminer_step_",
    "gemminer_step_from_masked_grads_",
    "kernels_for",
    "kth_value",
    "mask_distances",
    "masked_adam_",
    "masked_sgd_",
    "memory_order",
    "pack_mask",
    "pack_optimizer_mask",
    "scale_columns",
    "sharded_kth_value",
    "truncate_grads_",
    "unpack_mask",
]
