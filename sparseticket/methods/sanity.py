"""Sanity checks that separate real tickets from good layer ratios (Frankle et al. 2021; Rare Gems).

Shuffle the mask within each layer (keeps only the layer densities), re-initialize the weights
(keeps only the mask), invert the scores (keep the lowest-scoring weights). Randomness: with no
``seed``, torch's global RNG (``torch.manual_seed``); with one, its own generator.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from sparseticket.methods.baselines import (
    check_density,
    checked_seed,
    kept_count,
    random_mask,
    seeded_generator,
    top_k_masks,
)
from sparseticket.methods.ticket import Ticket


def shuffled_ticket(ticket: Ticket, seed: int | None = None) -> Ticket:
    """The ticket with each layer's mask randomly permuted within the layer (same per-layer counts)."""
    seed = checked_seed(seed)
    generator = seeded_generator(seed)
    masks = {name: random_mask(mask.shape, int(mask.sum()), generator) for name, mask in ticket.masks.items()}
    return Ticket(masks, "shuffled", {"source": ticket.method, "source_hyperparameters": ticket.hyperparameters,
                                      "seed": seed})


def reinitialized(model: nn.Module, seed: int | None = None) -> nn.Module:
    """A deep copy of ``model`` with every module that has ``reset_parameters`` freshly initialised.

    No ``seed``: drawn from torch's global RNG. A seed: drawn as after ``torch.manual_seed(seed)``,
    and the global RNG state (CPU and CUDA) is left as it was.
    """
    seed = checked_seed(seed)
    network = copy.deepcopy(model)
    if seed is None:
        _reset_parameters(network)
        return network
    devices = sorted({tensor.device.index or 0 for tensor in network.parameters() if tensor.is_cuda})
    with torch.random.fork_rng(devices=devices):
        # Seed only the generators fork_rng restores: torch.manual_seed would also (lazily) seed
        # every other CUDA device, and that would outlive the fork.
        torch.random.default_generator.manual_seed(seed)
        for device in devices:
            torch.cuda.default_generators[device].manual_seed(seed)
        _reset_parameters(network)
    return network


def _reset_parameters(network: nn.Module) -> None:
    """Call ``reset_parameters()`` of every module that has one."""
    for module in network.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


def inverted_ticket(scores: Mapping[str, torch.Tensor], density: float) -> Ticket:
    """Keep exactly ``round(density * total)`` of the LOWEST-scoring weights instead of the highest."""
    density = check_density(density)
    total = sum(score.numel() for score in scores.values())
    masks = top_k_masks({name: -score.detach().float() for name, score in scores.items()},
                        kept_count(density, total))
    return Ticket(masks, "inverted", {"density": density})


def _check_scores(scores: Mapping[str, torch.Tensor], ticket: Ticket) -> None:
    """``scores`` must hold one tensor per masked parameter, of the mask's shape."""
    if set(scores) != set(ticket.masks):
        raise ValueError(f"scores must have one entry per ticket mask ({', '.join(ticket.masks)}), "
                         f"got {', '.join(scores)}")
    for name, mask in ticket.masks.items():
        if scores[name].shape != mask.shape:
            raise ValueError(f"scores[{name!r}] must have shape {tuple(mask.shape)}, "
                             f"got {tuple(scores[name].shape)}")


def sanity_checks(ticket: Ticket, model: nn.Module, *, scores: Mapping[str, torch.Tensor] | None = None,
                  seed: int | None = None) -> dict[str, tuple[Ticket, nn.Module]]:
    """Variants to retrain side by side, each a (ticket, fresh copy of the model) pair.

    "original", "shuffled" (mask permuted per layer), "reinitialized" (same mask, new weights) and,
    when ``scores`` are given, "inverted" (the lowest-scoring weights at the ticket's density).
    The masks are not applied to the models. ``seed`` seeds the shuffle and the re-initialization
    (None: torch's global RNG).
    """
    variants = {
        "original": (ticket, copy.deepcopy(model)),
        "shuffled": (shuffled_ticket(ticket, seed), copy.deepcopy(model)),
        "reinitialized": (ticket, reinitialized(model, seed)),
    }
    if scores is not None:
        _check_scores(scores, ticket)
        ordered = {name: scores[name] for name in ticket.masks}
        variants["inverted"] = (inverted_ticket(ordered, ticket.density()), copy.deepcopy(model))
    return variants
