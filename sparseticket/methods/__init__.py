"""Lottery-ticket methods that plug into any training loop (they never own the loop)."""

from sparseticket.methods.earlybird import EarlyBird
from sparseticket.methods.structured import PruneReport, prune_channels
from sparseticket.methods.worm import WORM

__all__ = ["WORM", "EarlyBird", "PruneReport", "prune_channels"]
