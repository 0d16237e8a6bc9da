"""One job per method: how it trains during the search, when it is done, its ticket, and how
the ticket becomes the network that is fine-tuned. Every job can save and restore its state."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparseticket.cli.config import CHANNEL_METHODS, RunConfig
from sparseticket.experiments.data import Split
from sparseticket.experiments.schedules import lr_scheduler, parse_rewind_step
from sparseticket.experiments.training import accuracy_at_pruning, evaluate
from sparseticket.methods import (
    IMP,
    WORM,
    EarlyBird,
    attach_slimming,
    GemMiner,
    Ticket,
    grasp_ticket,
    magnitude_ticket,
    prune_model,
    random_ticket,
    smart_ratio_ticket,
    snip_ticket,
    synflow_ticket,
)

Hook = Callable[[], None]
SCORING_BATCH = 256  # global batch that SNIP and GraSP score on


def sgd(model: nn.Module, lr: float, config: RunConfig) -> torch.optim.SGD:
    """SGD with the run's momentum and weight decay."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                           momentum=config.momentum, weight_decay=config.weight_decay)


def dense_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The dense training's LR schedule (``--lr-schedule``, ``--warmup-epochs``) over ``total_steps``
    iterations, stepped once per iteration."""
    return lr_scheduler(optimizer, config.lr_schedule, total_steps, config.warmup_epochs * steps_per_epoch)


@dataclass(frozen=True)
class EpochPlan:
    """What one search epoch trains on: the loader's epoch index (its shuffle seed) and how many
    of that epoch's first batches it skips (a round that starts mid-epoch, at the rewind step)."""

    data_epoch: int
    skip: int = 0


class Job:
    """The search phase of one method. Subclasses fill in the hooks."""

    search_epochs: int = 0

    def __init__(self, config: RunConfig, model: nn.Module, data: Split, steps_per_epoch: int | None = None) -> None:
        self.config, self.model, self.data = config, model, data
        self.steps_per_epoch = (steps_per_epoch if steps_per_epoch is not None
                                else math.ceil(len(data.train_labels) / config.batch_size))
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None

    def plan(self, epoch: int) -> EpochPlan:
        """The data of search epoch ``epoch`` (1-based): by default that epoch's shuffle, whole."""
        return EpochPlan(epoch)

    def after_backward(self) -> None:
        """Between backward and the optimizer step."""

    def step(self) -> None:
        """The optimizer step (and what follows it), then the LR schedule's step."""
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def epoch_end(self, epoch: int) -> tuple[bool, dict]:
        """After epoch ``epoch`` (1-based): (search finished?, metrics for the log)."""
        return epoch >= self.search_epochs, {}

    def ticket(self) -> Ticket:
        """The ticket found."""
        raise NotImplementedError

    def finetune_model(self, ticket: Ticket, initial: dict, example: torch.Tensor) -> tuple[nn.Module, Hook]:
        """The network to fine-tune and its after-backward hook: by default the initial weights
        with the ticket's mask and masked gradients."""
        model = self.fresh_model()
        model.load_state_dict(initial)
        ticket.apply_(model)
        return model, ticket.gradient_mask(model)

    fresh_model: Callable[[], nn.Module]
    batch_loader: Callable[..., Any]  # (seed, global batch size) -> this rank's shard of the batches

    def state_dict(self) -> dict:
        """Method state for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``."""


class ChannelJob(Job):
    """EarlyBird or WORM: train with the L1 hook until the mask queue is stable."""

    def __init__(self, config: RunConfig, model: nn.Module, data: Split, steps_per_epoch: int | None = None) -> None:
        super().__init__(config, model, data, steps_per_epoch)
        if config.model == "transformer":
            attach_slimming(model)  # per-head and per-FFN-neuron coefficients play gamma's role
        common = {"ratio": config.ratio, "l1": config.l1, "queue": config.queue, "eps": config.eps}
        if config.method == "worm":
            self.method = WORM(model, trigger=config.trigger, chi=config.chi, static=config.static,
                               truncate_filters=config.truncate_filters, **common)
        else:
            self.method = EarlyBird(model, **common)
        self.optimizer = sgd(model, config.lr, config)
        self.scheduler = dense_scheduler(self.optimizer, config, config.epochs * self.steps_per_epoch,
                                         self.steps_per_epoch)
        self.search_epochs = config.epochs

    def after_backward(self) -> None:
        self.method.after_backward()

    def epoch_end(self, epoch: int) -> tuple[bool, dict]:
        found = self.method.epoch_end()
        distances = self.method.distances
        metrics = {"max_distance": max(distances) if distances else float("nan"),
                   "mean_distance": sum(distances) / len(distances) if distances else float("nan")}
        if isinstance(self.method, WORM):
            metrics["truncating"] = int(self.method.truncating)
        done = found or epoch >= self.search_epochs
        if done:  # the drawn (or last) mask applied to a copy: costs about one forward pass over the data
            pruning = accuracy_at_pruning(self.model, self.method.channel_mask(), self.data)
            metrics.update({key: round(value, 6) for key, value in pruning.items()})
        return done, metrics

    def ticket(self) -> Ticket:
        hyperparameters = {"ratio": self.config.ratio, "l1": self.config.l1, "queue": self.config.queue,
                           "eps": self.config.eps, "found_epoch": self.method.found_epoch}
        return Ticket({}, self.config.method, hyperparameters, channel_masks=self.method.channel_mask())

    def finetune_model(self, ticket: Ticket, initial: dict, example: torch.Tensor) -> tuple[nn.Module, Hook]:
        """The physically pruned copy of the searched network (fine-tuned from its weights)."""
        pruned, self.prune_report = prune_model(self.model, ticket.channel_masks, example, measure_latency=True)
        return pruned, lambda: None

    def state_dict(self) -> dict:
        return self.method.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state)


class GemMinerJob(Job):
    """Gem-Miner: mine scores for ``epochs`` epochs with the fused score step."""

    def __init__(self, config: RunConfig, model: nn.Module, data: Split, steps_per_epoch: int | None = None) -> None:
        super().__init__(config, model, data, steps_per_epoch)
        self.method = GemMiner(model, density=config.density, epochs=config.epochs, period=config.period,
                               l2=config.l2, lr=config.score_lr, momentum=config.momentum, seed=config.seed)
        self.search_epochs = config.epochs

    def step(self) -> None:
        self.method.step()

    def epoch_end(self, epoch: int) -> tuple[bool, dict]:
        self.method.epoch_end(epoch)
        return epoch >= self.search_epochs, {"density": self.method.density,
                                             "mask_density": self.method.mask_density}

    def ticket(self) -> Ticket:
        return self.method.ticket()

    def state_dict(self) -> dict:
        return self.method.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state)


class IMPJob(Job):
    """IMP with rewinding as open_lth runs it. A round is T = ``round_epochs`` epochs of steps under
    one LR schedule. Round 1 trains steps 0..T-1 from the initial weights and captures the weights,
    the optimizer and the scheduler at step k (``rewind_step``); every later round rewinds all three
    to step k and trains steps k..T-1 only. The data of step s is batch ``s % steps_per_epoch`` of
    the shuffle of epoch ``s // steps_per_epoch`` of the round, so every round sees at step s the
    batch and the LR that round 1 saw. A search epoch is one epoch of a round, the first of a
    later round starting mid-epoch when k is not a whole number of epochs; each ends in a
    checkpoint, and the last of a round prunes ``rate`` of the survivors and rewinds."""

    def __init__(self, config: RunConfig, model: nn.Module, data: Split, steps_per_epoch: int | None = None) -> None:
        super().__init__(config, model, data, steps_per_epoch)
        per_epoch = self.steps_per_epoch
        self.round_steps = config.round_epochs * per_epoch
        self.rewind_at = parse_rewind_step(config.rewind_step, per_epoch, self.round_steps)
        self.method = IMP(model, rate=config.rate, rewind_step=self.rewind_at)
        self.optimizer = sgd(model, config.lr, config)
        self.scheduler = dense_scheduler(self.optimizer, config, self.round_steps, per_epoch)
        self.rounds = max(1, math.ceil(math.log(config.density) / math.log(1 - config.rate)))
        start = self.rewind_at // per_epoch  # a later round's first epoch, from batch k % per_epoch
        later = [(epoch, self.rewind_at % per_epoch if epoch == start else 0)
                 for epoch in range(start, config.round_epochs)]
        self.units = [(1, epoch, 0) for epoch in range(config.round_epochs)]  # (round, epoch in it, skip)
        self.units += [(round_, epoch, skip) for round_ in range(2, self.rounds + 1) for epoch, skip in later]
        self.search_epochs = len(self.units)
        self.position = 0  # the round's next step s (its global iteration)
        if self.rewind_at == 0:
            self.method.capture(self.optimizer, self.scheduler)

    def plan(self, epoch: int) -> EpochPlan:
        """Epoch e of a round (every round alike) reads the shuffle of e, from its rewind batch on."""
        _, round_epoch, skip = self.units[epoch - 1]
        return EpochPlan(round_epoch + 1, skip)

    @property
    def search_steps(self) -> int:
        """Training iterations of the whole search: T, then T - k per later round."""
        return self.round_steps + (self.rounds - 1) * (self.round_steps - self.rewind_at)

    def after_backward(self) -> None:
        self.method.after_backward()

    def step(self) -> None:
        self.optimizer.step()
        self.method.after_step()
        self.scheduler.step()
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
        if round_epoch == self.config.round_epochs - 1:  # the round's end (the row's test accuracy: rewound)
            trained = evaluate(self.model, self.data, ndigits=6)
            metrics.update({f"round_{key}": value for key, value in trained.items()})
            self.method.prune_round(min_density=self.config.density)  # the last round lands on it
            self.method.rewind()
            self.position = self.rewind_at
        return epoch >= self.search_epochs, {**metrics, "density": self.method.density}

    def ticket(self) -> Ticket:
        return self.method.ticket()

    def finetune_model(self, ticket: Ticket, initial: dict, example: torch.Tensor) -> tuple[nn.Module, Hook]:
        """The rewound network (weights at step k, pruned ones zero) with masked gradients."""
        return self.model, ticket.gradient_mask(self.model)

    def state_dict(self) -> dict:
        return {"imp": self.method.state_dict(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if "position" not in state:
            raise ValueError("IMP checkpoint from an older version (rounds were whole epochs then): "
                             "delete checkpoint.pt to restart the search")
        self.method.load_state_dict(state["imp"], optimizer=self.optimizer, scheduler=self.scheduler)
        self.position = state["position"]


class BaselineJob(Job):
    """Pruning at initialization: no search epochs, the ticket comes from the initial weights."""

    def ticket(self) -> Ticket:
        config, model = self.config, self.model
        batch = next(iter(self.batch_loader(config.seed, SCORING_BATCH)))  # this rank's part of it
        loss = nn.functional.cross_entropy
        makers = {
            "random": lambda: random_ticket(model, config.density, seed=config.seed),
            "smart_ratio": lambda: smart_ratio_ticket(model, config.density, seed=config.seed),
            "magnitude": lambda: magnitude_ticket(model, config.density),
            "snip": lambda: snip_ticket(model, loss, batch, config.density),
            "grasp": lambda: grasp_ticket(model, loss, batch, config.density),
            "synflow": lambda: synflow_ticket(model, (1, *batch[0].shape[1:]), config.density),
        }
        return makers[config.method]()


def make_job(config: RunConfig, model: nn.Module, data: Split, steps_per_epoch: int | None = None) -> Job:
    """The job of ``config.method``; ``steps_per_epoch``: this rank's batches per epoch (default:
    one process's, from the training set and ``config.batch_size``)."""
    if config.method in CHANNEL_METHODS:
        return ChannelJob(config, model, data, steps_per_epoch)
    if config.method == "gemminer":
        return GemMinerJob(config, model, data, steps_per_epoch)
    if config.method == "imp":
        return IMPJob(config, model, data, steps_per_epoch)
    return BaselineJob(config, model, data, steps_per_epoch)
