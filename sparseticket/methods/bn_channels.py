"""The channels EarlyBird tracks: affine BatchNorm layers and slimming coefficients, in module order.

A channel's importance is the magnitude of its scale: BN gamma (network slimming), or the
learnable coefficient of a ``ChannelCoefficients`` module (EarlyBERT: one per attention head or
FFN neuron). Channels of BN layers and of coefficient modules without a group share one global
threshold; coefficient modules with a ``group`` are thresholded within their group (heads
layerwise, FFN neurons globally across layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sparseticket.methods.distributed import unwrap
from sparseticket.ops import kth_value

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
GLOBAL_GROUP = ""


class ChannelCoefficients(nn.Module):
    """A learnable scale per channel (init 1) that EarlyBird ranks like BN gamma.

    The module owning it multiplies channel i by ``weight[i]``; ``group`` names the pool the
    channel competes in ("" = the global pool shared with BatchNorm channels).
    """

    def __init__(self, channels: int, group: str = GLOBAL_GROUP) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = None
        self.group = group
        self.num_features = channels

    def extra_repr(self) -> str:
        return f"{self.num_features}, group={self.group!r}"


@dataclass(frozen=True)
class ChannelLayer:
    """One tracked layer: its name, module, threshold group and slice of the global channel index."""

    name: str
    module: nn.Module
    group: str
    start: int
    stop: int

    @property
    def gamma(self) -> torch.Tensor:
        """The scale whose magnitude ranks the channels."""
        return self.module.weight

    @property
    def beta(self) -> torch.Tensor | None:
        """The shift (BN beta), None for slimming coefficients."""
        return self.module.bias


def channel_layers(model: nn.Module) -> list[ChannelLayer]:
    """Every affine BatchNorm and ChannelCoefficients module; ValueError if there is none."""
    layers = []
    start = 0
    for name, module in unwrap(model).named_modules():  # bare names, also under DDP
        if isinstance(module, _BATCH_NORMS) and module.affine:
            group = GLOBAL_GROUP
        elif isinstance(module, ChannelCoefficients):
            group = module.group
        else:
            continue
        layers.append(ChannelLayer(name, module, group, start, start + module.num_features))
        start += module.num_features
    if not layers:
        raise ValueError("model has no BatchNorm layer with affine weights and no slimming "
                         f"coefficients: EarlyBird has no channel to track{_why_no_channels(model)}")
    return layers


_OTHER_NORMS = ("LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm")


def _why_no_channels(model: nn.Module) -> str:
    """The rest of channel_layers' error: what the model normalises with instead, and what to do."""
    kinds: dict[str, str] = {}  # kind -> first module of that kind
    non_affine = None
    for name, module in unwrap(model).named_modules():
        if isinstance(module, _BATCH_NORMS):
            non_affine = non_affine or name or "<model>"
            continue
        names = [cls.__name__ for cls in type(module).__mro__]  # also custom norms (ConvNextLayerNorm, *RMSNorm)
        kind = next((k for k in _OTHER_NORMS if any(n.endswith(k) for n in names)), None)
        if kind is not None:
            kinds.setdefault(kind, name or "<model>")
    hints = []
    if kinds:
        only = "" if non_affine else " only"
        hints.append(f"the model normalises with {'/'.join(kinds)}{only} (e.g. {next(iter(kinds.values()))!r}) "
                     "and EarlyBird/WORM rank channels by BatchNorm gamma, so prune it with a weight mask "
                     "(IMP, GemMiner)")
    if non_affine is not None:
        hints.append(f"its BatchNorm layers (e.g. {non_affine!r}) have affine=False: no gamma to rank")
    hints.append("for transformers, call sparseticket.methods.attach_slimming first")
    return ": " + "; ".join(hints)


def channel_importance(layers: list[ChannelLayer]) -> torch.Tensor:
    """|scale| of every tracked channel, concatenated in layer order (float32, detached)."""
    return torch.cat([layer.gamma.detach().abs().float().reshape(-1) for layer in layers])


def relative_importance(layers: list[ChannelLayer], importance: torch.Tensor, ratio: float, *,
                        break_ties: bool = True) -> torch.Tensor:
    """importance minus its group's pruning threshold, so ``> 0`` is the keep mask of every group.

    The threshold of a group of n channels is its k-th smallest |scale|, k = ``int(n * ratio)``
    (0-based; at most n - 1), and a channel is kept when its |scale| is above it: k + 1 channels
    are pruned when the scales differ, as in the authors' code. Ties at the threshold: the authors'
    code prunes them all (``break_ties=False``, ``convention="original"``), so scales that are all
    equal (at initialization, or a low-precision gamma that never moved) prune every channel; with
    ``break_ties`` (the default) the tied channels of lowest index are pruned until k + 1 are, and
    the rest are kept (as IMP breaks ties), so the requested fraction is kept whatever the ties.
    For finite floats ``a - t > 0`` exactly when ``a > t``, so one global comparison with 0 applies
    every group's own threshold.
    """
    relative = torch.empty_like(importance)
    for members in channel_groups(layers).values():
        index = torch.cat([torch.arange(layer.start, layer.stop, device=importance.device) for layer in members])
        relative[index] = _group_relative(importance[index], ratio, break_ties)
    return relative


def channel_groups(layers: list[ChannelLayer]) -> dict[str, list[ChannelLayer]]:
    """The tracked layers by threshold group, in layer order."""
    groups: dict[str, list[ChannelLayer]] = {}
    for layer in layers:
        groups.setdefault(layer.group, []).append(layer)
    return groups


def _group_relative(values: torch.Tensor, ratio: float, break_ties: bool) -> torch.Tensor:
    """One group's importance minus its threshold; with ``break_ties`` the ties beyond the k + 1
    pruned are lifted just above 0 (the ones of highest index: the lowest are pruned)."""
    count = values.numel()
    k = min(int(count * ratio), count - 1)
    relative = values - kth_value(values, k)
    if break_ties:
        ties = relative == 0
        keep = int(ties.sum()) - (k + 1 - int((relative < 0).sum()))
        if keep > 0:
            relative[ties.nonzero().flatten()[-keep:]] = torch.finfo(relative.dtype).tiny
    return relative
