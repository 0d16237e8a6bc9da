"""The fused ops of sparseticket, each a ``torch.library`` op in the ``sparseticket`` namespace.

CPU tensors run C++ kernels, CUDA tensors Triton kernels, and the plain-PyTorch reference is the
fallback and the oracle. ``cpu_backend("triton")`` routes CPU tensors through Triton's
interpreter (tests), ``backends()`` says what is active.
"""

from sparseticket.ops._backend import (
    CPU_BACKENDS,
    active_cpu_backend,
    backends,
    cpp_runs_cpu_ops,
    cpu_backend,
    kernels_for,
)
from sparseticket.ops.gemminer import gemminer_mask, gemminer_step_
from sparseticket.ops.kth import digit_histogram, kth_value
from sparseticket.ops.masks import mask_distances, pack_mask, unpack_mask
from sparseticket.ops.sharded import sharded_kth_value
from sparseticket.ops.truncate import TruncationPlan, truncate_grads_

__all__ = [
    "CPU_BACKENDS",
    "TruncationPlan",
    "backends",
    "active_cpu_backend",
    "cpp_runs_cpu_ops",
    "cpu_backend",
    "digit_histogram",
    "gemminer_mask",
    "gemminer_step_",
    "kernels_for",
    "kth_value",
    "mask_distances",
    "pack_mask",
    "sharded_kth_value",
    "truncate_grads_",
    "unpack_mask",
]
