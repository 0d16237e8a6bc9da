"""A finished ``sparseticket search`` run folder read back: its ticket, its network and example inputs.

The network is rebuilt as the command line builds it (``build_model`` on the run's data shape and
``--width``) and gets the run's weights:

- a channel ticket (EarlyBird, WORM): the searched network the ticket was drawn on (``searched.pt``;
  slimming coefficients attached first for a transformer without BatchNorm, as the driver's
  ``ChannelJob`` does). The run's fine-tuned network is already the pruned one (``checkpoint.pt``);
  deploying the searched one lets the slim network be checked against the masked dense one.
- a weight ticket (IMP, Gem-Miner, baselines): the fine-tuned network (``checkpoint.pt``), or the
  searched one when the run did not fine-tune; Gem-Miner's score parametrizations are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparseticket.builtin.data import Split
from sparseticket.builtin.datasets import load_dataset
from sparseticket.builtin.models import build_model
from sparseticket.driver.config import RunConfig
from sparseticket.methods import Ticket, attach_slimming
from sparseticket.methods.transformer import transformer_blocks

EXAMPLES = 16  # test images used as the example input
_PARAMETRIZED = re.compile(r"\.parametrizations\.(\w+)\.original$")


@dataclass
class RunSource:
    """What ``load_run`` read: the ticket, the network with the run's weights, example inputs."""

    run_dir: Path
    config: RunConfig  # the run's config.json
    ticket: Ticket
    model: nn.Module
    example_inputs: torch.Tensor
    weights: str  # the file the weights came from
    split: Split  # the run's data (its test split scores the deployed model)


def check_run_folder(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path; ValueError saying what is missing unless it holds a finished search."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir}: no such folder")
    if not (run_dir / "config.json").is_file():
        raise ValueError(f"run folder {run_dir}: not a run folder (no config.json)")
    if not (run_dir / "ticket.safetensors").is_file():
        raise ValueError(f"run folder {run_dir}: holds no ticket (no ticket.safetensors); the search has not "
                         f"drawn one yet: finish it with `sparseticket search --resume {run_dir}`")
    if not (run_dir / "summary.md").is_file():
        raise ValueError(f"run folder {run_dir}: the run is still in progress (no summary.md); finish it with "
                         f"`sparseticket search --resume {run_dir}`")
    return run_dir


def _plain_state(state: dict) -> dict:
    """A state dict without parametrizations: ``x.parametrizations.weight.original`` becomes ``x.weight``."""
    plain = {}
    for key, value in state.items():
        renamed = _PARAMETRIZED.sub(r".\1", key)
        if ".parametrizations." not in renamed:
            plain[renamed] = value
    return plain


def _load(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors alike: one clear message
        raise ValueError(f"{path} cannot be read ({type(error).__name__}: {error})") from error


def load_run(run_dir: str | Path, *, examples: int = EXAMPLES) -> RunSource:
    """Read a finished run folder (ValueError naming what is missing otherwise)."""
    run_dir = check_run_folder(run_dir)
    config = RunConfig.read(run_dir / "config.json")
    ticket = Ticket.load(run_dir / "ticket.safetensors")
    split = load_dataset(config.data, data_dir=config.data_dir, seed=config.seed, augment=config.augment,
                         samples=config.samples)
    model = build_model(config.model, classes=split.classes, input_shape=tuple(split.train_images.shape[1:]),
                        width=config.width)
    if ticket.channel_masks:
        if transformer_blocks(model) and not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                 for m in model.modules()):
            attach_slimming(model)
        weights = run_dir / "searched.pt"
        model.load_state_dict(_load(weights)["model"])
    else:
        weights = run_dir / "checkpoint.pt"
        state = _load(weights) if weights.is_file() else {}
        if state.get("phase") != "finetune":
            weights = run_dir / "searched.pt"
            state = _load(weights)
        model.load_state_dict(_plain_state(state["model"]))
    return RunSource(run_dir, config, ticket, model.eval(), split.test_images[:examples].clone(), weights.name, split)
