"""Built-in models for images (8x8 digits, 32x32 CIFAR-style) and 1-D signals (MNIST-1D, length 40),
and a registry that builds them by name for one sample's shape.

Every convolutional model and the MLP have BatchNorm (EarlyBird tracks its gammas); the transformer
has slimming-ready blocks (call ``sparseticket.methods.attach_slimming`` before EarlyBird).
"""

from __future__ import annotations

import math
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


_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, dims: int = 2) -> nn.Module:
    """A bias-free convolution of kernel 3 (3x3 in 2-D) with padding 1."""
    return _CONV[dims](in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation block: relu(BN(conv(relu(BN(conv(x))))) + shortcut(x)); 1x1 conv+BN shortcut on shape
    change. ``dims``: 2 for images, 1 for signals (Conv1d, BatchNorm1d)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dims: int = 2) -> None:
        super().__init__()
        batch_norm = _BATCH_NORM[dims]
        self.conv1 = _conv3x3(in_channels, out_channels, stride, dims)
        self.bn1 = batch_norm(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, dims=dims)
        self.bn2 = batch_norm(out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(_CONV[dims](in_channels, out_channels, 1, stride=stride, bias=False),
                                          batch_norm(out_channels))

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


def cnn1d(classes: int = 10, in_channels: int = 1, length: int = 40, width: int = 32) -> nn.Sequential:
    """3 x (Conv1d of ``width`` channels, kernel 5, stride 2, padding 2, BatchNorm1d, ReLU), flatten, linear.

    Length 40 ends at 5 positions: a 160 -> 10 classifier and 12,000 prunable weights at width 32 (the
    1-D CNN of the MNIST-1D experiments here; the MNIST-1D paper's CNN reaches about 94%).
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    layers: list[nn.Module] = []
    channels, size = in_channels, length
    for _ in range(3):
        layers += [nn.Conv1d(channels, width, 5, stride=2, padding=2, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
        channels, size = width, (size - 1) // 2 + 1
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * size, classes))


class ResNet1d(nn.Module):
    """A small 1-D ResNet: conv5-BN-ReLU stem (w channels), 3 stages of ``blocks`` basic blocks (widths w, 2w,
    2w; each stage starts with stride 2: length 40 -> 20 -> 10 -> 5), global average pool, linear.

    Width 16: 14,480 prunable weights (the MNIST-1D ``cnn1d`` has 12,000).
    """

    def __init__(self, *, blocks: int = 1, classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        if width < 1 or blocks < 1:
            raise ValueError(f"width and blocks must be >= 1, got width={width}, blocks={blocks}")
        self.stem = nn.Sequential(nn.Conv1d(in_channels, width, 5, padding=2, bias=False), nn.BatchNorm1d(width),
                                  nn.ReLU())
        stages: list[nn.Module] = []
        channels = width
        for out_channels in (width, 2 * width, 2 * width):
            for index in range(blocks):
                stages.append(BasicBlock(channels, out_channels, 2 if index == 0 else 1, dims=1))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def resnet1d(classes: int = 10, in_channels: int = 1, width: int = 16) -> ResNet1d:
    """``ResNet1d`` with one basic block per stage."""
    return ResNet1d(blocks=1, classes=classes, in_channels=in_channels, width=width)


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


def transformer(classes: int = 10, in_channels: int = 1, image_size: int = 8, width: int = 16,
                image_width: int | None = None) -> nn.Sequential:
    """RowTokens then a TinyTransformer with one token per image row (dim 4w, 4 heads, FFN 8w, 2 blocks).

    ``image_size`` is the height (the token count); ``image_width`` the width (default: square images).
    """
    columns = image_size if image_width is None else image_width
    return nn.Sequential(RowTokens(), TinyTransformer(in_channels * image_size * columns, classes,
                                                      dim=4 * width, heads=4, ffn=8 * width, tokens=image_size))


Builder = Callable[..., nn.Module]

# Each builder takes classes, shape (one sample: (C, H, W) or (C, L)) and width.
MODELS: dict[str, Builder] = {
    "vgg": lambda *, classes, shape, width: vgg_small(classes, width, shape[0]),
    "resnet20": lambda *, classes, shape, width: resnet20(classes, shape[0], width),
    "preresnet20": lambda *, classes, shape, width: preresnet20(classes, shape[0], width),
    "mlp": lambda *, classes, shape, width: mlp(math.prod(shape), classes, (8 * width, 4 * width)),
    "transformer": lambda *, classes, shape, width: transformer(classes, shape[0], shape[1], width, shape[2]),
    "cnn1d": lambda *, classes, shape, width: cnn1d(classes, shape[0], shape[1], width),
    "resnet1d": lambda *, classes, shape, width: resnet1d(classes, shape[0], width),
}
# What each model takes: images [N, C, H, W] (2 spatial dimensions), signals [N, C, L] (1), or any (None).
MODEL_INPUTS: dict[str, int | None] = {"vgg": 2, "resnet20": 2, "preresnet20": 2, "mlp": None, "transformer": 2,
                                       "cnn1d": 1, "resnet1d": 1}
DEFAULT_WIDTH = 16
MODEL_WIDTHS: dict[str, int] = {"cnn1d": 32}  # defaults other than DEFAULT_WIDTH (cnn1d: its channel count)


def default_width(name: str, fallback: int = DEFAULT_WIDTH) -> int:
    """Model ``name``'s default width: ``MODEL_WIDTHS``, else ``fallback``."""
    return MODEL_WIDTHS.get(name, fallback)


def models_for(spatial_dims: int) -> tuple[str, ...]:
    """The registered models that take inputs with ``spatial_dims`` spatial dimensions."""
    return tuple(name for name, dims in MODEL_INPUTS.items() if dims in (None, spatial_dims))


def build_model(name: str, *, classes: int = 10, in_channels: int = 1, image_size: int = 8,
                width: int | None = None, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """The registered model ``name`` for inputs of one sample's shape ``input_shape`` ((C, H, W) images or
    (C, L) signals; default: (in_channels, image_size, image_size)).

    ``width``: None takes the model's default (``default_width``: 32 channels for cnn1d, else 16).
    ValueError if the name is unknown or the model does not take inputs of that shape.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    shape = (in_channels, image_size, image_size) if input_shape is None else tuple(int(d) for d in input_shape)
    spatial = len(shape) - 1
    wanted = MODEL_INPUTS.get(name)
    if spatial < 1 or (wanted is not None and spatial != wanted):
        kinds = {1: "signals [N, C, L]", 2: "images [N, C, H, W]"}
        given = kinds.get(spatial, f"inputs [N, {', '.join(map(str, shape))}]")
        fits = ", ".join(models_for(spatial)) if spatial in kinds else "none"
        raise ValueError(f"model {name!r} takes {kinds.get(wanted, 'inputs [N, C, ...]')}; the data are {given} "
                         f"(one sample {tuple(shape)}); models for them: {fits}")
    return MODELS[name](classes=classes, shape=shape, width=default_width(name) if width is None else width)
