"""Named settings (``--preset``) for ``search`` and ``compare``: overrides of RunConfig fields that
apply before the explicit flags, so a flag given on the command line always wins.

- ``default``: RunConfig's defaults (the quick built-in task: clean digits, VGG).
- ``hard``: the harder digits task a pilot found to separate the methods: training on random
  affine (±1 px shift, ±15° rotation) and Gaussian-noise (σ = 0.1) copies, accuracy on the clean
  and on a distorted test set, ResNet-20 of width 16, SGD lr 0.05 momentum 0.9, batch 64, at most
  40 epochs (and 40 of fine-tuning: Gem-Miner's rule, fine-tuning as long as the search).
- ``paper``: ``hard`` trained as long as the papers train CIFAR ResNets: 160 epochs of search
  (EarlyBird's and open_lth's training length; Gem-Miner mines for 160 epochs, its paper 150),
  160 of fine-tuning, and 160 epochs per IMP round (open_lth retrains each round to the end).
"""

from __future__ import annotations

import argparse
from dataclasses import fields, replace
from typing import Any

from sparseticket.driver.config import RunConfig

_HARD: dict[str, Any] = {"augment": True, "model": "resnet20", "width": 16, "lr": 0.05, "momentum": 0.9,
                         "batch_size": 64, "epochs": 40, "finetune_epochs": 40}
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "hard": _HARD,
    "paper": {**_HARD, "epochs": 160, "finetune_epochs": 160, "round_epochs": 160},
}
EXPLICIT = "explicit_flags"  # the namespace attribute listing the run flags given on the command line


def preset_values(name: str) -> dict[str, Any]:
    """The RunConfig overrides of preset ``name``; ValueError naming --preset if it is unknown."""
    if name not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return dict(PRESETS[name])


def apply_preset(config: RunConfig, name: str, explicit: set[str] | frozenset[str] = frozenset()) -> RunConfig:
    """``config`` with preset ``name``'s values, except for the fields in ``explicit`` (given as flags)."""
    known = {field.name for field in fields(RunConfig)}
    values = preset_values(name)
    unknown = set(values) - known
    if unknown:  # a preset naming a field RunConfig lost: a bug here, not a user error
        raise RuntimeError(f"preset {name!r} sets unknown RunConfig fields: {', '.join(sorted(unknown))}")
    return replace(config, **{key: value for key, value in values.items() if key not in explicit})


def explicit_flags(arguments: argparse.Namespace) -> set[str]:
    """The destinations of the run flags given on the command line (recorded by ``Store``/``Flag``)."""
    return set(getattr(arguments, EXPLICIT, ()))


def _remember(namespace: argparse.Namespace, dest: str) -> None:
    given = set(getattr(namespace, EXPLICIT, ()))
    given.add(dest)
    setattr(namespace, EXPLICIT, given)


class Store(argparse.Action):
    """``store`` that also records that the flag was given (argparse sets defaults without calling actions)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        _remember(namespace, self.dest)


class Flag(argparse.BooleanOptionalAction):
    """``--name`` / ``--no-name`` that also records that the flag was given (so it beats a preset)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        _remember(namespace, self.dest)
