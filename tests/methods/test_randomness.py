"""Randomness you can control (DESIGN.md §6): no seed follows ``torch.manual_seed``; a seed gives the
same draw whatever the global RNG, and leaves the global RNG as it was."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from sparseticket.methods import (
    BASELINES,
    METHODS,
    GemMiner,
    grasp_ticket,
    magnitude_ticket,
    random_ticket,
    reinitialized,
    sanity_checks,
    shuffled_ticket,
    smart_ratio_ticket,
    snip_ticket,
    synflow_ticket,
)
from sparseticket.methods.stability import instability

Result = object
Draw = Callable[[int | None], Result]


def tiny_model() -> nn.Module:
    """A small CNN with fixed weights, built without moving the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed inputs and labels for the scored baselines (their own generator)."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator)


def masks(ticket) -> dict[str, torch.Tensor]:
    """The masks of a ticket, for comparison."""
    return dict(ticket.masks)


def gemminer_scores(seed: int | None) -> Result:
    return GemMiner(tiny_model(), density=0.5, epochs=6, seed=seed).scores.detach().clone()


def sanity_variants(seed: int | None) -> Result:
    variants = sanity_checks(magnitude_ticket(tiny_model(), 0.3), tiny_model(), seed=seed)
    return [masks(variants["shuffled"][0]), variants["reinitialized"][1].state_dict()]


def instability_copies(seed: int | None) -> Result:
    """The seeds each copy saw and its trained weights (2 epochs of a linear model, 4 points)."""
    generator = torch.Generator().manual_seed(2)
    images, labels = torch.rand(32, 8, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    seen, trained = [], []

    def make_loader(loader_seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        seen.append(loader_seed)
        order = torch.randperm(32, generator=torch.Generator().manual_seed(loader_seed))
        return [(images[order[i:i + 8]], labels[order[i:i + 8]]) for i in range(0, 32, 8)]

    def train_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer) -> None:
        for inputs, targets in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
        trained.append({key: value.clone() for key, value in model.state_dict().items()})

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Linear(8, 3)
    test_loader = DataLoader(TensorDataset(images, labels), batch_size=16)  # iterating it draws a seed
    barrier = instability(model, make_optimizer=lambda net: torch.optim.SGD(net.parameters(), lr=0.5),
                          make_loader=make_loader, train_epoch=train_epoch, epochs=2, test_loader=test_loader,
                          points=4, seeds=None if seed is None else (seed, seed + 1))
    return [seen, trained, barrier.errors]


RANDOM: dict[str, Draw] = {
    "gemminer": gemminer_scores,
    "random": lambda seed: masks(random_ticket(tiny_model(), 0.3, seed=seed)),
    "random_ticket_per_layer": lambda seed: masks(random_ticket(
        tiny_model(), 0.3, layer_densities={"0.weight": 0.5, "4.weight": 0.29375}, seed=seed)),
    "smart_ratio": lambda seed: masks(smart_ratio_ticket(tiny_model(), 0.3, seed=seed)),
    "shuffled_ticket": lambda seed: masks(shuffled_ticket(magnitude_ticket(tiny_model(), 0.3), seed=seed)),
    "reinitialized": lambda seed: reinitialized(tiny_model(), seed=seed).state_dict(),
    "sanity_checks": sanity_variants,
    "instability": instability_copies,
}

DETERMINISTIC: dict[str, Callable[[], Result]] = {
    "magnitude": lambda: masks(magnitude_ticket(tiny_model(), 0.3)),
    "snip": lambda: masks(snip_ticket(tiny_model(), F.cross_entropy, batch(), 0.3)),
    "grasp": lambda: masks(grasp_ticket(tiny_model(), F.cross_entropy, batch(), 0.3)),
    "synflow": lambda: masks(synflow_ticket(tiny_model(), (1, 1, 8, 8), 0.3, iterations=5)),
}


def test_every_registered_method_and_baseline_is_checked():
    """Each entry of METHODS and BASELINES that takes a ``seed`` has a draw in RANDOM (keyed by its
    registry name), and each baseline without one is in DETERMINISTIC: a newly registered one fails
    here until it is covered."""
    for name, target in {**METHODS, **BASELINES}.items():
        if "seed" in inspect.signature(target).parameters:
            assert name in RANDOM, f"{name} takes a seed: add its draw to RANDOM"
        elif name in BASELINES:
            assert name in DETERMINISTIC, f"baseline {name} takes no seed: add it to DETERMINISTIC"


def same(first: Result, second: Result) -> bool:
    """Exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(first, torch.Tensor):
        return isinstance(second, torch.Tensor) and first.dtype == second.dtype and torch.equal(first, second)
    if isinstance(first, dict):
        return isinstance(second, dict) and list(first) == list(second) and all(
            same(first[key], second[key]) for key in first)
    if isinstance(first, (list, tuple)):
        return isinstance(second, (list, tuple)) and len(first) == len(second) and all(
            same(a, b) for a, b in zip(first, second))
    return first == second


@pytest.mark.parametrize("name", RANDOM)
def test_no_seed_follows_the_global_rng(name):
    draw = RANDOM[name]
    torch.manual_seed(11)
    first = draw(None)
    torch.manual_seed(11)
    assert same(draw(None), first), f"{name}: same torch.manual_seed, different results"
    torch.manual_seed(12)
    assert not same(draw(None), first), f"{name}: ignores torch.manual_seed"


@pytest.mark.parametrize("name", RANDOM)
def test_explicit_seed_ignores_and_keeps_the_global_rng(name):
    draw = RANDOM[name]
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = draw(5)
    assert torch.equal(torch.get_rng_state(), state), f"{name}: seed=5 moved the global RNG"
    torch.manual_seed(2)
    assert same(draw(5), first), f"{name}: seed=5 depends on the global RNG"


@pytest.mark.parametrize("name", RANDOM)
def test_different_explicit_seeds_differ(name):
    draw = RANDOM[name]
    assert not same(draw(5), draw(6)), f"{name}: seeds 5 and 6 give the same result"


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_scored_baselines_draw_nothing(name):
    torch.manual_seed(1)
    state = torch.get_rng_state()
    first = DETERMINISTIC[name]()
    assert torch.equal(torch.get_rng_state(), state), f"{name} moved the global RNG"
    torch.manual_seed(2)
    assert same(DETERMINISTIC[name](), first)


def test_explicit_seeds_keep_their_old_draws():
    # These draws are what checkpoints and recorded results were made with: they must not change.
    model = tiny_model()
    total = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1)
    expected = torch.rand(total, generator=torch.Generator().manual_seed(3))
    assert torch.equal(GemMiner(tiny_model(), density=0.5, epochs=6, seed=3).scores.detach(), expected)
    generator = torch.Generator().manual_seed(3)
    ticket = random_ticket(model, 0.5, seed=3)
    for name, mask in ticket.masks.items():
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[torch.randperm(mask.numel(), generator=generator)[:round(0.5 * mask.numel())]] = True
        assert torch.equal(mask, flat.view(mask.shape)), name
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        fresh = tiny_model().apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    assert same(reinitialized(tiny_model(), seed=4).state_dict(), fresh.state_dict())


def test_gemminer_default_scores_are_not_fixed():
    # The bug: a fresh torch.Generator() has a constant default seed, so seed=None gave the same
    # scores whatever torch.manual_seed said.
    torch.manual_seed(0)
    first = gemminer_scores(None)
    assert not same(gemminer_scores(None), first)  # the stream moved on


@pytest.mark.parametrize("seed", [1.5, "3", True])
def test_bad_seed_names_the_argument(seed):
    with pytest.raises(TypeError, match="seed must be an int or None"):
        random_ticket(tiny_model(), 0.3, seed=seed)
    with pytest.raises(TypeError, match="seed must be an int or None"):
        reinitialized(tiny_model(), seed=seed)


def test_numpy_integer_seed_is_a_plain_int():
    import numpy as np

    ticket = random_ticket(tiny_model(), 0.3, seed=np.int64(5))
    assert same(masks(ticket), masks(random_ticket(tiny_model(), 0.3, seed=5)))
    assert type(ticket.hyperparameters["seed"]) is int  # the ticket's JSON metadata takes it
