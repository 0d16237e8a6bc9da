"""The units of work of ``sparseticket reproduce``: one method family on one seed per unit (EarlyBird+WORM,
Gem-Miner, random, IMP at each rewind step) on the settings' task (``tasks``: data, model, recipe), each run
through the search driver (``sparseticket.driver``) with the task's data order and recipe."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from sparseticket.studies.claims.settings import QUEUE, SECOND_ORDER, Settings
from sparseticket.studies.claims.tasks import TASKS, task_of


# ============================================================================ data and training
@functools.lru_cache(maxsize=4)
def _split(task: str, split_seed: int, train_limit: int | None) -> Any:
    """Task ``task``'s split (first ``train_limit`` training examples), distorted where the task is (cached)."""
    split = TASKS[task].load(split_seed)
    if train_limit is not None:
        split = replace(split, train_images=split.train_images[:train_limit],
                        train_labels=split.train_labels[:train_limit])
    return split.augmented() if TASKS[task].augment else split


def task_split(settings: Settings) -> Any:
    """The settings' task's split (cached per process)."""
    return _split(task_of(settings).name, settings.split_seed, settings.train_limit)


def digits_split(split_seed: int, train_limit: int | None) -> Any:
    """The digits split with training-time distortions and a distorted test set (cached per process)."""
    return _split("digits", split_seed, train_limit)


def steps_per_epoch(settings: Settings) -> int:
    """Training iterations per epoch (the last batch may be smaller)."""
    count = len(task_split(settings).train_labels)
    return math.ceil(count / settings.batch_size)


def epoch_batches(settings: Settings, data_seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of epoch ``epoch`` (0-based): order and distortions are functions of (data_seed, epoch)."""
    split = task_split(settings)
    seed = data_seed * 100_003 + epoch
    images = split.training_images(seed)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return [(images[index], split.train_labels[index]) for index in order.split(settings.batch_size)]


def build_model(settings: Settings, seed: int) -> nn.Module:
    """The task's built-in model (digits: ResNet-20; MNIST-1D: cnn1d) of the settings' width; the seed fixes
    the initialization (the same for every method)."""
    from sparseticket.builtin.models import build_model as build_builtin

    task = task_of(settings)
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)
        return build_builtin(task.model, classes=10, width=settings.width, input_shape=task.input_shape)


def schedule(settings: Settings, epochs: int, finetune_epochs: int) -> Any:
    """The task's recipe: SGD with momentum and weight decay under the per-iteration LR schedule, for
    the search and the fine-tuning alike; IMP's ticket is trained as its last level."""
    from sparseticket.driver.recipe import Schedule

    return Schedule(epochs=epochs, batch_size=settings.batch_size, lr=settings.lr, momentum=settings.momentum,
                    weight_decay=settings.weight_decay, lr_schedule=settings.lr_schedule,
                    warmup_epochs=settings.warmup_epochs, round_epochs=settings.round_epochs,
                    finetune_epochs=finetune_epochs, finetune_lr=settings.lr,
                    finetune_lr_schedule=settings.lr_schedule, finetune_warmup_epochs=settings.warmup_epochs,
                    imp_last_round=True)


def training_data(settings: Settings, data_seed: int) -> Any:
    """The task's batches for the driver: epoch e of any phase is ``epoch_batches(settings, data_seed, e)``."""
    from sparseticket.driver.data import TrainingData

    return TrainingData(task_split(settings),
                        lambda _phase, epoch: epoch_batches(settings, data_seed, epoch), steps_per_epoch(settings))


def _search(method: str, settings: Settings, run_seed: int, epochs: int, finetune_epochs: int,
            job_options: dict[str, Any] | None = None, **options: Any) -> Any:
    """One driver run of ``method`` from the seed's initialization on the seed's data order."""
    from sparseticket.driver.search import TicketSearch

    search = TicketSearch(method, build_model(settings, run_seed), training_data(settings, run_seed),
                          schedule(settings, epochs, finetune_epochs), options=options, evaluate_every_epoch=False,
                          job_options=job_options)
    return search.run()


def _accuracies(metrics: dict[str, float]) -> dict[str, float]:
    """``evaluate``'s metrics as a record's accuracy: clean, and distorted where the task has a distorted test set."""
    accuracy = {"clean": metrics["test_accuracy"]}
    if "test_accuracy_distorted" in metrics:
        accuracy["distorted"] = metrics["test_accuracy_distorted"]
    return accuracy


def _evaluate(model: nn.Module, settings: Settings) -> dict[str, float]:
    """Clean test accuracy, and distorted where the task has a distorted test set."""
    from sparseticket.driver.training import evaluate

    return _accuracies(evaluate(model, task_split(settings)))


# ============================================================================ units of work
def run_found(settings: Settings, seed: int) -> dict[str, Any]:
    """Claims 1-2: EarlyBird and WORM from the same init and data order until each draws its ticket."""
    result: dict[str, Any] = {}
    for name in ("earlybird", "worm"):
        found = _search(name, settings, seed, settings.epochs, 0, queue=QUEUE, convention=settings.convention)
        history = found.extra["history"]
        result[name] = {
            "found_epoch": found.extra["found_epoch"],
            "epochs_trained": found.search_epochs,
            "trigger_epoch": found.extra["trigger_epoch"],
            "max_distance": [max(d) if d else None for d in history],
            "mean_distance": [sum(d) / len(d) if d else None for d in history],
            "dense": _evaluate(found.model, settings),
            "at_pruning": found.extra["at_pruning"],
            "search_seconds": found.search_seconds,
        }
    return result


def _weight_ticket(found: Any, settings: Settings, search_epochs: int) -> dict[str, Any]:
    """A fine-tuned weight ticket's record."""
    return {"search_epochs": search_epochs, "search_seconds": found.search_seconds,
            "density": found.ticket.density(), "accuracy": _evaluate(found.model, settings),
            "finetune_epochs": found.finetune_epochs, "finetune_seconds": found.seconds - found.search_seconds}


def run_gemminer(settings: Settings, seed: int) -> dict[str, Any]:
    """Claim 3: Gem-Miner mines a mask at ``density`` for ``round_epochs``, then fine-tunes as long
    from the initialization with the task's recipe. ``before_finetune``: the mined network itself (weights
    at their initialization, live mask p > 0.5 and q = 1, BN statistics from mining), as Rare Gems reports it."""
    found = _search("gemminer", settings, seed, settings.round_epochs, settings.round_epochs,
                    density=settings.density, lr=settings.score_lr, seed=seed, convention=settings.convention)
    record = _weight_ticket(found, settings, settings.round_epochs)
    record["before_finetune"] = {"accuracy": _evaluate(found.job.model, settings),
                                 "density": found.job.method.mask_density}
    return record


def run_random(settings: Settings, seed: int) -> dict[str, Any]:
    """Claim 3's floor: a random mask at ``density`` (uniform per layer), fine-tuned from the init."""
    found = _search("random", settings, seed, settings.round_epochs, settings.round_epochs,
                    density=settings.density, seed=seed)
    return _weight_ticket(found, settings, 0)


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

    Round r >= 2 trains iterations k..T-1 with round 1's batches and LRs there (open_lth's rewinding);
    the ticket is trained as the last round.
    """
    from sparseticket.driver.training import recalibrate_batchnorm
    from sparseticket.methods import error_barrier

    split = task_split(settings)
    prepare = None
    if settings.barrier_bn == "recomputed":  # each interpolated network's BN statistics, re-estimated
        def prepare(network: nn.Module) -> None:
            recalibrate_batchnorm(network, split.train_images)
    per_epoch = steps_per_epoch(settings)
    total = settings.round_epochs * per_epoch
    barrier_rounds = {barrier_round(d, settings): d for d in settings.barrier_densities}
    rounds: list[dict[str, Any]] = []
    clock = [time.perf_counter()]

    def entry(job: Any, model: nn.Module, accuracy: dict[str, float]) -> dict[str, Any]:
        prunes = len(rounds)
        now = time.perf_counter()
        record = {"prunes": prunes, "density": job.method.density,
                  "accuracy": _accuracies(accuracy),
                  "epochs": (total - (job.rewind_at if prunes else 0)) / per_epoch, "seconds": now - clock[0]}
        if prunes in barrier_rounds:
            second = job.rewound_copy(lambda epoch: epoch_batches(settings, seed + SECOND_ORDER, epoch))
            barrier = error_barrier(model, second, split.test_loader(), points=settings.barrier_points,
                                    prepare=prepare)
            record["barrier"] = {"target_density": barrier_rounds[prunes], "barrier": barrier.barrier,
                                 "errors": barrier.errors}
        rounds.append(record)
        clock[0] = time.perf_counter()
        return {}

    found = _search("imp", settings, seed, settings.round_epochs, settings.round_epochs,
                    job_options={"round_end": lambda job, _round, accuracy: entry(job, job.model, accuracy)},
                    rate=settings.imp_rate, rewind_step=rewind, density=settings.density,
                    exclude=settings.imp_exclude, convention=settings.convention)
    from sparseticket.driver.training import evaluate

    entry(found.job, found.model, evaluate(found.model, split))
    search = rounds[:-1]
    return {"rewind": rewind, "rewind_iterations": found.job.rewind_at, "rounds": rounds,
            "density": rounds[-1]["density"], "accuracy": rounds[-1]["accuracy"],
            "search_epochs": sum(r["epochs"] for r in search), "search_seconds": sum(r["seconds"] for r in search),
            "finetune_epochs": rounds[-1]["epochs"]}
