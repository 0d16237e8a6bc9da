"""Independent references for the deploy tests: models masked by hand (not through ``Ticket.apply_``),
outputs compared to 1e-5 of their scale, tiny run folders made by ``sparseticket search``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from sparseticket.builtin.models import build_model
from sparseticket.cli.main import main

TOLERANCE = 1e-5
TINY = ["--width", "8", "--no-progress", "--threads", "1"]
SEARCHES = {  # the smallest settings that finish a search of each method in seconds
    "earlybird": ["--epochs", "2", "--queue", "2", "--finetune-epochs", "1"],
    "worm": ["--epochs", "3", "--queue", "2", "--finetune-epochs", "1"],
    "gemminer": ["--epochs", "6", "--density", "0.2", "--finetune-epochs", "1"],
    "imp": ["--density", "0.6", "--round-epochs", "1", "--rewind-step", "3", "--finetune-epochs", "1"],
}


def search_run(out: Path, method: str, *extra: str) -> Path:
    """A finished run folder of ``method`` on digits, made by the command line."""
    assert main(["search", "--method", method, "--out", str(out), *TINY, *SEARCHES[method], *extra]) == 0
    (folder,) = [path for path in out.iterdir() if path.is_dir()]
    return folder


def rebuilt(run: Path) -> nn.Module:
    """The run's network rebuilt by hand (digits: 1x8x8 images, 10 classes)."""
    config = json.loads((run / "config.json").read_text())
    return build_model(config["model"], classes=10, in_channels=1, image_size=8, width=config["width"]).eval()


def state_of(path: Path) -> dict:
    """A checkpoint's model state with Gem-Miner's parametrization names made plain."""
    state = torch.load(path, weights_only=True, map_location="cpu")["model"]
    plain = {}
    for key, value in state.items():
        if key.endswith(".parametrizations.weight.original"):
            plain[key.replace(".parametrizations.weight.original", ".weight")] = value
        elif ".parametrizations." not in key:
            plain[key] = value
    return plain


@torch.no_grad()
def zero_channels(model: nn.Module, channel_masks: dict[str, torch.Tensor]) -> nn.Module:
    """gamma and beta of every pruned BN channel set to 0, by hand."""
    modules = dict(model.named_modules())
    for name, mask in channel_masks.items():
        modules[name].weight[~mask] = 0
        if modules[name].bias is not None:
            modules[name].bias[~mask] = 0
    return model


@torch.no_grad()
def zero_weights(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Every pruned weight set to 0, by hand."""
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        parameters[name][~mask] = 0
    return model


@torch.no_grad()
def assert_same_outputs(model: nn.Module, reference: nn.Module, inputs: torch.Tensor) -> None:
    """Outputs equal to 1e-5 of max(1, the reference's largest |output|)."""
    if not isinstance(model, torch.fx.GraphModule):  # an exported program's module has no train/eval switch
        model.eval()
    got, want = model(inputs), reference.eval()(inputs)
    assert got.shape == want.shape
    error = float((got - want).abs().max()) / max(1.0, float(want.abs().max()))
    assert error <= TOLERANCE, error


def digits(count: int = 16) -> torch.Tensor:
    """Test images of the digits split."""
    from sparseticket.builtin.data import load_digits_split

    return load_digits_split().test_images[:count]
