"""``sharded_kth_value``: the exact k-th smallest over tensors sharded across ranks.

Each rank holds part of the values (as under FSDP). Two collectives on 65,536-bin histograms of
order-preserving 32-bit keys (top 16 bits, then low 16 bits within the chosen bin) select the
element; no rank ever sees another rank's values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from sparseticket.ops._validate import FLOAT_DTYPES, check_int, check_tensor_list

_BINS = 1 << 16


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2^32) whose order is the float order of ``values`` (NaN last)."""
    bits = values.float().reshape(-1).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    negative = bits >= 0x80000000
    keys = torch.where(negative, bits ^ 0xFFFFFFFF, bits | 0x80000000)
    return torch.where(torch.isnan(values.float().reshape(-1)), torch.full_like(keys, 0xFFFFFFFF), keys)


def key_value(key: int) -> float:
    """The float32 whose order key is ``key``."""
    bits = key ^ 0x80000000 if key & 0x80000000 else key ^ 0xFFFFFFFF
    signed = bits - (1 << 32) if bits >= 1 << 31 else bits
    return torch.tensor([signed], dtype=torch.int32).view(torch.float32).item()


def _group_device(group) -> torch.device:
    """Where a rank without values keeps its histograms: the GPU for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduced_histogram(keys: torch.Tensor, group) -> torch.Tensor:
    histogram = torch.bincount(keys, minlength=_BINS).to(torch.int64)
    dist.all_reduce(histogram, group=group)
    return histogram


def _select(histogram: torch.Tensor, rank: int) -> tuple[int, int]:
    """(bin holding ``rank``, rank within that bin)."""
    cumulative = torch.cumsum(histogram, 0)
    index = int(torch.searchsorted(cumulative, torch.tensor(rank, dtype=cumulative.dtype,
                                                            device=cumulative.device), right=True))
    below = int(cumulative[index - 1]) if index else 0
    return index, rank - below


def sharded_kth_value(
    values: torch.Tensor | Sequence[torch.Tensor],
    k: int,
    *,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """The k-th smallest (0-based) of all elements held by all ranks of ``group``; every rank
    gets the same 0-d float32 tensor. ``k`` must be the same on every rank; a rank may hold no
    element. NaN orders last, as in ``torch.sort``."""
    tensors = [values] if isinstance(values, torch.Tensor) else list(values)
    tensors = check_tensor_list("values", tensors, FLOAT_DTYPES) if tensors else []
    device = tensors[0].device if tensors else _group_device(group)
    local = torch.cat([t.detach().reshape(-1).float() for t in tensors]) if tensors else torch.empty(0, device=device)
    count = torch.tensor([local.numel()], dtype=torch.int64, device=device)
    dist.all_reduce(count, group=group)
    total = int(count.item())
    if total == 0:
        raise ValueError("values must hold at least one element on some rank")
    k = check_int("k", k, 0, total)
    keys = order_keys(local)
    high, rank_in_bin = _select(_reduced_histogram(keys >> 16, group), k)
    low, _ = _select(_reduced_histogram(keys[(keys >> 16) == high] & 0xFFFF, group), rank_in_bin)
    return torch.tensor(key_value((high << 16) | low), dtype=torch.float32)
