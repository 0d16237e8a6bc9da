"""Triton kernels of sparseticket (installed as ``sparseticket.triton_kernels``).

Each module holds the ``@triton.jit`` kernels of one op and a launcher with the kernel contract
of ``sparseticket.reference``. Launchers take CUDA tensors, or CPU tensors when Triton's
interpreter is on (``TRITON_INTERPRET=1`` set before triton is imported). ``AOT_SPECS`` in each
module lists how to compile its kernels ahead of time for a GPU target.
"""

from sparseticket.triton_kernels.columns import scale_columns, scale_columns_backward
from sparseticket.triton_kernels.gemminer import (
    gemminer_mask,
    gemminer_mask_backward,
    gemminer_step_,
    gemminer_step_from_masked_grads_,
)
from sparseticket.triton_kernels.kth import digit_histogram, kth_value
from sparseticket.triton_kernels.masks import mask_distances, pack_mask, unpack_mask
from sparseticket.triton_kernels.optim import masked_adam_, masked_sgd_
from sparseticket.triton_kernels.truncate import truncate_grads_

__all__ = [
    "digit_histogram",
    "gemminer_mask",
    "gemminer_mask_backward",
    "gemminer_step_",
    "gemminer_step_from_masked_grads_",
    "kth_value",
    "mask_distances",
    "masked_adam_",
    "masked_sgd_",
    "pack_mask",
    "scale_columns",
    "scale_columns_backward",
    "truncate_grads_",
    "unpack_mask",
]
