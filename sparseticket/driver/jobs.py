"""How the driver runs each kind of method: what a search epoch trains, when the search is done, the
ticket, and the network that is fine-tuned. Every job saves and restores its state.

- ``MethodJob``: any registered method: train with its hooks for ``Schedule.epochs`` epochs (or until
  it has drawn its ticket), then fine-tune the ticket from the initial weights with masked gradients
  (Gem-Miner; a new method needs nothing more).
- ``ChannelJob``: EarlyBird/WORM (``kind == "channel"``): the drawn channel mask is applied
  physically (``prune_model``) and the pruned network fine-tuned from the searched weights.
- ``IMPJob``: iterative magnitude pruning with rewinding (a method with ``prune_round``/``rewind``).
- ``BaselineJob``: pruning at initialization (``BASELINES``): no search epochs.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparseticket.driver.data import Batch, TrainingData
from sparseticket.driver.recipe import Schedule, finetune_optimizer, search_optimizer
from sparseticket.driver.schedules import parse_rewind_step
from sparseticket.driver.training import accuracy_at_pruning, evaluate, train_steps
from sparseticket.methods import BASELINES, METHODS, Method, Ticket, attach_slimming, prune_model
from sparseticket.methods.transformer import transformer_blocks

Hook = Callable[[], object]
SCORING_BATCH = 256  # global batch that SNIP and GraSP score on


@dataclass(frozen=True)
class EpochPlan:
    """What one search epoch trains on: the data epoch (0-based) of ``TrainingData.batches`` and
    how many of its first batches it skips (an IMP round that starts mid-epoch, at the rewind step)."""

    data_epoch: int
    skip: int = 0


@dataclass
class FineTuning:
    """The network to fine-tune and how: its optimizer and schedule, its hooks, and its epochs
    (each an ``EpochPlan`` over the ``phase``'s batches)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: Any
    after_backward: tuple[Hook, ...] = ()
    after_step: tuple[Hook, ...] = ()
    plans: tuple[EpochPlan, ...] = ()
    phase: str = "finetune"


def method_options(name: str, options: Mapping[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """The keyword arguments of ``options`` that method (or baseline) ``name`` takes.

    ``strict``: an option it does not take is a ValueError naming it (the command line passes every
    flag with ``strict=False``)."""
    target = _registered(name)
    accepted = {key for key, parameter in inspect.signature(target).parameters.items()
                if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)}
    accepted |= _DRIVER_OPTIONS.get(name, set())
    accepted -= _SUPPLIED_BY_DRIVER
    unknown = sorted(set(options) - accepted)
    if strict and unknown:
        raise ValueError(f"options {', '.join(map(repr, unknown))} are not options of method {name!r} "
                         f"(it takes: {', '.join(sorted(accepted - {'model'}))})")
    return {key: value for key, value in options.items() if key in accepted and key != "model"}


_DRIVER_OPTIONS = {"imp": {"density"}}  # read by the job, not the method: IMP's target density
_SUPPLIED_BY_DRIVER = {"model", "loss_fn", "batch", "example_input_shape"}  # from the model and the data


def _registered(name: str) -> Callable[..., Any]:
    if name in METHODS:
        return METHODS[name]
    if name in BASELINES:
        return BASELINES[name]
    raise ValueError(f"unknown method {name!r}; choose from {', '.join([*METHODS, *BASELINES])}")


class Job:
    """The search phase of one method. Subclasses fill in the hooks."""

    search_epochs: int = 0
    method: Method | None = None
    pristine: nn.Module | None = None  # the network at its initialization (set by the driver)

    def __init__(self, name: str, model: nn.Module, options: dict[str, Any], schedule: Schedule,
                 data: TrainingData) -> None:
        self.name, self.model, self.options, self.schedule, self.data = name, model, options, schedule, data
        self.steps_per_epoch = data.steps_per_epoch
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None

    def plan(self, epoch: int) -> EpochPlan:
        """The data of search epoch ``epoch`` (1-based): that epoch's batches, whole."""
        return EpochPlan(epoch - 1)

    def after_backward(self) -> None:
        """Between backward and the optimizer step."""
        if self.method is not None:
            self.method.after_backward()

    def after_step(self) -> None:
        """After the optimizer and LR-schedule steps."""
        if self.method is not None:
            self.method.after_step()

    def epoch_end(self, epoch: int) -> tuple[bool, dict]:
        """After search epoch ``epoch`` (1-based): (search finished?, metrics for the log)."""
        return epoch >= self.search_epochs, {}

    def ticket(self) -> Ticket:
        """The ticket found."""
        if self.method is None:
            raise NotImplementedError
        return self.method.ticket()

    def fine_tuning(self, ticket: Ticket, pristine: nn.Module) -> FineTuning:
        """By default: the initial weights (``pristine``) with the ticket's mask, masked gradients."""
        model = copy.deepcopy(pristine)
        optimizer, scheduler = finetune_optimizer(model, self.schedule, self.steps_per_epoch)
        return FineTuning(model, ticket.optimizer(model, optimizer), scheduler,  # applies the ticket
                          plans=tuple(EpochPlan(epoch) for epoch in range(self.schedule.finetune_epochs)))

    def fine_tunes(self) -> bool:
        """Whether the ticket is fine-tuned at all (``Schedule.finetune_epochs > 0``)."""
        return self.schedule.finetune_epochs > 0

    def report(self) -> dict[str, Any]:
        """What the result reports besides the rows (found epoch, prune report ...)."""
        return {}

    def state_dict(self) -> dict:
        """Job state for checkpoints."""
        return {} if self.method is None else self.method.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``."""
        if self.method is not None:
            self.method.load_state_dict(state)


class MethodJob(Job):
    """Any registered method: its hooks for ``Schedule.epochs`` epochs, or until it has drawn."""

    def __init__(self, name: str, model: nn.Module, options: dict[str, Any], schedule: Schedule,
                 data: TrainingData) -> None:
        super().__init__(name, model, options, schedule, data)
        cls = METHODS[name]
        parameters = inspect.signature(cls).parameters
        if "epochs" in parameters and "epochs" not in options:
            options = {**options, "epochs": schedule.epochs}  # Gem-Miner: its mining length
        if "defer_backward" in parameters and "defer_backward" not in options:
            options = {**options, "defer_backward": True}  # Gem-Miner: this loop steps right after each backward
        self.method = cls(model, **options)
        self.search_epochs = schedule.epochs
        if not getattr(self.method, "owns_update", False):  # Gem-Miner's after_backward is its own update
            total = schedule.epochs * self.steps_per_epoch
            self.optimizer, self.scheduler = search_optimizer(model, schedule, total, self.steps_per_epoch)

    def epoch_end(self, epoch: int) -> tuple[bool, dict]:
        self.method.epoch_end()
        metrics = {key: getattr(self.method, key) for key in ("density", "mask_density")
                   if isinstance(getattr(type(self.method), key, None), property)}
        return bool(self.method.drawn) or epoch >= self.search_epochs, metrics


class ChannelJob(MethodJob):
    """EarlyBird or WORM: train with the L1 hook until the mask queue is stable."""

    def __init__(self, name: str, model: nn.Module, options: dict[str, Any], schedule: Schedule,
                 data: TrainingData) -> None:
        if transformer_blocks(model) and not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                 for m in model.modules()):
            attach_slimming(model)  # per-head and per-FFN-neuron coefficients play gamma's role
        super().__init__(name, model, options, schedule, data)
        self.prune_report = None
        self.at_pruning: dict[str, float] = {}

    def epoch_end(self, epoch: int) -> tuple[bool, dict]:
        self.method.epoch_end()
        found = self.method.drawn
        distances = self.method.distances
        metrics = {"max_distance": max(distances) if distances else float("nan"),
                   "mean_distance": sum(distances) / len(distances) if distances else float("nan")}
        if hasattr(self.method, "truncating"):
            metrics["truncating"] = int(self.method.truncating)
        done = found or epoch >= self.search_epochs
        if done:  # the drawn (or last) mask applied to a copy: costs about one forward pass over the data
            self.at_pruning = accuracy_at_pruning(self.model, self.method.channel_mask(), self.data.split)
            metrics.update({key: round(value, 6) for key, value in self.at_pruning.items()})
        return done, metrics

    def fine_tuning(self, ticket: Ticket, pristine: nn.Module) -> FineTuning:
        """The physically pruned copy of the searched network (fine-tuned from its weights)."""
        example = self.data.split.test_images[:16]
        pruned, self.prune_report = prune_model(self.model, ticket.channel_masks, example, measure_latency=True)
        optimizer, scheduler = finetune_optimizer(pruned, self.schedule, self.steps_per_epoch)
        return FineTuning(pruned, optimizer, scheduler,
                          plans=tuple(EpochPlan(epoch) for epoch in range(self.schedule.finetune_epochs)))

    def report(self) -> dict[str, Any]:
        report = {"history": self.method.history, "found_epoch": self.method.found_epoch,
                  "trigger_epoch": getattr(self.method, "trigger_epoch", None), "at_pruning": self.at_pruning}
        if self.prune_report is not None:
            report["prune_report"] = self.prune_report
        return report


def imp_rounds(density: float, rate: float) -> int:
    """IMP prunes until the density is at most ``density`` (the last round lands on it): at least one round."""
    return max(1, math.ceil(math.log(density) / math.log(1 - rate) - 1e-9))


class IMPJob(Job):
    """IMP with rewinding, rounds as open_lth runs them. A round is T = ``round_epochs`` epochs of steps under
    one LR schedule. Round 1 trains steps 0..T-1 from the initial weights and captures the weights, the
    optimizer and the scheduler at step k (``rewind_step``; under ``convention="original"`` the optimizer state
    is cleared there, as open_lth's new optimizer); every later round rewinds all three to step k and trains
    steps k..T-1 only. The data of step s is batch ``s % steps_per_epoch`` of data epoch ``s //
    steps_per_epoch``, so every round sees at step s the batch and the LR that round 1 saw. A search epoch is
    one epoch of a round, the first of a later round starting mid-epoch when k is not a whole number of epochs;
    the last of a round prunes ``rate`` of the survivors and rewinds. ``round_end(job, round, accuracy)``, when
    given, runs at each round's end before the pruning (the model trained at the round's masks; ``accuracy``:
    its ``evaluate``) and returns metrics for the row."""

    def __init__(self, name: str, model: nn.Module, options: dict[str, Any], schedule: Schedule,
                 data: TrainingData, round_end: Callable[[IMPJob, int, dict], dict] | None = None) -> None:
        super().__init__(name, model, options, schedule, data)
        options = dict(options)
        self.density = float(options.pop("density", 0.05))
        per_epoch = self.steps_per_epoch
        self.round_steps = schedule.round_epochs * per_epoch
        self.rewind_at = parse_rewind_step(options.pop("rewind_step", 0), per_epoch, self.round_steps)
        self.method = METHODS[name](model, rewind_step=self.rewind_at, **options)
        self.optimizer, self.scheduler = search_optimizer(model, schedule, self.round_steps, per_epoch)
        if not self.method.sharded:  # the fused masked SGD step: no per-step masking pass
            self.optimizer = self.method.optimizer(self.optimizer)
        self.rounds = imp_rounds(self.density, self.method.rate)
        start = self.rewind_at // per_epoch  # a later round's first epoch, from batch k % per_epoch
        self.later = [(epoch, self.rewind_at % per_epoch if epoch == start else 0)
                      for epoch in range(start, schedule.round_epochs)]
        self.units = [(1, epoch, 0) for epoch in range(schedule.round_epochs)]  # (round, epoch in it, skip)
        self.units += [(round_, epoch, skip) for round_ in range(2, self.rounds + 1) for epoch, skip in self.later]
        self.search_epochs = len(self.units)
        self.position = 0  # the round's next step s (its global iteration)
        self.round_end = round_end
        if self.rewind_at == 0:
            self.method.capture(self.optimizer, self.scheduler)

    def plan(self, epoch: int) -> EpochPlan:
        """Epoch e of a round (every round alike) reads data epoch e, from its rewind batch on."""
        _, round_epoch, skip = self.units[epoch - 1]
        return EpochPlan(round_epoch, skip)

    @property
    def search_steps(self) -> int:
        """Training iterations of the whole search: T, then T - k per later round."""
        return self.round_steps + (self.rounds - 1) * (self.round_steps - self.rewind_at)

    def after_step(self) -> None:
        self.method.after_step()
        self.position += 1
        if self.position == self.rewind_at and self.method.round == 0:
            self.method.capture(self.optimizer, self.scheduler)

    def epoch_end(self, epoch: int) -> tuple[bool, dict]:
        round_, round_epoch, skip = self.units[epoch - 1]
        first, last = round_epoch * self.steps_per_epoch + skip, (round_epoch + 1) * self.steps_per_epoch - 1
        if self.position != last + 1:
            raise RuntimeError(f"IMP: search epoch {epoch} (round {round_}) ended at step {self.position}, "
                               f"expected {last + 1}")
        metrics = {"round": round_, "first_step": first, "last_step": last, "trained_density": self.method.density}
        if round_epoch == self.schedule.round_epochs - 1:  # the round's end (the row's test accuracy: rewound)
            trained = evaluate(self.model, self.data.split)
            metrics.update({f"round_{key}": round(value, 6) for key, value in trained.items()})
            if self.round_end is not None:
                metrics.update(self.round_end(self, round_, trained))
            self.method.prune_round(min_density=self.density)  # the last round lands on it
            self.method.rewind()
            self.position = self.rewind_at
        return epoch >= self.search_epochs, {**metrics, "density": self.method.density}

    def fine_tunes(self) -> bool:
        return self.schedule.imp_last_round or self.schedule.finetune_epochs > 0

    def fine_tuning(self, ticket: Ticket, pristine: nn.Module) -> FineTuning:
        """The rewound network (weights at step k, pruned ones zero): fine-tuned with masked gradients,
        or (``Schedule.imp_last_round``) trained as one more round, steps k..T-1 with the rewound
        optimizer and schedule on round 1's batches."""
        if self.schedule.imp_last_round:
            return FineTuning(self.model, self.optimizer, self.scheduler, after_backward=(self.method.after_backward,),
                              after_step=(self.method.after_step,),
                              plans=tuple(EpochPlan(epoch, skip) for epoch, skip in self.later), phase="search")
        optimizer, scheduler = finetune_optimizer(self.model, self.schedule, self.steps_per_epoch)
        return FineTuning(self.model, ticket.optimizer(self.model, optimizer), scheduler,
                          plans=tuple(EpochPlan(epoch) for epoch in range(self.schedule.finetune_epochs)))

    def rewound_copy(self, batches: Callable[[int], Iterable[Batch]]) -> nn.Module:
        """A copy rewound to the captured step-k state (weights, optimizer, schedule) with the current
        masks, trained steps k..T-1 on ``batches(data_epoch)``: the second network of an instability
        test (``error_barrier``)."""
        captured = self.method.state_dict()["captured"]
        if captured is None:
            raise ValueError("IMP has not captured its rewind state yet (round 1 has not reached step k)")
        twin = copy.deepcopy(self.pristine)
        twin.load_state_dict(captured["model"])
        optimizer, scheduler = search_optimizer(twin, self.schedule, self.round_steps, self.steps_per_epoch)
        optimizer.load_state_dict(copy.deepcopy(captured["optimizer"]))
        scheduler.load_state_dict(copy.deepcopy(captured["scheduler"]))
        masked = METHODS[self.name](twin, rate=self.method.rate, exclude=self.method.exclude)  # the same layers
        for mask, source in zip(masked.masks, self.method.masks):
            mask.copy_(source)
        masked.apply_masks()
        optimizer = masked.optimizer(optimizer)  # the fused masked step: no per-step hooks needed
        for epoch, skip in self.later:
            train_steps(twin, _skipped(batches(epoch), skip), optimizer=optimizer, scheduler=scheduler)
        return twin

    def report(self) -> dict[str, Any]:
        return {"search_steps": self.search_steps, "steps_per_epoch": self.steps_per_epoch}

    def state_dict(self) -> dict:
        return {"imp": self.method.state_dict(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if "position" not in state:
            raise ValueError("IMP checkpoint from an older version (rounds were whole epochs then): "
                             "delete checkpoint.pt to restart the search")
        self.method.load_state_dict(state["imp"], optimizer=self.optimizer, scheduler=self.scheduler)
        self.position = state["position"]


def _skipped(batches: Iterable[Batch], skip: int) -> Iterable[Batch]:
    """``batches`` without the first ``skip``."""
    iterator = iter(batches)
    for _ in range(skip):
        next(iterator, None)
    return iterator


class BaselineJob(Job):
    """Pruning at initialization: no search epochs, the ticket comes from the initial weights."""

    def ticket(self) -> Ticket:
        make = BASELINES[self.name]
        parameters = inspect.signature(make).parameters
        arguments: dict[str, Any] = dict(self.options)
        if "batch" in parameters:  # SNIP, GraSP: this rank's part of one batch
            if self.data.scoring_batch is None:
                raise ValueError(f"method {self.name!r} scores weights on a batch: the data need a scoring_batch")
            arguments.update(loss_fn=nn.functional.cross_entropy, batch=self.data.scoring_batch(SCORING_BATCH))
        if "example_input_shape" in parameters:  # SynFlow: one all-ones input
            arguments["example_input_shape"] = (1, *self.data.split.train_images.shape[1:])
        return make(self.model, **arguments)


def make_job(name: str, model: nn.Module, options: dict[str, Any], schedule: Schedule, data: TrainingData,
             **job_options: Any) -> Job:
    """The job that drives registered method ``name`` (``options``: its constructor's keyword arguments)."""
    options = method_options(name, options)
    if name in BASELINES:
        return BaselineJob(name, model, options, schedule, data)
    cls = METHODS[name]
    if callable(getattr(cls, "prune_round", None)) and callable(getattr(cls, "rewind", None)):
        return IMPJob(name, model, options, schedule, data, **job_options)
    if getattr(cls, "kind", "weight") == "channel":
        return ChannelJob(name, model, options, schedule, data)
    return MethodJob(name, model, options, schedule, data)


def check_job(name: str, model: nn.Module, options: dict[str, Any], schedule: Schedule, data: TrainingData) -> None:
    """Raise what ``make_job`` would raise for these settings, leaving ``model`` and the global RNG
    untouched (the job is built on a copy and dropped): for callers that must refuse a bad
    configuration before they write anything."""
    with torch.random.fork_rng(devices=[]):
        make_job(name, copy.deepcopy(model), options, schedule, data)
