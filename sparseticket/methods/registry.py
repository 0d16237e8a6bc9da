"""The registries: every lottery-ticket method and every pruning-at-initialization baseline, by name.

A new method is one file (a class satisfying ``sparseticket.Method``), one line in ``METHODS`` and
its test; the CLI choices, the trainer callbacks and the test parametrisations read them from here.
"""

from __future__ import annotations

from collections.abc import Callable

from sparseticket.methods.baselines import (
    grasp_ticket,
    magnitude_ticket,
    random_ticket,
    smart_ratio_ticket,
    snip_ticket,
    synflow_ticket,
)
from sparseticket.methods.earlybird import EarlyBird
from sparseticket.methods.gemminer import GemMiner
from sparseticket.methods.imp import IMP
from sparseticket.methods.protocol import KINDS, Method
from sparseticket.methods.ticket import Ticket
from sparseticket.methods.worm import WORM

__all__ = ["BASELINES", "METHODS", "channel_methods", "methods_of_kind", "weight_methods"]

# registry name -> method class (the class's ``name`` is its key)
METHODS: dict[str, type[Method]] = {
    "earlybird": EarlyBird,
    "worm": WORM,
    "gemminer": GemMiner,
    "imp": IMP,
}

# registry name -> pruning-at-initialization ticket function (each returns a Ticket of weight masks)
BASELINES: dict[str, Callable[..., Ticket]] = {
    "random": random_ticket,
    "smart_ratio": smart_ratio_ticket,
    "magnitude": magnitude_ticket,
    "snip": snip_ticket,
    "grasp": grasp_ticket,
    "synflow": synflow_ticket,
}


def methods_of_kind(kind: str) -> tuple[str, ...]:
    """Registry names of the methods of ``kind`` ("channel" or "weight"), in registry order."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return tuple(name for name, cls in METHODS.items() if cls.kind == kind)


def channel_methods() -> tuple[str, ...]:
    """Registry names of the channel-mask methods (physically prunable): ``("earlybird", "worm")``."""
    return methods_of_kind("channel")


def weight_methods() -> tuple[str, ...]:
    """Registry names of the weight-mask methods: ``("gemminer", "imp")``."""
    return methods_of_kind("weight")
