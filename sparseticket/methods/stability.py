"""Instability analysis (Frankle et al., ICML 2020): the error barrier on the line between two nets.

``error_barrier(a, b, test_loader)`` evaluates the error of ``(1 - alpha) * a + alpha * b`` at
evenly spaced alphas; ``instability`` trains two copies of one state with different data orders
and measures the barrier between them. A network is stable when the barrier is below 2%.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from sparseticket.methods.ticket import Ticket

STABLE_BARRIER = 0.02


@dataclass(frozen=True)
class Barrier:
    """Errors along the linear path between two models and the barrier height."""

    barrier: float
    errors: list[float]
    alphas: list[float]

    @property
    def is_stable(self) -> bool:
        """True when the barrier is below ``STABLE_BARRIER`` (2% error)."""
        return self.barrier < STABLE_BARRIER


def _check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    """ValueError unless both models have the same module types and state-dict entries."""
    for name, model in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    if [type(module) for module in model_a.modules()] != [type(module) for module in model_b.modules()]:
        raise ValueError("model_a and model_b must have the same architecture (their module types differ)")
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    if list(state_a) != list(state_b):
        raise ValueError("model_a and model_b must have the same architecture (their state-dict keys differ)")
    for key, value in state_a.items():
        if value.shape != state_b[key].shape or value.dtype != state_b[key].dtype:
            raise ValueError(f"model_a and model_b must have the same architecture: {key} is "
                             f"{tuple(value.shape)} {value.dtype} vs {tuple(state_b[key].shape)} "
                             f"{state_b[key].dtype}")


def _interpolate(state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor], alpha: float
                 ) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * a + alpha * b`` for floating entries; integer entries are taken from ``a``."""
    return {key: torch.lerp(value, state_b[key], alpha) if value.is_floating_point() else value
            for key, value in state_a.items()}


@torch.no_grad()
def _error(model: nn.Module, loader: Iterable) -> float:
    """1 - accuracy of ``model`` (eval mode) over the ``(inputs, labels)`` batches of ``loader``."""
    model.eval()
    device = next(model.parameters()).device
    wrong, count = 0, 0
    # Iterating a DataLoader draws a seed from the global RNG even when it does not shuffle;
    # evaluation needs no randomness, so it must not move the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        for inputs, labels in loader:
            predictions = model(inputs.to(device)).argmax(dim=1)
            wrong += int((predictions != labels.to(device)).sum())
            count += len(labels)
    if count == 0:
        raise ValueError("loader yielded no examples")
    return wrong / count


def error_barrier(model_a: nn.Module, model_b: nn.Module, loader: Iterable, points: int = 30,
                  prepare: Callable[[nn.Module], object] | None = None) -> Barrier:
    """Max error on the line from ``model_a`` to ``model_b`` minus the mean of the endpoint errors.

    Every floating parameter and buffer is interpolated, BatchNorm running statistics included
    (integer buffers such as ``num_batches_tracked`` come from ``model_a``); the models are
    evaluated in eval mode at ``points`` evenly spaced alphas in [0, 1], endpoints included.
    ``prepare(network)``, when given, runs on each interpolated network (endpoints included) before
    it is evaluated: e.g. re-estimating its BatchNorm statistics on training data
    (``sparseticket.driver.training.recalibrate_batchnorm``) instead of interpolating them.
    Neither input model is modified.
    """
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an int >= 2 (alphas from 0 to 1 inclusive), got {points!r}")
    _check_same_architecture(model_a, model_b)
    state_a = {key: value.detach() for key, value in model_a.state_dict().items()}
    state_b = {key: value.detach() for key, value in model_b.state_dict().items()}
    probe = copy.deepcopy(model_a)
    alphas = torch.linspace(0.0, 1.0, points, dtype=torch.float64).tolist()
    errors = []
    for alpha in alphas:
        probe.load_state_dict(_interpolate(state_a, state_b, alpha))
        if prepare is not None:
            prepare(probe)
        errors.append(_error(probe, loader))
    barrier = max(errors) - (errors[0] + errors[-1]) / 2
    return Barrier(barrier=barrier, errors=errors, alphas=alphas)


def _train_copy(
    model: nn.Module,
    seed: int,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    make_loader: Callable[[int], Iterable],
    train_epoch: Callable[[nn.Module, Iterable, torch.optim.Optimizer], object],
    epochs: int,
    ticket: Ticket | None,
) -> nn.Module:
    """A deep copy of ``model`` trained for ``epochs`` with the data order (and RNG) of ``seed``."""
    trained = copy.deepcopy(model)
    if ticket is not None:
        ticket.to_torch_prune(trained)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        optimizer = make_optimizer(trained)
        loader = make_loader(seed)
        for _ in range(epochs):
            train_epoch(trained, loader, optimizer)
    if ticket is not None:
        _make_pruning_permanent(trained, ticket)
    return trained


def _make_pruning_permanent(model: nn.Module, ticket: Ticket) -> None:
    """Replace the ``torch.nn.utils.prune`` masks of ``ticket`` by plain, masked weights."""
    for name in ticket.masks:
        module_name, _, parameter_name = name.rpartition(".")
        prune.remove(model.get_submodule(module_name), parameter_name)


def _two_seeds() -> tuple[int, int]:
    """Two different seeds below 2**31 (any seeding API takes them) from torch's global CPU RNG."""
    first, second = torch.randint(0, 2**31 - 1, (2,)).tolist()
    return first, second if second != first else second + 1  # the copies must differ


def instability(
    model: nn.Module,
    *,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    make_loader: Callable[[int], Iterable],
    train_epoch: Callable[[nn.Module, Iterable, torch.optim.Optimizer], object],
    epochs: int,
    test_loader: Iterable,
    seeds: Sequence[int] | None = None,
    points: int = 30,
    ticket: Ticket | None = None,
) -> Barrier:
    """Train two copies of ``model`` with different data orders; the error barrier between them.

    For each seed: a deep copy of ``model``, ``optimizer = make_optimizer(copy)``,
    ``loader = make_loader(seed)`` (its order over all epochs must be fixed by the seed), then
    ``train_epoch(copy, loader, optimizer)`` ``epochs`` times. Training runs under
    ``torch.random.fork_rng`` seeded with the seed, so other randomness (dropout) is seeded per
    copy too. With ``seeds=None`` the two seeds are drawn from torch's global RNG (so
    ``torch.manual_seed`` fixes them); pass two ints to fix them yourself. ``model`` itself is
    not modified. For a sparse network pass its ``ticket``: each
    copy trains with the masks registered as ``torch.nn.utils.prune`` masks (pruned weights stay
    zero whatever the optimizer), made permanent before the barrier is measured.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    seeds = _two_seeds() if seeds is None else seeds
    if len(seeds) != 2:
        raise ValueError(f"seeds must hold two seeds (one per copy), got {seeds!r}")
    copies = [_train_copy(model, seed, make_optimizer, make_loader, train_epoch, epochs, ticket)
              for seed in seeds]
    return error_barrier(copies[0], copies[1], test_loader, points)
