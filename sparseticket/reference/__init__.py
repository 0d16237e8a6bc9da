"""Plain-PyTorch reference kernels: the oracle every fused kernel is tested against, and the
fallback when neither the C++ extension nor Triton can run.

Every function here takes inputs that the op layer (``sparseticket.ops``) has already validated:
contiguous tensors, lists of one dtype and one device. They follow the kernel contract shared
with ``csrc/`` and ``triton_kernels/`` (see each function's docstring).
"""

from sparseticket.reference.columns import scale_columns
from sparseticket.reference.gemminer import (
    gemminer_mask,
    gemminer_mask_backward,
    gemminer_step_,
    gemminer_step_from_masked_grads_,
)
from sparseticket.reference.kth import digit_histogram, kth_value
from sparseticket.reference.masks import mask_distances, pack_mask, unpack_mask
from sparseticket.reference.optim import masked_adam_, masked_sgd_
from sparseticket.reference.truncate import truncate_grads_

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
    "truncate_grads_",
    "unpack_mask",
]
