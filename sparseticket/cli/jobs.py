"""One job per method: how it trains during the search, when it is done, its ticket, and how
the ticket becomes the network that is fine-tuned. Every job can save and restore its state."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sparseticket.cli.config import RunConfig
from sparseticket.experiments.data import Split
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


class Job:
    """The search phase of one method. Subclasses fill in the hooks."""

    search_epochs: int = 0

    def __init__(self, config: RunConfig, model: nn.Module, data: Split) -> None:
        self.config, self.model, self.data = config, model, data
        self.optimizer: torch.optim.Optimizer | None = None

    def after_backward(self) -> None:
        """Between backward and the optimizer step."""

    def step(self) -> None:
        """The optimizer step (and what follows it)."""
        self.optimizer.step()

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

    def __init__(self, config: RunConfig, model: nn.Module, data: Split) -> None:
        super().__init__(config, model, data)
        if config.model == "transformer":
            attach_slimming(model)  # per-head and per-FFN-neuron coefficients play gamma's role
        common = {"ratio": config.ratio, "l1": config.l1, "queue": config.queue, "eps": config.eps}
        if config.method == "worm":
            self.method = WORM(model, trigger=config.trigger, chi=config.chi, static=config.static,
                               truncate_filters=config.truncate_filters, **common)
        else:
            self.method = EarlyBird(model, **common)
        self.optimizer = sgd(model, config.lr, config)
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
        return found or epoch >= self.search_epochs, metrics

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

    def __init__(self, config: RunConfig, model: nn.Module, data: Split) -> None:
        super().__init__(config, model, data)
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
    """IMP: ``round_epochs`` of training per round, prune ``rate`` of the survivors, rewind."""

    def __init__(self, config: RunConfig, model: nn.Module, data: Split) -> None:
        super().__init__(config, model, data)
        self.method = IMP(model, rate=config.rate, rewind_step=config.rewind_step)
        self.optimizer = sgd(model, config.lr, config)
        self.rounds = max(1, math.ceil(math.log(config.density) / math.log(1 - config.rate)))
        self.search_epochs = self.rounds * config.round_epochs
        self.steps = 0
        if config.rewind_step == 0:
            self.method.capture(self.optimizer)

    def after_backward(self) -> None:
        self.method.after_backward()

    def step(self) -> None:
        self.optimizer.step()
        self.method.after_step()
        self.steps += 1
        if self.steps == self.config.rewind_step and self.method.round == 0:
            self.method.capture(self.optimizer)

    def epoch_end(self, epoch: int) -> tuple[bool, dict]:
        if epoch % self.config.round_epochs == 0:
            self.method.prune_round(min_density=self.config.density)  # the last round lands on it
            self.method.rewind()
        return epoch >= self.search_epochs, {"density": self.method.density, "round": self.method.round}

    def ticket(self) -> Ticket:
        return self.method.ticket()

    def finetune_model(self, ticket: Ticket, initial: dict, example: torch.Tensor) -> tuple[nn.Module, Hook]:
        """The rewound network (weights at step k, pruned ones zero) with masked gradients."""
        return self.model, ticket.gradient_mask(self.model)

    def state_dict(self) -> dict:
        return {"imp": self.method.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state["imp"], optimizer=self.optimizer)
        self.steps = state["steps"]


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


def make_job(config: RunConfig, model: nn.Module, data: Split) -> Job:
    """The job of ``config.method``."""
    if config.method in ("earlybird", "worm"):
        return ChannelJob(config, model, data)
    if config.method == "gemminer":
        return GemMinerJob(config, model, data)
    if config.method == "imp":
        return IMPJob(config, model, data)
    return BaselineJob(config, model, data)
