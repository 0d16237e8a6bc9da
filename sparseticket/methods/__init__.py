"""Lottery-ticket methods that plug into any training loop (they never own the loop)."""

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
from sparseticket.methods.masked_optimizer import masked_optimizer
from sparseticket.methods.protocol import METHOD_HOOKS, Method
from sparseticket.methods.registry import BASELINES, METHODS, channel_methods, weight_methods
from sparseticket.methods.sanity import inverted_ticket, reinitialized, sanity_checks, shuffled_ticket
from sparseticket.methods.stability import STABLE_BARRIER, Barrier, error_barrier, instability
from sparseticket.methods.structured import PruneReport, prune_channels, prune_model
from sparseticket.methods.ticket import Ticket
from sparseticket.methods.transformer import attach_slimming, prune_transformer
from sparseticket.methods.worm import WORM

__all__ = [
    "masked_optimizer",
    "BASELINES",
    "IMP",
    "METHODS",
    "METHOD_HOOKS",
    "Method",
    "STABLE_BARRIER",
    "Barrier",
    "error_barrier",
    "instability",
    "WORM",
    "EarlyBird",
    "GemMiner",
    "PruneReport",
    "Ticket",
    "attach_slimming",
    "channel_methods",
    "grasp_ticket",
    "inverted_ticket",
    "magnitude_ticket",
    "random_ticket",
    "reinitialized",
    "sanity_checks",
    "shuffled_ticket",
    "smart_ratio_ticket",
    "snip_ticket",
    "synflow_ticket",
    "prune_channels",
    "prune_model",
    "prune_transformer",
    "weight_methods",
]
