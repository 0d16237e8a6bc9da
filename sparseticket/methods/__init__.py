"""Lottery-ticket methods that plug into any training loop (they never own the loop)."""

from sparseticket.methods.earlybird import EarlyBird
from sparseticket.methods.gemminer import GemMiner
from sparseticket.methods.ticket import Ticket
from sparseticket.methods.structured import PruneReport, prune_channels, prune_model
from sparseticket.methods.transformer import attach_slimming, prune_transformer
from sparseticket.methods.worm import WORM

__all__ = [
    "WORM",
    "EarlyBird",
    "GemMiner",
    "PruneReport",
    "Ticket",
    "attach_slimming",
    "prune_channels",
    "prune_model",
    "prune_transformer",
]
