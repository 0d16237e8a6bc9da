"""What the methods need from ``torch.distributed``: unwrapping DDP, the world, mean all-reduces,
and FSDP2's sharded weights (DTensor checks, local shards, the collectives of IMP's sharded path).

Every method accepts the model wrapped in ``DistributedDataParallel`` (or ``DataParallel``) as
well as the bare module: it works on ``model.module`` so that names, masks and tickets are the
same as in a single-process run. Without an initialised process group everything here but the
FSDP2 collectives is a no-op; those run only on sharded weights.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper, else ``model``."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of ranks of ``group`` (1 without an initialised process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def collective_device(tensor_device: torch.device) -> torch.device:
    """Where a collective's buffer must live: the current GPU under NCCL, else ``tensor_device``."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor_device


def all_reduce_mean_(tensors: Sequence[torch.Tensor], group: dist.ProcessGroup | None = None) -> None:
    """Average ``tensors`` in place over the ranks, as DDP averages gradients (one collective on a
    flat copy). No-op in a single-process run."""
    size = world_size(group)
    if size == 1 or not tensors:
        return
    dtype = tensors[0].dtype
    flat = torch.cat([tensor.detach().reshape(-1).to(dtype) for tensor in tensors])
    device = collective_device(flat.device)
    reduced = flat.to(device)
    dist.all_reduce(reduced, group=group)
    reduced = (reduced / size).to(flat.device)
    start = 0
    with torch.no_grad():
        for tensor in tensors:
            count = tensor.numel()
            tensor.copy_(reduced[start:start + count].view_as(tensor))
            start += count


# ------------------------------------------------------------ FSDP2 (DTensor shards along dim 0)
def is_dtensor(value: object) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (FSDP2's parameters). No DTensor exists
    before that module is imported: looking it up spares single-process runs its import."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)


def check_sharded(names: list[str], weights: list[torch.Tensor], owner: str) -> bool:
    """True when the weights are FSDP2 ``DTensor``s: then all must be, ``Shard(0)`` on one 1-D
    mesh over every rank of the default process group in rank order (FSDP2's default). ``owner``
    (the method) starts the error messages."""
    sharded = [is_dtensor(weight) for weight in weights]
    if not any(sharded):
        return False
    from torch.distributed.tensor import Shard

    if not all(sharded):
        raise ValueError(f"{owner}: {names[sharded.index(False)]} is not sharded while other weights are "
                         "(DTensor): call fully_shard on the root module too")
    mesh = weights[0].device_mesh
    for name, weight in zip(names, weights):
        if weight.device_mesh != mesh or tuple(weight.placements) != (Shard(0),):
            raise ValueError(f"{owner} supports FSDP2 sharding along dim 0 on one 1-D mesh; {name} has "
                             f"placements {tuple(weight.placements)} on {weight.device_mesh}")
    if mesh.ndim != 1 or mesh.mesh.tolist() != list(range(dist.get_world_size())):
        raise ValueError(f"{owner}: the FSDP2 mesh must hold every rank in rank order (no HSDP or "
                         f"sub-mesh), got {mesh}")
    return True


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a weight or its gradient); any other tensor itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def local_grads(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(this rank's gradient shards, their masks) of the weights that have a gradient."""
    pairs = [(local_shard(weight.grad), mask) for weight, mask in zip(weights, masks) if weight.grad is not None]
    return [grad for grad, _ in pairs], [mask for _, mask in pairs]


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The model's FSDP2 modules (their ``reshard()`` makes edits of the shards visible)."""
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]


def reshard(modules: Sequence[nn.Module]) -> None:
    """Register the sharded parameters again: after a forward without backward, FSDP2 keeps the
    root's weights unsharded and would not see edits of the shards."""
    for module in modules:
        module.reshard()


def all_gather_stacked(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape on all ranks), stacked in rank order (collective)."""
    local = tensor.to(collective_device(tensor.device))
    pieces = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, local)
    return torch.stack(pieces).to(tensor.device)


def all_reduce_int(value: int, device: torch.device) -> int:
    """Sum of ``value`` over the ranks (collective)."""
    total = torch.tensor([value], dtype=torch.int64, device=collective_device(device))
    dist.all_reduce(total)
    return int(total.item())


def tie_quotas(below: torch.Tensor, ties: torch.Tensor, count: int) -> list[int]:
    """This rank's number of ties to prune per layer, from every rank's per-layer counts of
    entries below the threshold and of ties; the global order is layer, then rank (FSDP2 gives
    rank r the rows after those of ranks < r), then row-major within the shard (collective)."""
    gathered = all_gather_stacked(torch.stack([below, ties]).cpu())  # [world, 2, layers]
    ties_left = count - int(gathered[:, 0].sum())
    ordered = gathered[:, 1].t().reshape(-1)  # (layer, rank) in the global order
    quotas = (ties_left - (ordered.cumsum(0) - ordered)).clamp(min=0).minimum(ordered)
    return quotas.view(-1, dist.get_world_size())[:, dist.get_rank()].tolist()


def sharded_tie_quotas(scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], threshold: torch.Tensor,
                       count: int) -> list[int]:
    """``tie_quotas`` of this rank's score shards against the global ``threshold``: how many of
    each layer's surviving entries equal to it this rank prunes, so that all ranks together prune
    exactly ``count`` entries in global index order (collective)."""
    below = torch.stack([(score < threshold).sum() for score in scores]).to(torch.int64)
    ties = torch.stack([((score == threshold) & mask).sum() for score, mask in zip(scores, masks)])
    return tie_quotas(below, ties.to(torch.int64), count)


def gather_rows(local: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The bool tensor whose dim-0 shards (rank order, ``rows[r]`` rows on rank r) the ranks hold."""
    padded = torch.zeros((max(rows), *local.shape[1:]), dtype=torch.uint8, device=local.device)
    padded[:local.shape[0]] = local
    pieces = all_gather_stacked(padded)
    return torch.cat([piece[:count] for piece, count in zip(pieces, rows)]).bool()


def gather_full_masks(names: Sequence[str], masks: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                      owner: str) -> list[torch.Tensor]:
    """Every layer's full mask, gathered from the ranks' dim-0 shards (collective); each must
    come out in its (full) weight's shape."""
    rows = all_gather_stacked(torch.tensor([mask.shape[0] for mask in masks], dtype=torch.int64))
    full = [gather_rows(mask, rows[:, index].tolist()) for index, mask in enumerate(masks)]
    for name, mask, weight in zip(names, full, weights):
        if mask.shape != weight.shape:
            raise RuntimeError(f"{owner}: gathered mask of {name} has shape {tuple(mask.shape)}, "
                               f"expected {tuple(weight.shape)}")
    return full
