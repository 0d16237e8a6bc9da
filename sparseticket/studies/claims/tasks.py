"""The tasks ``sparseticket reproduce`` measures the claims on: a data set, a built-in model and a recipe.

- ``digits``: scikit-learn's 8x8 digits with training-time distortions and a distorted test set,
  ResNet-20 of width 16 (the first task; its settings are ``Settings()``'s defaults).
- ``mnist1d``: MNIST-1D (Greydanus & Kobak), the package's default set (4,000 training and 1,000
  test signals of length 40), the 1-D CNN ``cnn1d`` (3 x conv 32 channels, kernel 5, stride 2,
  BatchNorm, ReLU; linear 160 -> 10), harder for sparse networks: IMP prunes 20% a round (as the
  papers) down to 1/32, every layer included, and the error barriers re-estimate BatchNorm statistics
  on every interpolated network.

MNIST-1D's defaults (measured one unit of each kind on one thread, 2-core machine under load 3:
EarlyBird+WORM 4 s, Gem-Miner 10 s, random 8 s, IMP 107-134 s; a seed of claims 3-4 is about
4 minutes of one core): 20 seeds for claims 1-2 and 15 for claims 3-4 take about 33 minutes on 2
workers under that load, less on a quiet machine; the budget is 45.

A task is data + model + recipe; every unit of work (``units``) runs any task the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sparseticket.studies.claims.settings import SMALL, Settings


@dataclass(frozen=True)
class Task:
    """One task: its data, model, default settings and seeds, and where its report goes."""

    name: str
    title: str  # the report's heading: "The papers' claims on <title>"
    model: str  # a name in sparseticket.builtin.models.MODELS
    input_shape: tuple[int, ...]  # one sample: (C, H, W) or (C, L)
    load: Callable[[int], Any]  # split_seed -> the Split
    settings: Settings
    seeds: int  # default seeds for claims 1-2
    seeds_other: int  # default seeds for claims 3-4
    small: dict[str, Any] = field(default_factory=dict)  # --small: seeds, seeds_other and settings overrides
    budget_minutes: int = 30  # the full run's wall-time budget on 2 CPU cores
    out: str = "runs/claims"  # default output folder
    report_name: str = "claims.md"  # the report's file name in the output folder (and in docs/claims/)
    plot_prefix: str = ""  # the plots' file-name prefix (docs/claims/ holds every task's)
    augment: bool = False  # training-time distortions and a distorted test set (``Split.augmented``)

    def small_settings(self) -> tuple[Settings, int, int]:
        """(settings, seeds, seeds_other) of the --small plumbing size."""
        small = dict(self.small)
        seeds, seeds_other = small.pop("seeds"), small.pop("seeds_other")
        return replace(self.settings, **small), seeds, seeds_other


def _digits(split_seed: int) -> Any:
    """The digits split (a permutation drawn from ``split_seed``)."""
    from sparseticket.builtin.data import load_digits_split

    return load_digits_split(seed=split_seed)


def _mnist1d(split_seed: int) -> Any:
    """MNIST-1D generated from seed 42 + ``split_seed`` (0: the package's default set), no distortions."""
    from sparseticket.builtin.mnist1d import load_mnist1d

    return load_mnist1d(seed=split_seed)


MNIST1D_SETTINGS = Settings(
    task="mnist1d", epochs=30, round_epochs=25, width=32, batch_size=100, lr=0.1, momentum=0.9,
    weight_decay=5e-4, lr_schedule="step", density=1 / 32, imp_rate=0.2, score_lr=5.865,
    rewind_steps=("0", "2ep"), barrier_densities=(1.0, 0.5, 0.25, 0.125, 0.0625, 1 / 32),
    imp_exclude=(), barrier_bn="recomputed")

TASKS: dict[str, Task] = {
    "digits": Task("digits", "the hard digits task", "resnet20", (1, 8, 8), _digits, Settings(), 20, 5,
                   small=dict(SMALL), augment=True),
    "mnist1d": Task("mnist1d", "MNIST-1D", "cnn1d", (1, 40), _mnist1d, MNIST1D_SETTINGS, 20, 15,
                    small={"seeds": 2, "seeds_other": 2, "epochs": 6, "round_epochs": 6, "width": 4,
                           "train_limit": 256, "imp_rate": 0.8, "density": 0.05,
                           "barrier_densities": (1.0, 0.2, 0.05), "barrier_points": 6},
                    budget_minutes=45, out="runs/claims-mnist1d", report_name="mnist1d.md", plot_prefix="mnist1d_"),
}
DEFAULT_TASK = "digits"


def task_of(settings: Settings) -> Task:
    """The task ``settings`` run on; ValueError naming the known ones."""
    try:
        return TASKS[settings.task]
    except KeyError:
        raise ValueError(f"unknown task {settings.task!r}; known: {', '.join(TASKS)}") from None
