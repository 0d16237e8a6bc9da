"""Benchmark fixtures: real layer shapes as tensors, fixed seeds, two CPU threads."""

from __future__ import annotations

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
