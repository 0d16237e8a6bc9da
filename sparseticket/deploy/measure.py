"""What a model costs at inference: parameters, MACs, bytes held and latency per batch size."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from sparseticket.deploy.inputs import Inputs, batch_of, call
from sparseticket.deploy.sparse_linear import SparseLinear
from sparseticket.methods.structured import measure_model


@dataclass
class Measures:
    """One model's cost: stored weights, MACs per example, bytes of parameters + buffers, median ms per batch size."""

    params: int
    macs: int
    memory_bytes: int
    latency_ms: dict[int, float] = field(default_factory=dict)


def stored_params(model: nn.Module) -> int:
    """Parameters stored: every parameter's elements, plus each ``SparseLinear``'s stored weight values."""
    params = sum(parameter.numel() for parameter in model.parameters())
    return params + sum(module.stored_values() for module in model.modules() if isinstance(module, SparseLinear))


def memory_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (a ``SparseLinear``'s values and indices included)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def dense_macs(model: nn.Module, inputs: Inputs) -> int:
    """MACs of one example, Torch-Pruning's counter (``sparseticket.methods.structured.measure_model``)."""
    return measure_model(model, inputs, False)[1]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency_ms(model: nn.Module, inputs: Inputs, *, repeats: int = 10, warmup: int = 3) -> float:
    """Median wall-clock ms of one eval-mode, no-grad forward on ``inputs`` after ``warmup`` calls."""
    model.eval()
    device = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device
    for _ in range(warmup):
        call(model, inputs)
    times = []
    for _ in range(max(repeats, 1)):
        _synchronize(device)
        start = time.perf_counter()
        call(model, inputs)
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def latencies(model: nn.Module, inputs: Inputs, batch_sizes: Iterable[int], *, repeats: int = 10) -> dict[int, float]:
    """``latency_ms`` at each batch size (the first example repeated)."""
    return {size: latency_ms(model, batch_of(inputs, size), repeats=repeats) for size in batch_sizes}
