"""sparseticket: find lottery tickets fast (EarlyBird, WORM, Gem-Miner, IMP) with fused kernels."""

from sparseticket import ops
from sparseticket.ops import (
    backends,
    gemminer_mask,
    gemminer_step_,
    kth_value,
    mask_distances,
    pack_mask,
    truncate_grads_,
    unpack_mask,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "backends",
    "gemminer_mask",
    "gemminer_step_",
    "kth_value",
    "mask_distances",
    "ops",
    "pack_mask",
    "truncate_grads_",
    "unpack_mask",
]
