"""Learning-rate schedules of the dense training, as functions of the global iteration.

As open_lth builds them (``training/optimizers.py``): the factor at iteration ``s`` is the
product of a warm-up factor ``min(1, s / warmup_steps)`` and the schedule's factor, and a
``torch.optim.lr_scheduler.LambdaLR`` steps it once per iteration. The LR of every step is then a
function of its global iteration alone, so a rewind to step k (scheduler state ``last_epoch = k``)
replays the first pass's LRs from k on.

- ``constant``: 1.
- ``step``: x0.1 from iteration ``total_steps // 2`` on and x0.01 from ``3 * total_steps // 4`` on
  (open_lth's milestones with gamma 0.1; ``bisect_right``: the milestone's own step is dropped).
- ``cosine``: ``(1 + cos(pi * s / total_steps)) / 2``, from 1 at s = 0 to 0 at s = total_steps.
"""

from __future__ import annotations

import bisect
import math

import torch

from sparseticket.methods.imp import rewind_step_parts

SCHEDULES = ("constant", "step", "cosine")
GAMMA = 0.1  # the step schedule's factor per milestone


class LRSchedule:
    """The LR factor at global iteration ``s`` (a picklable callable for ``LambdaLR``)."""

    def __init__(self, kind: str, total_steps: int, warmup_steps: int = 0) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps (the training length in iterations) must be an int >= 1, "
                             f"got {total_steps!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_epochs must give 0 <= warm-up iterations <= the training length "
                             f"({total_steps}), got {warmup_steps!r} iterations")
        self.kind, self.total_steps, self.warmup_steps = kind, total_steps, warmup_steps
        self.milestones = [total_steps // 2, 3 * total_steps // 4] if kind == "step" else []

    def __call__(self, step: int) -> float:
        factor = min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "step":
            factor *= GAMMA ** bisect.bisect_right(self.milestones, step)
        elif self.kind == "cosine":
            factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        return factor


def lr_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                 warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``optimizer`` with ``LRSchedule(kind, total_steps, warmup_steps)``:
    call its ``step()`` after every ``optimizer.step()``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(kind, total_steps, warmup_steps))


def parse_rewind_step(rewind_step: int | str, steps_per_epoch: int, total_steps: int | None = None) -> int:
    """The rewind step k in iterations: ``"500it"`` -> 500, ``"2ep"`` -> 2 * ``steps_per_epoch``,
    ``"2ep100it"``, ``"12"`` or ``12`` -> 12. With ``total_steps`` (T, one round's length) k must be
    < T: a later round trains steps k..T-1, at least one."""
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be an int >= 1, got {steps_per_epoch!r}")
    epochs, iterations = rewind_step_parts(rewind_step)
    step = epochs * steps_per_epoch + iterations
    if total_steps is not None and step >= total_steps:
        raise ValueError(f"rewind_step {rewind_step!r} is iteration {step}, beyond the training length: it must "
                         f"be below {total_steps} iterations ({steps_per_epoch} per epoch)")
    return step
