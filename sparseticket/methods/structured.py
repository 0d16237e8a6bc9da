"""Physical channel pruning: turn a BatchNorm channel mask (an EarlyBird ticket) into a smaller dense network.

Built on Torch-Pruning's DependencyGraph, so residual adds, concatenations and the classifier stay
consistent. Channels coupled through the graph (e.g. both sides of a residual add) are kept when ANY
coupled BatchNorm keeps them; channels coupled to a BatchNorm without a mask, or reaching the model
output, are always kept.

``example_inputs`` are passed as Torch-Pruning passes them: a tensor as the one argument, a
tuple/list as positional arguments, a mapping (a dict, or a Hugging Face ``BatchFeature``) as
keyword arguments. The model may return anything Torch-Pruning can trace (a tensor, a tuple, a
Hugging Face ``ModelOutput``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import statistics
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sparseticket.methods.distributed import unwrap

_WARMUP_RUNS = 3
_TIMED_RUNS = 10

ExampleInputs = Union[torch.Tensor, tuple, list, Mapping]  # a Mapping holds keyword arguments


@dataclass
class PruneReport:
    """Size, cost and latency of a model before and after physical channel pruning."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    latency_ms_before: float
    latency_ms_after: float
    kept_channels: dict[str, torch.Tensor]

    def summary(self) -> str:
        """A short table of params, MACs and latency before/after with their ratios."""
        rows = [
            ("params", self.params_before, self.params_after),
            ("MACs", self.macs_before, self.macs_after),
            ("latency (ms)", self.latency_ms_before, self.latency_ms_after),
        ]
        lines = [f"{'':<14}{'before':>14}{'after':>14}{'after/before':>14}"]
        for label, before, after in rows:
            ratio = after / before if before and not math.isnan(before) else float("nan")
            lines.append(f"{label:<14}{_fmt(before):>14}{_fmt(after):>14}{_fmt(ratio):>14}")
        kept = sum(int(m.sum()) for m in self.kept_channels.values())
        total = sum(m.numel() for m in self.kept_channels.values())
        lines.append(f"channels kept: {kept}/{total} in {len(self.kept_channels)} tracked layers")
        return "\n".join(lines)


def _fmt(value: float) -> str:
    """Integers with thousands separators, floats with 3 decimals, NaN as 'n/a'."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.3f}"


def prune_channels(
    model: nn.Module,
    channel_masks: dict[str, torch.Tensor],
    example_inputs: ExampleInputs,
    *,
    measure_latency: bool = True,
    round_to: int | None = None,
) -> tuple[nn.Module, PruneReport]:
    """A physically smaller deep copy of `model` without the masked-out BN channels, and a report.

    ``round_to=N`` (as Torch-Pruning's ``round_to``): every BN keeps a multiple of N channels (or all of
    them), adding its largest-|gamma| pruned channels; ``PruneReport.kept_channels`` is the mask kept."""
    _check_round_to(round_to)
    masks = _validate_masks(model, channel_masks)
    example_inputs = _as_call_inputs(example_inputs)
    pruned = copy.deepcopy(model)
    params_before, macs_before, latency_before = measure_model(pruned, example_inputs, measure_latency)
    bns = {name: pruned.get_submodule(name) for name in masks}
    with _preserved_modes(pruned):
        graph = tp.DependencyGraph().build_dependency(pruned, example_inputs, verbose=False)
    keep = _coupled_keep(graph, bns, masks, round_to)
    _remove_channels(graph, bns, keep)
    params_after, macs_after, latency_after = measure_model(pruned, example_inputs, measure_latency)
    report = PruneReport(
        params_before, params_after, macs_before, macs_after, latency_before, latency_after, keep
    )
    return pruned, report


def _validate_masks(
    model: nn.Module, channel_masks: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Check keys name BatchNorms of `model` and masks are bool of length num_features; CPU masks."""
    modules = dict(model.named_modules())
    masks = {}
    for name, mask in channel_masks.items():
        bn = modules.get(name)
        if not isinstance(bn, _BatchNorm):
            found = "no such module" if bn is None else type(bn).__name__
            raise ValueError(f"channel_masks[{name!r}]: not a BatchNorm layer of the model ({found})")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"channel_masks[{name!r}]: mask must be a bool tensor, got {got}")
        if mask.shape != (bn.num_features,):
            raise ValueError(
                f"channel_masks[{name!r}]: mask must have shape ({bn.num_features},), got {tuple(mask.shape)}"
            )
        masks[name] = mask.detach().cpu()
    return masks


@contextlib.contextmanager
def _preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag on exit (tracing and timing switch to eval)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _as_call_inputs(example_inputs: ExampleInputs) -> torch.Tensor | tuple | list | dict:
    """A mapping that is not a dict (Hugging Face's ``BatchFeature``) as a plain dict: Torch-Pruning
    spreads only a dict (and a tuple/list) into the call; anything else would be one argument."""
    if isinstance(example_inputs, Mapping) and not isinstance(example_inputs, dict):
        return dict(example_inputs)
    return example_inputs


def _call(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """``model`` called on the example inputs as Torch-Pruning calls it."""
    example_inputs = _as_call_inputs(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    return model(example_inputs)


def _first_example(example_inputs: Any) -> Any:
    """The inputs cut to their first example (every tensor with a batch dimension: ``[:1]``)."""
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs[:1] if example_inputs.dim() > 0 else example_inputs
    if isinstance(example_inputs, dict):
        return {key: _first_example(value) for key, value in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return type(example_inputs)(_first_example(value) for value in example_inputs)
    return example_inputs


def _count_macs(model: nn.Module, example_inputs: ExampleInputs) -> int:
    """MACs of one example: Torch-Pruning's counter run on the first example alone. (Its count of a
    batch divided by the batch size is not per example: some ops count once per call, so the quotient
    drifts with the batch size, by 10 MACs between batch 1 and 64 on the digits VGG.) Keyword-only
    inputs it counts as batch 1 and says so on stdout, which is silenced here."""
    example_inputs = _first_example(_as_call_inputs(example_inputs))
    with contextlib.redirect_stdout(io.StringIO()):  # "No positional inputs found ..., assuming batch size is 1"
        return round(tp.utils.count_ops_and_params(model, example_inputs)[0])


def measure_model(model: nn.Module, example_inputs: ExampleInputs, measure_latency: bool) -> tuple[int, int, float]:
    """Parameter count, MACs per example (Torch-Pruning's counter) and median eval-mode latency
    in ms (NaN if not measured)."""
    params = sum(p.numel() for p in model.parameters())
    with _preserved_modes(model):
        macs = _count_macs(model, example_inputs)
        latency = _latency_ms(model, example_inputs) if measure_latency else float("nan")
    return params, macs, latency


def _latency_ms(model: nn.Module, example_inputs: ExampleInputs) -> float:
    """Median wall-clock time of one eval-mode, no-grad forward pass, after warm-up."""
    model.eval()
    times = []
    with torch.no_grad():
        for run in range(_WARMUP_RUNS + _TIMED_RUNS):
            start = time.perf_counter()
            _call(model, example_inputs)
            if run >= _WARMUP_RUNS:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _group_of(graph: tp.DependencyGraph, bn: _BatchNorm, idxs: list[int]) -> tp.dependency.Group:
    """The Torch-Pruning group of everything coupled to output channels `idxs` of `bn`."""
    return graph.get_pruning_group(bn, tp.prune_batchnorm_out_channels, idxs)


def _out_items(
    graph: tp.DependencyGraph, group: tp.dependency.Group
) -> Iterator[tuple[tp.dependency.Node, list[int], list[int]]]:
    """(module, channel indices, root indices) of every out-channel pruning op in a group."""
    for item in group.items:
        if graph.is_out_channel_pruning_fn(item.dep.handler):
            yield item.dep.target, list(item.idxs), list(item.root_idxs)


def _coupled_keep(
    graph: tp.DependencyGraph, bns: dict[str, _BatchNorm], masks: dict[str, torch.Tensor],
    round_to: int | None = None,
) -> dict[str, torch.Tensor]:
    """Effective keep mask per BN: union over coupled masks, forced on for protected channels, never empty,
    each count a multiple of ``round_to`` (or the BN's width) when given."""
    name_of = {bn: name for name, bn in bns.items()}
    keep = {}
    for name, bn in bns.items():
        hits = torch.zeros(bn.num_features, dtype=torch.long)
        for node, idxs, root in _out_items(graph, _group_of(graph, bn, list(range(bn.num_features)))):
            other = name_of.get(node.module)
            if not node.outputs or (other is None and isinstance(node.module, _BatchNorm)):
                kept = torch.ones(len(idxs), dtype=torch.long)  # the model output, or a BN without a mask
            elif other is not None:
                kept = masks[other][idxs].long()
            else:
                continue
            hits.index_add_(0, torch.tensor(root, dtype=torch.long), kept)
        keep[name] = hits > 0
    for name, bn in bns.items():
        if not keep[name].any():
            _force_keep(graph, bn, _largest_gamma(bn), keep, name_of)
    if round_to:
        _round_keep(graph, bns, keep, name_of, round_to)
    return keep


def _check_round_to(round_to: int | None) -> None:
    """ValueError unless ``round_to`` is None or an integer >= 1."""
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")


def _rounded_count(kept: int, width: int, round_to: int) -> int:
    """``kept`` rounded up to a multiple of ``round_to``, at most ``width``."""
    return min(-(-kept // round_to) * round_to, width)


def _round_keep(
    graph: tp.DependencyGraph,
    bns: dict[str, _BatchNorm],
    keep: dict[str, torch.Tensor],
    name_of: dict[_BatchNorm, str],
    round_to: int,
) -> None:
    """Grow each BN's keep mask to a multiple of ``round_to`` (at most its width) with its largest-|gamma|
    pruned channels, and keep every channel coupled to them; repeated until no mask changes (a coupled
    channel can leave an earlier BN off its multiple)."""
    for _ in range(sum(bn.num_features for bn in bns.values()) + 1):
        changed = False
        for name, bn in bns.items():
            target = _rounded_count(int(keep[name].sum()), bn.num_features, round_to)
            scale = bn.weight.detach().abs().cpu() if bn.affine else torch.zeros(bn.num_features)
            for channel in torch.argsort(-scale, stable=True).tolist():
                if int(keep[name].sum()) >= target:
                    break
                if not keep[name][channel]:
                    _force_keep(graph, bn, channel, keep, name_of)
                    changed = True
        if not changed:
            return


def round_channel_mask(mask: torch.Tensor, scale: torch.Tensor, round_to: int) -> torch.Tensor:
    """``mask`` grown to a multiple of ``round_to`` kept entries (at most all), adding the pruned entries of
    largest |``scale``| first (ties: the lower index)."""
    _check_round_to(round_to)
    mask = mask.detach().cpu().clone()
    missing = _rounded_count(int(mask.sum()), mask.numel(), round_to) - int(mask.sum())
    order = [index for index in torch.argsort(-scale.detach().abs().cpu(), stable=True).tolist() if not mask[index]]
    mask[order[:missing]] = True
    return mask


def _largest_gamma(bn: _BatchNorm) -> int:
    """Index of the channel with the largest |gamma| (channel 0 for a non-affine BN)."""
    return int(bn.weight.detach().abs().argmax()) if bn.affine else 0


def _force_keep(
    graph: tp.DependencyGraph,
    bn: _BatchNorm,
    channel: int,
    keep: dict[str, torch.Tensor],
    name_of: dict[_BatchNorm, str],
) -> None:
    """Mark `channel` of `bn` and every channel coupled to it as kept."""
    for node, idxs, _ in _out_items(graph, _group_of(graph, bn, [channel])):
        other = name_of.get(node.module)
        if other is not None:
            keep[other][idxs] = True


def _remove_channels(
    graph: tp.DependencyGraph, bns: dict[str, _BatchNorm], keep: dict[str, torch.Tensor]
) -> None:
    """Prune every BN channel whose keep bit is False, together with its coupled rows and columns."""
    name_of = {bn: name for name, bn in bns.items()}
    alive = {name: list(range(bn.num_features)) for name, bn in bns.items()}  # original ids still present
    for name, bn in bns.items():
        drop = [pos for pos, orig in enumerate(alive[name]) if not keep[name][orig]]
        if not drop:
            continue
        group = _group_of(graph, bn, drop)
        gone = {
            name_of[node.module]: set(idxs)
            for node, idxs, _ in _out_items(graph, group)
            if node.module in name_of
        }
        group.prune()
        for other, positions in gone.items():
            alive[other] = [orig for pos, orig in enumerate(alive[other]) if pos not in positions]
    for name, bn in bns.items():
        if bn.num_features != int(keep[name].sum()):
            raise RuntimeError(
                f"{name}: {bn.num_features} channels left after pruning, expected {int(keep[name].sum())}"
            )


def prune_model(
    model: nn.Module,
    channel_masks: dict[str, torch.Tensor],
    example_inputs: ExampleInputs,
    *,
    measure_latency: bool = True,
    round_to: int | None = None,
) -> tuple[nn.Module, PruneReport]:
    """Prune BatchNorm channels (``prune_channels``) or transformer heads/FFN neurons
    (``prune_transformer``, for slimming coefficients), whichever the masks name. A model
    wrapped in ``DistributedDataParallel`` is pruned as its bare module (wrap the result again).

    ``round_to=N``: BN channels and FFN neurons kept per layer are a multiple of N (or all of them),
    the largest-|gamma| (|coefficient|) pruned ones added; heads are kept as masked (a head is
    ``head_dim`` features wide). ``PruneReport.kept_channels`` holds the masks actually kept."""
    from sparseticket.methods.bn_channels import ChannelCoefficients

    model = unwrap(model)
    modules = dict(model.named_modules())
    slimming = {name for name in channel_masks if isinstance(modules.get(name), ChannelCoefficients)}
    if not slimming:
        return prune_channels(model, channel_masks, example_inputs, measure_latency=measure_latency,
                              round_to=round_to)
    if slimming != set(channel_masks):
        raise ValueError("channel_masks mixes BatchNorm channels and slimming coefficients; "
                         "prune a model that has one kind")
    from sparseticket.methods.transformer import FFN, prune_transformer

    _check_round_to(round_to)
    kept = {}
    for name, mask in channel_masks.items():
        scale = modules[name].weight
        mask = mask.detach().cpu().clone()
        if mask.shape == scale.shape and not mask.any():  # prune_transformer keeps the largest one
            mask[int(scale.detach().abs().argmax())] = True
        if round_to and name.endswith(FFN) and mask.shape == scale.shape:
            mask = round_channel_mask(mask, scale, round_to)
        kept[name] = mask
    before = measure_model(model, example_inputs, measure_latency)
    pruned = prune_transformer(model, kept)
    after = measure_model(pruned, example_inputs, measure_latency)
    return pruned, PruneReport(before[0], after[0], before[1], after[1], before[2], after[2], kept)
