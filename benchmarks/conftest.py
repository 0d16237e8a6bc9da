"""Benchmark fixtures: real layer shapes as tensors, fixed seeds, two CPU threads."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from shapes import bert_base_shapes, resnet18_shapes, resnet50_shapes

NETWORKS = {"resnet18": resnet18_shapes, "resnet50": resnet50_shapes, "bert_base": bert_base_shapes}


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def tensors_like(shapes: list[tuple[int, ...]], seed: int = 0) -> list[torch.Tensor]:
    """One random fp32 tensor per shape."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in shapes]


@pytest.fixture(params=sorted(NETWORKS))
def network(request) -> tuple[str, dict[str, list[tuple[int, ...]]]]:
    """(name, shapes by kind) of each benchmarked network."""
    return request.param, NETWORKS[request.param]()


def median_with_interval(values: list[float]) -> dict[str, float]:
    """The median of ``values`` with a distribution-free 95% confidence interval for it (the order
    statistics at ranks n/2 -+ 0.98 sqrt(n), the binomial sign-test interval) and the quartiles."""
    ordered = sorted(values)
    count = len(ordered)
    half_width = 0.98 * math.sqrt(count)
    low = max(0, math.floor(count / 2 - half_width))
    high = min(count - 1, math.ceil(count / 2 + half_width) - 1)
    quartiles = statistics.quantiles(ordered, n=4) if count > 1 else [ordered[0]] * 3
    return {"median": statistics.median(ordered), "ci_low": ordered[low], "ci_high": ordered[high],
            "q1": quartiles[0], "q3": quartiles[2], "rounds": count}
