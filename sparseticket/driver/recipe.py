"""``Schedule``: how a search trains (the dense recipe) and how its ticket is fine-tuned."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparseticket.driver.schedules import SCHEDULES, lr_scheduler


@dataclass(frozen=True)
class Schedule:
    """The training recipe of a search and of the fine-tuning of its ticket (SGD with momentum).

    ``epochs``: search epochs (EarlyBird/WORM stop earlier once they draw; Gem-Miner's mining
    epochs). ``round_epochs``: IMP's training epochs per round. The learning rate follows
    ``lr_schedule`` per iteration over the search (IMP: over one round) with ``warmup_epochs`` of
    linear warm-up. The ticket is then fine-tuned ``finetune_epochs`` with ``finetune_lr`` under
    ``finetune_lr_schedule``. ``imp_last_round``: IMP's ticket is trained as open_lth trains its
    last level instead: steps k..T-1 of one more round from the rewind point, with the rewound
    optimizer and schedule and round 1's batches (the ``finetune_*`` fields are then unused).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "step"
    warmup_epochs: int = 0
    round_epochs: int = 5
    finetune_epochs: int = 30
    finetune_lr: float = 0.01
    finetune_lr_schedule: str = "constant"
    finetune_warmup_epochs: int = 0
    imp_last_round: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "round_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Schedule.{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup_epochs", "finetune_epochs", "finetune_warmup_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Schedule.{name} must be an integer >= 0, got {value!r}")
        for name in ("lr", "finetune_lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"Schedule.{name} must be a finite number >= 0, got {value!r}")
        for name in ("lr_schedule", "finetune_lr_schedule"):
            if getattr(self, name) not in SCHEDULES:
                raise ValueError(f"Schedule.{name} must be one of {', '.join(SCHEDULES)}, got {getattr(self, name)!r}")


def sgd(model: nn.Module, lr: float, schedule: Schedule) -> torch.optim.SGD:
    """SGD over the model's trainable parameters with the schedule's momentum and weight decay."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                           momentum=schedule.momentum, weight_decay=schedule.weight_decay)


def search_optimizer(model: nn.Module, schedule: Schedule, total_steps: int, steps_per_epoch: int
                     ) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """The dense training's SGD and its per-iteration LR schedule over ``total_steps`` iterations."""
    optimizer = sgd(model, schedule.lr, schedule)
    return optimizer, lr_scheduler(optimizer, schedule.lr_schedule, total_steps,
                                   schedule.warmup_epochs * steps_per_epoch)


def finetune_optimizer(model: nn.Module, schedule: Schedule, steps_per_epoch: int
                       ) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """The fine-tuning's SGD and its per-iteration LR schedule over ``finetune_epochs``."""
    optimizer = sgd(model, schedule.finetune_lr, schedule)
    total = max(schedule.finetune_epochs * steps_per_epoch, 1)
    return optimizer, lr_scheduler(optimizer, schedule.finetune_lr_schedule, total,
                                   schedule.finetune_warmup_epochs * steps_per_epoch)
