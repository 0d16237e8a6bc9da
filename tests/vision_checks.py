"""Checks shared by the physical-pruning tests of CNNs (own models, Hugging Face, torchvision): the
BatchNorms and weights of a model, the channel groups coupled by its architecture, and the reference
that a pruned network must equal (the unpruned one with the removed channels' gamma and beta zeroed)."""

from __future__ import annotations

import copy

import torch
from torch import nn

BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorms(model: nn.Module) -> dict[str, BatchNorm]:
    """Every BatchNorm by qualified name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, BatchNorm)}


def conv_linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every Conv/Linear weight by parameter name, in module order."""
    return {f"{name}.weight": module.weight for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))}


def zeroed_copy(model: nn.Module, kept: dict[str, torch.Tensor]) -> nn.Module:
    """A copy with gamma and beta of every removed channel set to zero."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for name, bn in batchnorms(zeroed).items():
            bn.weight[~kept[name]] = 0
            bn.bias[~kept[name]] = 0
    return zeroed


class Groups:
    """Union-find over BN names: channels of BNs in one group are added or depthwise-tied channel by channel."""

    def __init__(self, names: list[str]) -> None:
        self.parent = {name: name for name in names}

    def root(self, name: str) -> str:
        while self.parent[name] != name:
            name = self.parent[name]
        return name

    def join(self, a: str, b: str) -> None:
        self.parent[self.root(a)] = self.root(b)

    def members(self) -> list[list[str]]:
        found: dict[str, list[str]] = {}
        for name in self.parent:
            found.setdefault(self.root(name), []).append(name)
        return list(found.values())


def check_kept_channels(masks: dict[str, torch.Tensor], kept: dict[str, torch.Tensor], groups: Groups) -> None:
    """Each coupled group keeps the union of its masks; an all-pruned group keeps one common channel."""
    assert set(kept) == set(masks)
    for members in groups.members():
        union = torch.stack([masks[name] for name in members]).any(0)
        for name in members:
            if union.any():
                assert torch.equal(kept[name], union), (name, members)
            else:
                assert int(kept[name].sum()) == 1 and torch.equal(kept[name], kept[members[0]]), (name, members)
