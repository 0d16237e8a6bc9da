"""IMP under FSDP2 (``fully_shard``) and DistributedDataParallel on 2 gloo processes: the sharded
masks, densities and tickets equal a single-process IMP's (uneven shards, a rank with an empty
shard, many tied magnitudes), checkpoints round-trip per rank, and misuse raises clear errors."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.distributed as dist
from gloo_ranks import WORLD, init_gloo, spawn
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from sparseticket.methods.imp import IMP

RATE = 0.3
STEPS = 4  # training steps per round (rounds 2 and 3; round 1 prunes at initialisation)
BATCH = 8  # global batch: each rank trains on BATCH // WORLD samples


def mlp(seed: int = 0) -> nn.Sequential:
    """Linear(16,24)-ReLU-Linear(24,13)-ReLU-Linear(13,10): 13 rows shard unevenly (7 + 6)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 13), nn.ReLU(), nn.Linear(13, 10))


def tied_model(seed: int) -> nn.Sequential:
    """Weights from {±0.5, ±1, ±2} (many ties); Linear(5,1) leaves rank 1 an empty shard."""
    model = nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 1), nn.ReLU(), nn.Linear(1, 3))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            magnitudes = torch.tensor([0.5, 1.0, 2.0])[torch.randint(0, 3, parameter.shape, generator=generator)]
            signs = torch.randint(0, 2, parameter.shape, generator=generator) * 2 - 1
            parameter.copy_(magnitudes * signs)
    return model


def shard(model: nn.Module) -> nn.Module:
    """FSDP2 as usual: one group per Linear, then the root."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            fully_shard(module)
    return fully_shard(model)


def shard_root(model: nn.Module) -> nn.Module:
    """One FSDP2 group for the whole model: the root keeps its weights unsharded after forward."""
    return fully_shard(model)


def full_state(model: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter gathered from its shards (collective) or as is."""
    return {name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().numpy().copy()
            for name, value in model.state_dict().items()}


def ticket_masks(imp: IMP) -> dict[str, np.ndarray]:
    return {name: mask.numpy().copy() for name, mask in imp.ticket().masks.items()}


def run_schedule(model: nn.Module, imp: IMP, rows: slice) -> dict:
    """Capture at step 0; round 1 prunes at initialisation, rounds 2 and 3 after STEPS SGD steps;
    each round rewinds. ``rows``: this process's part of each global batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(1)

    def train(steps: int) -> None:
        for _ in range(steps):
            inputs = torch.randn(BATCH, 16, generator=generator)[rows]
            targets = torch.randint(0, 10, (BATCH,), generator=generator)[rows]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), targets).backward()
            imp.after_backward()
            optimizer.step()
            imp.after_step()

    imp.capture(optimizer)
    densities, tickets = [], []
    for steps in (0, STEPS, STEPS):
        train(steps)
        densities.append(imp.prune_round())
        tickets.append(ticket_masks(imp))
        imp.rewind()
    rewound = full_state(model)
    train(2)
    return {"densities": densities, "tickets": tickets, "rewound": rewound, "trained": full_state(model),
            "survivors": imp.survivors(), "hyperparameters": imp.ticket().hyperparameters}


# ------------------------------------------------------------------ FSDP2 vs single process
def _fsdp_worker(rank: int, port: int, results) -> None:
    init_gloo(rank, port)
    try:
        model = shard(mlp())
        imp = IMP(model, rate=RATE)
        assert imp.sharded
        part = BATCH // WORLD
        run = run_schedule(model, imp, slice(rank * part, (rank + 1) * part))
        run["rank_0_alone_density"] = imp.density if rank == 0 else None  # not a collective: no hang
        # a per-rank checkpoint restores the masks and the captured state into a fresh sharded model
        buffer = io.BytesIO()
        torch.save(imp.state_dict(), buffer)
        buffer.seek(0)
        fresh = shard(mlp(seed=5))
        resumed = IMP(fresh, rate=RATE)
        resumed.load_state_dict(torch.load(buffer, weights_only=True),  # as the CLI loads
                                torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9))
        resumed.rewind()
        results[rank] = {
            **run,
            "local_shapes": [tuple(mask.shape) for mask in imp.masks],
            "resumed_ticket": ticket_masks(resumed),
            "resumed_rewound": full_state(fresh),
            "resumed_density": resumed.density,
        }
    finally:
        dist.destroy_process_group()


def test_fsdp_imp_equals_single_process_imp():
    results = spawn(_fsdp_worker)
    model = mlp()
    reference = run_schedule(model, IMP(model, rate=RATE), slice(None))
    assert results[0]["local_shapes"] == [(12, 16), (7, 24)]  # 24 rows: 12 + 12; 13 rows: 7 + 6
    assert results[1]["local_shapes"] == [(12, 16), (6, 24)]
    for rank in range(WORLD):
        result = results[rank]
        assert result["densities"] == reference["densities"]
        assert result["survivors"] == reference["survivors"]
        assert results[0]["rank_0_alone_density"] == reference["densities"][-1]
        assert result["hyperparameters"] == reference["hyperparameters"]
        for found, expected in zip(result["tickets"], reference["tickets"]):  # after each round
            assert list(found) == list(expected) == ["0.weight", "2.weight"]
            for name in expected:
                np.testing.assert_array_equal(found[name], expected[name], err_msg=name)
        # rewinding restores the same initial weights, pruned entries zeroed: bit for bit
        for name, expected in reference["rewound"].items():
            np.testing.assert_array_equal(result["rewound"][name], expected, err_msg=name)
        # training on half batches each: the same up to float summation order; pruned stay zero
        for name, expected in reference["trained"].items():
            np.testing.assert_allclose(result["trained"][name], expected, rtol=0, atol=1e-5, err_msg=name)
        for name, mask in reference["tickets"][-1].items():
            assert (result["trained"][name][~mask] == 0).all()
        # the per-rank checkpoint gives the same masks and rewound weights in a fresh sharded model
        assert result["resumed_density"] == reference["densities"][-1]
        for name, mask in reference["tickets"][-1].items():
            np.testing.assert_array_equal(result["resumed_ticket"][name], mask)
        for name, expected in reference["rewound"].items():
            np.testing.assert_array_equal(result["resumed_rewound"][name], expected, err_msg=name)


# ------------------------------------------------------------------ adversarial ties
TIE_CASES = [(seed, rate) for seed in range(3) for rate in (0.2, 0.3, 0.5)]
TIE_ROUNDS = 5


def _ties_worker(rank: int, port: int, results) -> None:
    init_gloo(rank, port)
    try:
        found = {}
        for seed, rate in TIE_CASES:
            model = shard(tied_model(seed))
            imp = IMP(model, rate=rate, exclude=())
            found[(seed, rate)] = {
                "local_shapes": [tuple(mask.shape) for mask in imp.masks],
                "rounds": [(imp.prune_round(), ticket_masks(imp)) for _ in range(TIE_ROUNDS)],
                "weights": full_state(model),
            }
        results[rank] = found
    finally:
        dist.destroy_process_group()


def test_fsdp_ties_and_an_empty_shard_match_single_process():
    results = spawn(_ties_worker)
    assert results[0][(0, 0.2)]["local_shapes"] == [(3, 8), (1, 5), (2, 1)]
    assert results[1][(0, 0.2)]["local_shapes"] == [(2, 8), (0, 5), (1, 1)]  # rank 1: no row of 2.weight
    for seed, rate in TIE_CASES:
        model = tied_model(seed)
        imp = IMP(model, rate=rate, exclude=())
        expected = [(imp.prune_round(), ticket_masks(imp)) for _ in range(TIE_ROUNDS)]
        for rank in range(WORLD):
            found = results[rank][(seed, rate)]
            for (density, masks), (expected_density, expected_masks) in zip(found["rounds"], expected):
                assert density == expected_density, (seed, rate)
                for name in expected_masks:
                    np.testing.assert_array_equal(masks[name], expected_masks[name], err_msg=f"{seed} {rate} {name}")
            for name, value in model.state_dict().items():
                np.testing.assert_array_equal(found["weights"][name], value.numpy(), err_msg=name)


# ------------------------------------------------------------------ DDP, resharding, misuse
def _misc_worker(rank: int, port: int, results) -> None:
    init_gloo(rank, port)
    try:
        found = {}
        # DDP: IMP(ddp_model) works on the bare module, with its names and masks
        bare = mlp()
        ddp = DistributedDataParallel(mlp())
        imp, reference = IMP(ddp, rate=RATE), IMP(bare, rate=RATE)
        found["ddp_model_is_module"] = imp.model is ddp.module and not imp.sharded
        found["ddp_names"] = (imp.names, reference.names)
        found["ddp_density"] = (imp.prune_round(), reference.prune_round())
        found["ddp_masks_equal"] = all(torch.equal(a, b) for a, b in zip(imp.masks, reference.masks))

        # root-only fully_shard keeps the weights unsharded after a forward without backward:
        # prune_round must still reach the next forward
        model, dense = shard_root(mlp()), mlp()
        imp = IMP(model, rate=0.5)
        with torch.no_grad():
            model(torch.ones(2, 16))
            imp.prune_round()
            ticket = imp.ticket()
            ticket.apply(dense)
            found["pruned_forward_equal"] = torch.equal(model(torch.ones(2, 16)), dense(torch.ones(2, 16)))

        # misuse
        late = mlp()
        imp = IMP(late)
        shard(late)
        found["late"] = _error(imp.prune_round)
        partial = mlp()
        fully_shard(partial[0])
        found["partial"] = _error(lambda: IMP(partial))
        results[rank] = found
    finally:
        dist.destroy_process_group()


def _error(function: Callable) -> str:
    try:
        function()
    except (RuntimeError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def test_ddp_model_resharding_and_misuse():
    results = spawn(_misc_worker)
    for rank in range(WORLD):
        found = results[rank]
        assert found["ddp_model_is_module"]
        names, expected_names = found["ddp_names"]
        assert names == expected_names == ["0.weight", "2.weight"]
        density, expected_density = found["ddp_density"]
        assert density == expected_density
        assert found["ddp_masks_equal"]
        assert found["pruned_forward_equal"]
        assert found["late"].startswith("RuntimeError: IMP: 0.weight is no longer the model's parameter")
        assert "create IMP after fully_shard" in found["late"]
        assert found["partial"].startswith("ValueError: IMP: 2.weight is not sharded")


@pytest.mark.parametrize("exclude", [(), ("output",)])
def test_single_process_path_unchanged(exclude):
    """Without FSDP nothing is sharded and the masks are full-shaped as before."""
    imp = IMP(mlp(), exclude=exclude)
    assert not imp.sharded
    assert [tuple(mask.shape) for mask in imp.masks] == [(24, 16), (13, 24), (10, 13)][: 3 - len(exclude)]
