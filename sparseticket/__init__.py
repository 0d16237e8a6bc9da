"""sparseticket: find lottery tickets fast (EarlyBird, WORM, Gem-Miner, IMP) with fused kernels.

The fused ops load with the package; the methods (``sparseticket.EarlyBird``, ``WORM``,
``GemMiner``, ``IMP``, the ``Method`` protocol, the ``METHODS`` and ``BASELINES`` registries,
``Ticket``, ``error_barrier``, the baselines ...) load on first use, so ``import sparseticket``
stays as light as the ops.
"""

from __future__ import annotations

import importlib
from typing import Any

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

# name -> the module that defines it (loaded on first access, see __getattr__)
_LAZY = {
    **{name: "sparseticket.methods" for name in (
        "Method", "METHODS", "BASELINES",
        "EarlyBird", "WORM", "GemMiner", "IMP", "Ticket", "error_barrier", "instability", "Barrier",
        "STABLE_BARRIER", "attach_slimming", "prune_model", "prune_transformer", "PruneReport",
        "random_ticket", "magnitude_ticket", "snip_ticket", "grasp_ticket", "synflow_ticket",
        "smart_ratio_ticket", "sanity_checks",
    )},
    **{name: "sparseticket.driver" for name in (
        "find_ticket", "TicketSearch", "TicketResult", "Schedule", "TrainingData", "MemoryStore",
    )},
    "methods": "sparseticket.methods",
    "driver": "sparseticket.driver",
    "builtin": "sparseticket.builtin",
    "integrations": "sparseticket.integrations",
}

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
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Load the methods (and integrations) on first access: ``sparseticket.EarlyBird`` works."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'sparseticket' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name.endswith(name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
