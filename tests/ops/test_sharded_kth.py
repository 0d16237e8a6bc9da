"""sharded_kth_value on 2 gloo processes equals kth_value of the concatenation (random, ties,
all-equal values, a rank with no elements, NaN), and bad k fails on every rank."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import init_gloo, spawn

from sparseticket.ops import kth_value, sharded_kth_value


def _cases() -> dict[str, list[list[torch.Tensor]]]:
    """Per case: the shards of each rank."""
    generator = torch.Generator().manual_seed(7)
    random = [torch.randn(1000, generator=generator), torch.randn(37, 5, generator=generator)]
    ties = [torch.randint(0, 4, (300,), generator=generator).float() for _ in range(3)]
    return {
        "random": [[random[0][:600]], [random[0][600:], random[1]]],
        "ties": [[ties[0], ties[1]], [ties[2]]],
        "all_equal": [[torch.full((50,), 0.25)], [torch.full((70,), 0.25)]],
        "empty_rank": [[torch.randn(80, generator=generator)], []],
        "nan_and_inf": [[torch.tensor([float("nan"), 1.0, -float("inf")])], [torch.tensor([-0.0, 0.0, 3.0])]],
    }


def _worker(rank: int, port: int, results) -> None:
    init_gloo(rank, port)
    try:
        answers = {}
        for name, shards in _cases().items():
            total = sum(t.numel() for r in shards for t in r)
            for k in sorted({0, total // 3, total // 2, total - 1}):
                value = sharded_kth_value(shards[rank], k).item()
                answers[(name, k)] = "nan" if value != value else value
        try:
            sharded_kth_value(_cases()["random"][rank], 10**6)
            answers["bad_k"] = "no error"
        except ValueError as error:
            answers["bad_k"] = str(error)
        results[rank] = answers
    finally:
        dist.destroy_process_group()


def test_two_ranks_agree_with_single_process():
    results = spawn(_worker)
    assert results[0] == results[1]
    for name, shards in _cases().items():
        everything = [t for rank in shards for t in rank]
        total = sum(t.numel() for t in everything)
        for k in sorted({0, total // 3, total // 2, total - 1}):
            expected = kth_value(everything, k).item()
            assert results[0][(name, k)] == ("nan" if expected != expected else expected), (name, k)
    assert "k must be in [0" in results[0]["bad_k"] and results[0]["bad_k"] == results[1]["bad_k"]


def test_needs_an_initialised_group():
    with pytest.raises((RuntimeError, ValueError)):
        sharded_kth_value([torch.ones(3)], 0)
