"""Per ``nn.Linear``: the weight format that is fastest on the target, chosen by timing it there.

Candidates: dense, ``torch.sparse`` CSR, and BSR with square blocks of each of ``BLOCK_SIZES`` that
divides the weight's shape. Each candidate runs the layer on inputs of the layer's own shape at every
batch size asked for (captured from a forward of the model); its score is the mean over batch sizes of
its median time divided by the dense one. A sparse format replaces the layer only if its score is
below ``MARGIN`` (at least 10% faster on average: timing noise never flips a layer); otherwise the
layer stays dense. Layers of the same shape, density (to 1%) and input shape share one timing.
Convolutions stay dense: ``torch.sparse`` has no sparse convolution on dense inputs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparseticket.deploy.inputs import Inputs, batch_of, call
from sparseticket.deploy.sparse_linear import SparseLinear

BLOCK_SIZES = (4, 8, 16, 32)
MARGIN = 0.9


@dataclass
class LayerFormat:
    """What became of one layer: its format, density and the timed score of each candidate."""

    name: str
    kind: str  # "linear" or "conv"
    shape: tuple[int, ...]
    density: float
    format: str  # "dense", "csr" or "bsr<b>"
    scores: dict[str, float] = field(default_factory=dict)  # candidate -> mean time / dense time
    note: str = ""


def candidates(shape: tuple[int, int], formats: Sequence[str]) -> list[tuple[str, str, int | None]]:
    """(label, layout, blocksize) of every sparse candidate for a weight of ``shape``."""
    found: list[tuple[str, str, int | None]] = []
    if "csr" in formats:
        found.append(("csr", "csr", None))
    if "bsr" in formats:
        found += [(f"bsr{size}", "bsr", size) for size in BLOCK_SIZES if shape[0] % size == 0 and shape[1] % size == 0]
    return found


def _median_ms(function, repeats: int, device: torch.device) -> float:
    for _ in range(2):
        function()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _convertible(model: nn.Module) -> dict[str, nn.Linear]:
    """The model's ``nn.Linear`` layers that a ``SparseLinear`` can replace: not parametrized, not the
    projection that ``nn.MultiheadAttention`` reads directly."""
    skip = {id(module.out_proj) for module in model.modules() if isinstance(module, nn.MultiheadAttention)}
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and id(module) not in skip and not parametrize.is_parametrized(module)}


@torch.no_grad()
def input_shapes(model: nn.Module, inputs: Inputs, names: Iterable[str], batch_sizes: Sequence[int]
                 ) -> dict[str, dict[int, torch.Size]]:
    """The input shape of each named layer at each batch size (one forward per batch size)."""
    modules = dict(model.named_modules())
    shapes: dict[str, dict[int, torch.Size]] = {name: {} for name in names}
    for size in batch_sizes:
        handles = [modules[name].register_forward_pre_hook(
            lambda _module, args, name=name, size=size: shapes[name].__setitem__(size, args[0].shape))
            for name in shapes]
        try:
            call(model.eval(), batch_of(inputs, size))
        finally:
            for handle in handles:
                handle.remove()
    return shapes


@torch.no_grad()
def choose_linear_formats(model: nn.Module, inputs: Inputs, batch_sizes: Sequence[int], *,
                          formats: Sequence[str] = ("csr", "bsr"), repeats: int = 5) -> list[LayerFormat]:
    """Replace, in place, each pruned ``nn.Linear`` of ``model`` by the ``SparseLinear`` that wins on the
    model's device, where one wins; the decision for every Linear and Conv layer."""
    device = next(model.parameters()).device
    linears = _convertible(model)
    shapes = input_shapes(model, inputs, linears, batch_sizes)
    cache: dict[tuple, tuple[str, dict[str, float]]] = {}
    decisions = []
    for name, linear in linears.items():
        weight = linear.weight.detach()
        density = float((weight != 0).float().mean())
        shape = tuple(weight.shape)
        if density == 1.0 or not shapes[name]:
            note = "no pruned weights" if density == 1.0 else "not called on the example"
            decisions.append(LayerFormat(name, "linear", shape, density, "dense", note=note))
            continue
        key = (shape, round(density, 2), tuple(sorted((size, tuple(s)) for size, s in shapes[name].items())))
        if key not in cache:
            cache[key] = _time_layer(linear, shapes[name], formats, repeats, device)
        label, scores = cache[key]
        if label != "dense":
            layout, _, block = label.partition("bsr")
            layout = "bsr" if block else "csr"
            replacement = SparseLinear.from_linear(linear, layout, int(block) if block else None).to(device)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, replacement)
        decisions.append(LayerFormat(name, "linear", shape, density, label, scores))
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            weight = module.weight.detach()
            decisions.append(LayerFormat(name, "conv", tuple(weight.shape), float((weight != 0).float().mean()),
                                         "dense", note="convolutions stay dense"))
    return decisions


def _time_layer(linear: nn.Linear, shapes: dict[int, torch.Size], formats: Sequence[str], repeats: int,
                device: torch.device) -> tuple[str, dict[str, float]]:
    """(winning label, score per candidate) of one layer, timed on random inputs of its shapes."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    samples = {size: torch.randn(tuple(shape), generator=generator).to(device, linear.weight.dtype)
               for size, shape in shapes.items()}
    dense = {size: _median_ms(lambda x=x: linear(x), repeats, device) for size, x in samples.items()}
    scores = {"dense": 1.0}
    for label, layout, block in candidates(tuple(linear.weight.shape), formats):
        sparse = SparseLinear.from_linear(linear, layout, block).to(device)
        ratios = [_median_ms(lambda x=x, sparse=sparse: sparse(x), repeats, device) / max(dense[size], 1e-9)
                  for size, x in samples.items()]
        scores[label] = round(sum(ratios) / len(ratios), 4)
    best = min(scores, key=scores.get)
    return (best if scores[best] < MARGIN else "dense"), scores
