"""The settings of a claims run (a cached unit is reused only under equal settings) and the verdicts' constants."""

from __future__ import annotations

from dataclasses import dataclass

VERDICTS = ("holds", "fails", "inconclusive", "not testable here")
NOT_TESTABLE = VERDICTS[3]  # the claim's premise is absent on this task (claim 4: k = 0 stable everywhere)
STABLE_BARRIER = 0.02  # Frankle et al.: stable when the error barrier is below 2%
NON_INFERIORITY = 0.01  # claim 3: Gem-Miner "at IMP's accuracy" = within 1 point
FAR_LESS = 0.2  # claim 3: "far less search compute" = at most 1/5 of IMP's search epochs
SECOND_ORDER = 1_000_003  # data seed offset of the second copy of an instability pair
QUEUE = 5  # EarlyBird's queue (the paper's default)
BARRIER_BN = ("interpolated", "recomputed")  # BatchNorm statistics of an interpolated network in a barrier


@dataclass(frozen=True)
class Settings:
    """Everything that determines a unit's result (a cached unit is reused only under equal settings).

    The defaults are the digits task's; ``tasks.TASKS[name].settings`` holds each task's.
    """

    epochs: int = 40  # EarlyBird/WORM: training length (LR schedule) and the cap on the found epoch
    round_epochs: int = 20  # IMP's round length T, Gem-Miner's mining epochs, every fine-tuning
    width: int = 16
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "step"
    warmup_epochs: int = 0
    density: float = 0.05
    imp_rate: float = 0.2
    score_lr: float = 10.0  # Gem-Miner's score lr: the repo's 0.1 x steps budget on CIFAR (see docs/DEFAULTS.md)
    rewind_steps: tuple[str, ...] = ("0", "1ep")
    barrier_densities: tuple[float, ...] = (1.0, 0.2, 0.05)
    barrier_points: int = 30
    split_seed: int = 0
    train_limit: int | None = None  # only the first N training images (the --small plumbing size)
    convention: str = "original"  # the claims are about the papers' methods: the authors' code's semantics
    # added with the MNIST-1D task; recorded only when they differ from these defaults (ADDED_FIELDS)
    task: str = "digits"  # tasks.TASKS: the data set and the model
    imp_exclude: tuple[str, ...] = ("output",)  # IMP's dense layers ("output": the classifier; () prunes all)
    barrier_bn: str = "interpolated"  # "recomputed": BN statistics re-estimated on every interpolated network


# Fields added after the digits runs: a unit's record stores them only when they differ from their
# default, so the records made before them (every field at its default) stay valid.
ADDED_FIELDS = ("task", "imp_exclude", "barrier_bn")


def first_full_queue(settings: Settings) -> int:
    """The first epoch (count of epoch ends) at which EarlyBird's queue is full: QUEUE, or QUEUE - 1
    when the untrained model's mask opens the queue (``convention="original"``)."""
    return QUEUE - 1 if settings.convention == "original" else QUEUE


SMALL = {"seeds": 2, "seeds_other": 2, "epochs": 6, "round_epochs": 6, "width": 4,
         "train_limit": 256, "imp_rate": 0.8, "barrier_points": 6}
