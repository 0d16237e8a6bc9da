"""The units of work of ``sparseticket reproduce``: the harder digits task, its training loop, and one
method family on one seed per unit (EarlyBird+WORM, Gem-Miner, random, IMP at each rewind step)."""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from sparseticket.experiments.claims.settings import QUEUE, SECOND_ORDER, Settings


# ============================================================================ data and training
@functools.lru_cache(maxsize=4)
def digits_split(split_seed: int, train_limit: int | None) -> Any:
    """The digits split with training-time distortions and a distorted test set (cached per process)."""
    from sparseticket.experiments.data import load_digits_split

    split = load_digits_split(seed=split_seed)
    if train_limit is not None:
        split = replace(split, train_images=split.train_images[:train_limit],
                        train_labels=split.train_labels[:train_limit])
    return split.augmented()


def steps_per_epoch(settings: Settings) -> int:
    """Training iterations per epoch (the last batch may be smaller)."""
    count = len(digits_split(settings.split_seed, settings.train_limit).train_labels)
    return math.ceil(count / settings.batch_size)


def epoch_batches(settings: Settings, data_seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of epoch ``epoch`` (0-based): order and distortions are functions of (data_seed, epoch)."""
    split = digits_split(settings.split_seed, settings.train_limit)
    seed = data_seed * 100_003 + epoch
    images = split.training_images(seed)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return [(images[index], split.train_labels[index]) for index in order.split(settings.batch_size)]


def build_model(settings: Settings, seed: int) -> nn.Module:
    """ResNet-20 for 8x8 digits; the seed fixes the initialization (the same for every method)."""
    from sparseticket.experiments.models import resnet20

    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)
        return resnet20(classes=10, in_channels=1, width=settings.width)


def make_optimizer(model: nn.Module, settings: Settings, total_steps: int
                   ) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD with momentum and weight decay, and the per-iteration LR schedule over ``total_steps``."""
    from sparseticket.experiments.schedules import lr_scheduler

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                                momentum=settings.momentum, weight_decay=settings.weight_decay)
    warmup = settings.warmup_epochs * steps_per_epoch(settings)
    return optimizer, lr_scheduler(optimizer, settings.lr_schedule, total_steps, warmup)


def train_steps(model: nn.Module, settings: Settings, data_seed: int, start: int, stop: int, *,
                optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, hooks: Sequence[Any] = (),
                after_step: Callable[[int], None] | None = None,
                epoch_end: Callable[[int], bool] | None = None) -> int:
    """Train global iterations ``start .. stop-1``; the batch of iteration s is the same in every call.

    ``hooks``: methods whose ``after_backward``/``after_step`` run around the optimizer step (no
    optimizer: Gem-Miner's ``after_backward`` is its own step). ``after_step(s)`` runs after
    iteration s-1 finished; ``epoch_end(e)`` after each full epoch e (1-based) and stops training
    when it returns True. Returns the iteration training stopped at.
    """
    per_epoch = steps_per_epoch(settings)
    batches: dict[int, list] = {}
    model.train()
    for step in range(start, stop):
        epoch, index = divmod(step, per_epoch)
        if epoch not in batches:
            batches = {epoch: epoch_batches(settings, data_seed, epoch)}
        images, labels = batches[epoch][index]
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        for hook in hooks:
            hook.after_backward()
        if optimizer is not None:
            optimizer.step()
            scheduler.step()
        for hook in hooks:
            hook.after_step()
        if after_step is not None:
            after_step(step + 1)
        if (step + 1) % per_epoch == 0 and epoch_end is not None:
            if epoch_end(epoch + 1):
                return step + 1
            model.train()
    return stop


def _evaluate(model: nn.Module, settings: Settings) -> dict[str, float]:
    """Clean and distorted test accuracy."""
    from sparseticket.experiments.training import evaluate

    metrics = evaluate(model, digits_split(settings.split_seed, settings.train_limit))
    return {"clean": metrics["test_accuracy"], "distorted": metrics["test_accuracy_distorted"]}


class _GradientMask:
    """Method-shaped hook of a fixed ticket: zero the pruned weights' gradients before each step."""

    def __init__(self, ticket: Any, model: nn.Module) -> None:
        self.after_backward = ticket.gradient_mask(model)

    def after_step(self) -> None:
        """Nothing: with zero weights and zero gradients, SGD keeps pruned weights at exactly 0."""


# ============================================================================ units of work
def run_found(settings: Settings, seed: int) -> dict[str, Any]:
    """Claims 1-2: EarlyBird and WORM from the same init and data order until each draws its ticket."""
    from sparseticket.experiments.training import accuracy_at_pruning
    from sparseticket.methods import WORM, EarlyBird

    split = digits_split(settings.split_seed, settings.train_limit)
    total = settings.epochs * steps_per_epoch(settings)
    result: dict[str, Any] = {}
    for name, method in (("earlybird", EarlyBird), ("worm", WORM)):
        started = time.perf_counter()
        model = build_model(settings, seed)
        optimizer, scheduler = make_optimizer(model, settings, total)
        tracker = method(model, queue=QUEUE)
        stopped = train_steps(model, settings, seed, 0, total, optimizer=optimizer, scheduler=scheduler,
                              hooks=[tracker], epoch_end=lambda _: tracker.epoch_end())
        search_seconds = time.perf_counter() - started
        history = tracker.history
        result[name] = {
            "found_epoch": tracker.found_epoch,
            "epochs_trained": stopped // steps_per_epoch(settings),
            "trigger_epoch": getattr(tracker, "trigger_epoch", None),
            "max_distance": [max(d) if d else None for d in history],
            "mean_distance": [sum(d) / len(d) if d else None for d in history],
            "dense": _evaluate(model, settings),
            "at_pruning": accuracy_at_pruning(model, tracker.channel_mask(), split),
            "search_seconds": search_seconds,
        }
    return result


def run_gemminer(settings: Settings, seed: int) -> dict[str, Any]:
    """Claim 3: Gem-Miner mines a mask at ``density`` for ``round_epochs``, then fine-tunes as long."""
    from sparseticket.methods import GemMiner

    per_epoch = steps_per_epoch(settings)
    started = time.perf_counter()
    model = build_model(settings, seed)
    miner = GemMiner(model, density=settings.density, epochs=settings.round_epochs, lr=settings.score_lr, seed=seed)
    train_steps(model, settings, seed, 0, settings.round_epochs * per_epoch, hooks=[miner],
                epoch_end=lambda _: miner.epoch_end() and False)
    search_seconds = time.perf_counter() - started
    ticket = miner.finish()
    return {"search_epochs": settings.round_epochs, "search_seconds": search_seconds,
            **_fine_tune(model, ticket, settings, seed)}


def run_random(settings: Settings, seed: int) -> dict[str, Any]:
    """Claim 3's floor: a random mask at ``density`` (uniform per layer), fine-tuned from the init."""
    from sparseticket.methods import random_ticket

    model = build_model(settings, seed)
    ticket = random_ticket(model, settings.density, seed=seed)
    ticket.apply_(model)
    return {"search_epochs": 0, "search_seconds": 0.0, **_fine_tune(model, ticket, settings, seed)}


def _fine_tune(model: nn.Module, ticket: Any, settings: Settings, seed: int) -> dict[str, Any]:
    """Train the masked model from its initialization for ``round_epochs`` with the task's recipe."""
    started = time.perf_counter()
    total = settings.round_epochs * steps_per_epoch(settings)
    optimizer, scheduler = make_optimizer(model, settings, total)
    train_steps(model, settings, seed, 0, total, optimizer=optimizer, scheduler=scheduler,
                hooks=[_GradientMask(ticket, model)])
    return {"density": ticket.density(), "accuracy": _evaluate(model, settings),
            "finetune_epochs": settings.round_epochs, "finetune_seconds": time.perf_counter() - started}


def prunes_to(density: float, rate: float) -> int:
    """IMP rounds until the density is at most ``density`` (the last round is floored at it)."""
    if density >= 1:
        return 0
    return math.ceil(math.log(density) / math.log(1 - rate) - 1e-9)


def barrier_round(density: float, settings: Settings) -> int:
    """The IMP round whose density is closest (in log) to ``density``; the final round at or below the target."""
    final = prunes_to(settings.density, settings.imp_rate)
    if density <= settings.density:
        return final
    return min(round(math.log(density) / math.log(1 - settings.imp_rate)), final)


def run_imp(settings: Settings, seed: int, rewind: str) -> dict[str, Any]:
    """Claims 3-4: IMP rewound to ``rewind`` down to ``density``; at the barrier densities, a second
    copy trained from the same rewind point with another data order and the error barrier between them.

    Round r >= 2 trains iterations k..T-1 with round 1's batches and LRs there (open_lth's rewinding).
    """
    from sparseticket.experiments.schedules import parse_rewind_step
    from sparseticket.methods import IMP, error_barrier

    split = digits_split(settings.split_seed, settings.train_limit)
    total = settings.round_epochs * steps_per_epoch(settings)
    k = parse_rewind_step(rewind, steps_per_epoch(settings), total)
    model = build_model(settings, seed)
    optimizer, scheduler = make_optimizer(model, settings, total)
    imp = IMP(model, rate=settings.imp_rate, rewind_step=rewind)
    saved: dict[str, Any] = {}

    def capture(step: int) -> None:
        if step == k:
            imp.capture(optimizer, scheduler)
            saved.update(model=copy.deepcopy(model.state_dict()), optimizer=copy.deepcopy(optimizer.state_dict()),
                         scheduler=copy.deepcopy(scheduler.state_dict()))

    final = prunes_to(settings.density, settings.imp_rate)
    barrier_rounds = {barrier_round(d, settings): d for d in settings.barrier_densities}
    capture(0)
    rounds = []
    for prunes in range(final + 1):
        started = time.perf_counter()
        if prunes:
            imp.prune_round(min_density=settings.density)
            imp.rewind()
        train_steps(model, settings, seed, k if prunes else 0, total, optimizer=optimizer, scheduler=scheduler,
                    hooks=[imp], after_step=None if prunes else capture)
        entry = {"prunes": prunes, "density": imp.density, "accuracy": _evaluate(model, settings),
                 "epochs": (total - (k if prunes else 0)) / steps_per_epoch(settings),
                 "seconds": time.perf_counter() - started}
        if prunes in barrier_rounds:
            second = _second_copy(settings, seed, saved, imp, k, total)
            barrier = error_barrier(model, second, split.test_loader(), points=settings.barrier_points)
            entry["barrier"] = {"target_density": barrier_rounds[prunes], "barrier": barrier.barrier,
                                "errors": barrier.errors}
        rounds.append(entry)
    search = rounds[:-1]
    return {"rewind": rewind, "rewind_iterations": k, "rounds": rounds,
            "density": rounds[-1]["density"], "accuracy": rounds[-1]["accuracy"],
            "search_epochs": sum(r["epochs"] for r in search), "search_seconds": sum(r["seconds"] for r in search),
            "finetune_epochs": rounds[-1]["epochs"]}


def _second_copy(settings: Settings, seed: int, saved: dict[str, Any], imp: Any, k: int, total: int) -> nn.Module:
    """A copy rewound to the step-k state with IMP's current masks, trained k..T-1 on another data order."""
    from sparseticket.methods import IMP

    model = build_model(settings, seed)
    model.load_state_dict(saved["model"])
    optimizer, scheduler = make_optimizer(model, settings, total)
    optimizer.load_state_dict(copy.deepcopy(saved["optimizer"]))
    scheduler.load_state_dict(copy.deepcopy(saved["scheduler"]))
    masked = IMP(model, rate=settings.imp_rate)
    for mask, source in zip(masked.masks, imp.masks):
        mask.copy_(source)
    masked.apply_masks()
    train_steps(model, settings, seed + SECOND_ORDER, k, total, optimizer=optimizer, scheduler=scheduler,
                hooks=[masked])
    return model


