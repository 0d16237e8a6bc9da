"""Global threshold over weights sharded across 2 gloo ranks: ``sharded_kth_value`` (four rounds of
a fused 256-bin digit histogram, all-reduced) against gathering every shard and ``torch.kthvalue``.

This pytest process is rank 0; a spawned peer process is rank 1 and mirrors every call. Each rank
holds half the rows of every conv/linear weight, as FSDP2 shards them, and runs one thread.
Both ways pay the same small command broadcast per call (rank 0 tells rank 1 what to run). Loopback TCP on one
machine flatters the gather (no network); across machines its bytes cost far more.

    pytest benchmarks/test_distributed.py --benchmark-only --benchmark-group-by=group
"""

from __future__ import annotations

import multiprocessing
import os
import socket

import pytest
import torch
import torch.distributed as dist
from conftest import NETWORKS, tensors_like

from sparseticket.ops import sharded_kth_value

WORLD = 2
WAYS = ("gather_kthvalue", "fused")
_EXIT = -1


def _local_shard(name: str, rank: int) -> list[torch.Tensor]:
    """This rank's rows of |w| for every conv/linear weight of network ``name``."""
    shapes = NETWORKS[name]()
    weights = tensors_like(shapes["conv"] + shapes["linear"], seed=4)
    return [weight.abs().chunk(WORLD)[rank].contiguous() for weight in weights]


def _gathered_kth(local: list[torch.Tensor], k: int) -> torch.Tensor:
    """The naive way: every rank gathers all the values, then selects."""
    flat = torch.cat([tensor.reshape(-1) for tensor in local])
    sizes = torch.tensor([flat.numel()])
    all_sizes = [torch.zeros_like(sizes) for _ in range(WORLD)]
    dist.all_gather(all_sizes, sizes)
    pieces = [torch.empty(int(size)) for size in all_sizes]
    if len({int(size) for size in all_sizes}) == 1:
        dist.all_gather(pieces, flat)
    else:  # gloo's all_gather needs equal sizes: one broadcast per rank instead
        for source, piece in enumerate(pieces):
            if source == dist.get_rank():
                piece.copy_(flat)
            dist.broadcast(piece, src=source)
    return torch.kthvalue(torch.cat(pieces), k + 1).values


def _run(way: int, local: list[torch.Tensor], k: int) -> torch.Tensor:
    return sharded_kth_value(local, k) if WAYS[way] == "fused" else _gathered_kth(local, k)


def _peer(port: int) -> None:
    """Rank 1: wait for (way, network, k) from rank 0, run the same call, until told to exit."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=1, world_size=WORLD)
    names = sorted(NETWORKS)
    shards: dict[str, list[torch.Tensor]] = {}
    command = torch.zeros(3, dtype=torch.int64)
    while True:
        dist.broadcast(command, src=0)
        way, network, k = command.tolist()
        if way == _EXIT:
            break
        name = names[network]
        local = shards.setdefault(name, _local_shard(name, 1))
        _run(way, local, k)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def peer():
    """Rank 1 in a spawned process; this process becomes rank 0."""
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        port = handle.getsockname()[1]
    process = multiprocessing.get_context("spawn").Process(target=_peer, args=(port,), daemon=True)
    process.start()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=WORLD)
    yield
    dist.broadcast(torch.tensor([_EXIT, 0, 0]), src=0)
    dist.destroy_process_group()
    process.join(timeout=60)


@pytest.mark.parametrize("way", WAYS)
def test_sharded_global_threshold(benchmark, peer, network, way):
    """Both ranks learn the exact 20%-quantile of all |w|; the fused way all-reduces 4 x 2 KB."""
    name, _ = network
    names = sorted(NETWORKS)
    local = _local_shard(name, 0)
    shapes = NETWORKS[name]()
    count = sum(torch.Size(shape).numel() for shape in shapes["conv"] + shapes["linear"])
    k = int(count * 0.2)
    benchmark.group = f"global kth value over 2 ranks, {count / 1e6:.1f}M weights ({name})"
    benchmark.extra_info["bytes_sent_per_rank"] = 4 * 256 * 8 if way == "fused" else count // WORLD * 4
    command = torch.tensor([WAYS.index(way), names.index(name), k])
    torch.set_num_threads(1)  # one thread per rank: the two ranks share the machine's cores

    def run() -> torch.Tensor:
        dist.broadcast(command, src=0)
        return _run(WAYS.index(way), local, k)

    run()  # warm-up: the peer builds its shard of this network on the first call
    result = benchmark(run)
    everything = torch.cat([weight.abs().reshape(-1) for weight in tensors_like(shapes["conv"] + shapes["linear"],
                                                                                seed=4)])
    assert result.item() == torch.kthvalue(everything, k + 1).values.item()
