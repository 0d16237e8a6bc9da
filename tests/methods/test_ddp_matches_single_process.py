"""Every method under DistributedDataParallel (2 gloo processes) against a single-process run with
the same global batch.

Each rank gets half of every global batch. Under DDP, BatchNorm normalises with each rank's own
half (SyncBatchNorm is GPU-only), so the single-process reference computes the same global batch
as two "ghost" halves: loss = (loss(half 0) + loss(half 1)) / 2. That is the same math as DDP's
gradient average; the masks, found epochs and tickets must then be identical on both ranks and
equal to the reference. The baselines use an MLP without BatchNorm, so their reference is the
plain single-process call on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import WORLD, init_gloo, spawn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sparseticket.builtin.data import load_digits_split
from sparseticket.builtin.models import vgg_small
from sparseticket.methods import (
    IMP,
    WORM,
    EarlyBird,
    GemMiner,
    grasp_ticket,
    magnitude_ticket,
    random_ticket,
    smart_ratio_ticket,
    snip_ticket,
    synflow_ticket,
)

GLOBAL_BATCH = 64
STEPS_PER_EPOCH = 4
METHODS = ("earlybird", "worm", "gemminer", "imp")
BASELINES = ("random", "smart_ratio", "magnitude", "snip", "grasp", "synflow")


def _global_batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batches of one epoch: a fixed slice of the digits training set, reshuffled by epoch."""
    data = load_digits_split()
    count = GLOBAL_BATCH * STEPS_PER_EPOCH
    order = torch.randperm(count, generator=torch.Generator().manual_seed(epoch))
    images, labels = data.train_images[:count][order], data.train_labels[:count][order]
    return [(images[start:start + GLOBAL_BATCH], labels[start:start + GLOBAL_BATCH])
            for start in range(0, count, GLOBAL_BATCH)]


def _halves(batch: tuple[torch.Tensor, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    half = GLOBAL_BATCH // WORLD
    return [(batch[0][r * half:(r + 1) * half], batch[1][r * half:(r + 1) * half]) for r in range(WORLD)]


def _loss_fn(network: nn.Module, rank: int | None) -> Callable[[tuple], torch.Tensor]:
    """Loss of one global batch: this rank's half under DDP, the mean over both halves in one process."""
    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        halves = _halves(batch)
        if rank is not None:
            images, labels = halves[rank]
            return nn.functional.cross_entropy(network(images), labels)
        return sum(nn.functional.cross_entropy(network(images), labels) for images, labels in halves) / WORLD

    return loss


def _channel_method(name: str, rank: int | None) -> dict:
    torch.manual_seed(0)
    model = vgg_small(width=8)
    method = (WORM if name == "worm" else EarlyBird)(model, queue=3, eps=0.3)
    network = DistributedDataParallel(model) if rank is not None else model
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)
    loss = _loss_fn(network, rank)
    for epoch in range(8):
        for batch in _global_batches(epoch):
            optimizer.zero_grad()
            loss(batch).backward()
            method.after_backward()  # under DDP: on the all-reduced gradients
            optimizer.step()
        if method.epoch_end():
            break
    return {"found": method.found_epoch, "trigger": getattr(method, "trigger_epoch", None),
            "history": method.history, "masks": {k: v.tolist() for k, v in method.channel_mask().items()},
            "gammas": torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters()
                                 if n.endswith("weight") and p.dim() == 1]).tolist()}


def _gemminer(rank: int | None) -> dict:
    torch.manual_seed(0)
    model = vgg_small(width=8)
    miner = GemMiner(model, density=0.3, epochs=4, period=1, lr=0.5, seed=0)
    network = DistributedDataParallel(model) if rank is not None else model  # scores: its one parameter
    loss = _loss_fn(network, rank)
    for epoch in range(1, 5):
        for batch in _global_batches(epoch):
            loss(batch).backward()
            miner.step()
        miner.epoch_end()
    ticket = miner.ticket()
    return {"density": miner.density, "masks": {k: v.tolist() for k, v in ticket.masks.items()},
            "scores": torch.cat([v.reshape(-1) for v in ticket.scores.values()]).tolist()}


def _imp(rank: int | None) -> dict:
    torch.manual_seed(0)
    model = vgg_small(width=8)
    network = DistributedDataParallel(model) if rank is not None else model
    imp = IMP(network, rate=0.3)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9)
    imp.capture(optimizer)
    loss = _loss_fn(network, rank)
    densities = []
    for _round_index in range(2):
        for epoch in range(2):
            for batch in _global_batches(epoch):
                optimizer.zero_grad()
                loss(batch).backward()
                imp.after_backward()
                optimizer.step()
                imp.after_step()
        densities.append(imp.prune_round())
        imp.rewind()
    return {"densities": densities, "masks": {k: v.tolist() for k, v in imp.ticket().masks.items()}}


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))


def _baselines(rank: int | None) -> dict:
    model = _mlp()
    network = DistributedDataParallel(model) if rank is not None else model
    batch = _global_batches(0)[0]
    local = _halves(batch)[rank] if rank is not None else batch  # each rank scores its half
    loss = nn.functional.cross_entropy
    tickets = {
        "random": random_ticket(network, 0.2, seed=3),
        "smart_ratio": smart_ratio_ticket(network, 0.2, seed=3),
        "magnitude": magnitude_ticket(network, 0.2),
        "snip": snip_ticket(network, loss, local, 0.2),
        "grasp": grasp_ticket(network, loss, local, 0.2),
        "synflow": synflow_ticket(network, (1, 1, 8, 8), 0.2, iterations=10),
    }
    return {name: {k: v.tolist() for k, v in ticket.masks.items()} for name, ticket in tickets.items()}


def _run_all(rank: int | None) -> dict:
    results = {name: _channel_method(name, rank) for name in ("earlybird", "worm")}
    results["gemminer"] = _gemminer(rank)
    results["imp"] = _imp(rank)
    results["baselines"] = _baselines(rank)
    return results


def _worker(rank: int, port: int, results) -> None:
    init_gloo(rank, port)
    try:
        results[rank] = _run_all(rank)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs() -> dict:
    """{0: rank 0's results, 1: rank 1's, "single": the single-process reference}."""
    results = spawn(_worker)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _run_all(None)
    finally:
        torch.set_num_threads(threads)
    return {0: results[0], 1: results[1], "single": single}


@pytest.mark.parametrize("method", METHODS)
def test_every_rank_reaches_the_same_masks(runs, method):
    rank0, rank1 = runs[0][method], runs[1][method]
    assert rank0["masks"] == rank1["masks"]
    assert {k: v for k, v in rank0.items() if k != "masks"} == {k: v for k, v in rank1.items() if k != "masks"}


@pytest.mark.parametrize("method", ("earlybird", "worm"))
def test_channel_methods_match_the_single_process_run(runs, method):
    ddp, single = runs[0][method], runs["single"][method]
    assert single["found"] is not None, "the reference run must find a ticket for the test to mean anything"
    assert ddp["found"] == single["found"] and ddp["trigger"] == single["trigger"]
    assert ddp["masks"] == single["masks"]
    assert ddp["history"] == single["history"]  # Hamming distances: exact
    assert ddp["gammas"] == pytest.approx(single["gammas"], rel=1e-5, abs=1e-6)


def test_gemminer_matches_the_single_process_run(runs):
    ddp, single = runs[0]["gemminer"], runs["single"]["gemminer"]
    assert ddp["density"] == single["density"] == pytest.approx(0.3, abs=1e-3)
    assert ddp["masks"] == single["masks"]
    assert ddp["scores"] == pytest.approx(single["scores"], rel=1e-5, abs=1e-6)


def test_imp_matches_the_single_process_run(runs):
    ddp, single = runs[0]["imp"], runs["single"]["imp"]
    assert ddp["densities"] == single["densities"]
    assert ddp["masks"] == single["masks"]


@pytest.mark.parametrize("baseline", BASELINES)
def test_baselines_match_the_single_process_run(runs, baseline):
    rank0, rank1, single = (runs[key]["baselines"][baseline] for key in (0, 1, "single"))
    assert rank0 == rank1 == single
    assert list(single) == ["1.weight", "3.weight", "5.weight"]  # bare names, not "module.1.weight"
