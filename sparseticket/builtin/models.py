"""Built-in models for 8x8 digits and 32x32 CIFAR-style images, and a registry that builds them by name.

Every convolutional model and the MLP have BatchNorm (EarlyBird tracks its gammas); the transformer
has slimming-ready blocks (call ``sparseticket.methods.attach_slimming`` before EarlyBird).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sparseticket.builtin.transformer_model import TinyTransformer


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


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 3x3 convolution with padding 1."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation block: relu(BN(conv(relu(BN(conv(x))))) + shortcut(x)); 1x1 conv+BN shortcut on shape change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation block: conv(relu(BN(conv(relu(BN(x)))))) + shortcut; 1x1 conv shortcut on shape change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(activated)
        return self.conv2(self.relu(self.bn2(self.conv1(activated)))) + residual


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, 3 stages of ``blocks`` blocks (widths w, 2w, 4w), avg-pool, linear.

    Stages 2 and 3 start with stride 2. Post-activation (``BasicBlock``): the stem is conv-BN-ReLU.
    Pre-activation (``PreActBlock``): the stem is a bare conv and a final BN-ReLU follows the last stage.
    """

    def __init__(self, block: type[BasicBlock] | type[PreActBlock], *, blocks: int = 3, classes: int = 10,
                 in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        preact = block is PreActBlock
        stem = _conv3x3(in_channels, width)
        self.stem = stem if preact else nn.Sequential(stem, nn.BatchNorm2d(width), nn.ReLU())
        stages: list[nn.Module] = []
        channels = width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            for index in range(blocks):
                stages.append(block(channels, out_channels, 2 if stage > 0 and index == 0 else 1))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU()) if preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.stages(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def resnet20(classes: int = 10, in_channels: int = 3, width: int = 16) -> ResNet:
    """ResNet-20 (3 stages x 3 basic blocks, widths w, 2w, 4w), 1x1 conv+BN shortcuts where the shape changes."""
    return ResNet(BasicBlock, blocks=3, classes=classes, in_channels=in_channels, width=width)


def preresnet20(classes: int = 10, in_channels: int = 3, width: int = 16) -> ResNet:
    """Pre-activation ResNet-20: BN-ReLU-conv blocks with 1x1 conv shortcuts and a final BN-ReLU."""
    return ResNet(PreActBlock, blocks=3, classes=classes, in_channels=in_channels, width=width)


def mlp(input_dim: int = 64, classes: int = 10, hidden: tuple[int, ...] = (128, 64)) -> nn.Sequential:
    """Flatten, then Linear-BatchNorm1d-ReLU per hidden width, then a linear classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = input_dim
    for out_features in hidden:
        layers += [nn.Linear(features, out_features, bias=False), nn.BatchNorm1d(out_features), nn.ReLU()]
        features = out_features
    return nn.Sequential(*layers, nn.Linear(features, classes))


class RowTokens(nn.Module):
    """[N, C, H, W] images to [N, H, C*W]: each image row (all channels) is one token."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 1, 3).flatten(2)


def transformer(classes: int = 10, in_channels: int = 1, image_size: int = 8, width: int = 16) -> nn.Sequential:
    """RowTokens then a TinyTransformer with one token per image row (dim 4w, 4 heads, FFN 8w, 2 blocks)."""
    return nn.Sequential(RowTokens(), TinyTransformer(in_channels * image_size * image_size, classes,
                                                      dim=4 * width, heads=4, ffn=8 * width, tokens=image_size))


Builder = Callable[..., nn.Module]

MODELS: dict[str, Builder] = {
    "vgg": lambda *, classes, in_channels, image_size, width: vgg_small(classes, width, in_channels),
    "resnet20": lambda *, classes, in_channels, image_size, width: resnet20(classes, in_channels, width),
    "preresnet20": lambda *, classes, in_channels, image_size, width: preresnet20(classes, in_channels, width),
    "mlp": lambda *, classes, in_channels, image_size, width: mlp(in_channels * image_size * image_size, classes,
                                                                   (8 * width, 4 * width)),
    "transformer": lambda *, classes, in_channels, image_size, width: transformer(classes, in_channels,
                                                                                  image_size, width),
}


def build_model(name: str, *, classes: int = 10, in_channels: int = 1, image_size: int = 8,
                width: int = 16) -> nn.Module:
    """The registered model ``name`` for [N, in_channels, image_size, image_size] inputs; ValueError if unknown."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](classes=classes, in_channels=in_channels, image_size=image_size, width=width)
