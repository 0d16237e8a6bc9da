"""Lottery-ticket methods that plug into any training loop (they never own the loop)."""

from sparseticket.methods.earlybird import EarlyBird
from sparseticket.methods.worm import WORM

__all__ = ["WORM", "EarlyBird"]
