"""Small built-in CNNs for 8x8 inputs: a VGG-style network with BatchNorm."""

from __future__ import annotations

from torch import nn


def vgg_small(classes: int = 10, width: int = 16, in_channels: int = 1) -> nn.Sequential:
    """conv-BN-ReLU x4 (widths w, w, 2w, 2w; a max-pool after the second), mean-pool, linear."""
    widths = (width, width, 2 * width, 2 * width)
    layers: list[nn.Module] = []
    channels = in_channels
    for index, out_channels in enumerate(widths):
        layers += [nn.Conv2d(channels, out_channels, 3, padding=1, bias=False),
                   nn.BatchNorm2d(out_channels), nn.ReLU()]
        if index == 1:
            layers.append(nn.MaxPool2d(2))
        channels = out_channels
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))
