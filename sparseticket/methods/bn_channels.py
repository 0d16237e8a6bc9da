"""The channels EarlyBird tracks: every affine BatchNorm layer of a model, in module order."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class ChannelLayer:
    """One tracked normalisation layer: its name, module and the slice of the global channel index."""

    name: str
    module: nn.Module
    start: int
    stop: int

    @property
    def gamma(self) -> torch.Tensor:
        """The scale (gamma) whose magnitude ranks the channels."""
        return self.module.weight

    @property
    def beta(self) -> torch.Tensor:
        """The shift (beta)."""
        return self.module.bias


def batchnorm_layers(model: nn.Module) -> list[ChannelLayer]:
    """Every BatchNorm with affine weights, in ``named_modules`` order; ValueError if there is none."""
    layers = []
    start = 0
    for name, module in model.named_modules():
        if isinstance(module, _BATCH_NORMS) and module.affine:
            stop = start + module.num_features
            layers.append(ChannelLayer(name, module, start, stop))
            start = stop
    if not layers:
        raise ValueError("model has no BatchNorm layer with affine weights: EarlyBird has no channel "
                         "to track (for transformers, attach slimming coefficients first)")
    return layers


def channel_importance(layers: list[ChannelLayer]) -> torch.Tensor:
    """|gamma| of every tracked channel, concatenated in layer order (float32, detached)."""
    return torch.cat([layer.gamma.detach().abs().float().reshape(-1) for layer in layers])
