"""``sharded_kth_value``: the exact k-th smallest over tensors sharded across ranks.

Each rank holds part of the values (as under FSDP). Four rounds, one 8-bit digit of the
order-preserving 32-bit keys each (most significant first): every rank counts the digit among its
elements that match the prefix chosen so far (``digit_histogram``: one pass of the fused C++ or
Triton kernel), the 256 counts are all-reduced, and every rank picks the same digit. No rank ever
sees another rank's values; each round moves 2 KB.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from sparseticket.ops._validate import FLOAT_DTYPES, check_int, check_tensor_list
from sparseticket.ops.kth import DIGIT_SHIFTS, digit_histogram


def key_value(key: int) -> float:
    """The float32 whose order key is ``key``."""
    bits = key ^ 0x80000000 if key & 0x80000000 else key ^ 0xFFFFFFFF
    signed = bits - (1 << 32) if bits >= 1 << 31 else bits
    return torch.tensor([signed], dtype=torch.int32).view(torch.float32).item()


def _group_device(group) -> torch.device:
    """Where a rank without values keeps its counts: the GPU for NCCL, else the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _select(histogram: torch.Tensor, rank: int) -> tuple[int, int]:
    """(digit whose bin holds ``rank``, rank within that bin)."""
    cumulative = torch.cumsum(histogram.cpu(), 0)
    digit = int(torch.searchsorted(cumulative, torch.tensor(rank, dtype=cumulative.dtype), right=True))
    below = int(cumulative[digit - 1]) if digit else 0
    return digit, rank - below


def sharded_kth_value(
    values: torch.Tensor | Sequence[torch.Tensor],
    k: int,
    *,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """The k-th smallest (0-based) of all elements held by all ranks of ``group``; every rank
    gets the same 0-d float32 tensor (on its values' device). ``k`` must be the same on every
    rank; a rank may hold no element. NaN orders last, as in ``torch.sort``."""
    tensors = [values] if isinstance(values, torch.Tensor) else list(values)
    tensors = [t for t in check_tensor_list("values", tensors, FLOAT_DTYPES) if t.numel()] if tensors else []
    device = tensors[0].device if tensors else _group_device(group)
    count = torch.tensor([sum(t.numel() for t in tensors)], dtype=torch.int64, device=device)
    dist.all_reduce(count, group=group)
    total = int(count.item())
    if total == 0:
        raise ValueError("values must hold at least one element on some rank")
    rank = check_int("k", k, 0, total)
    prefix = 0
    for shift in DIGIT_SHIFTS:
        if tensors:
            histogram = digit_histogram(tensors, shift, prefix)
        else:
            histogram = torch.zeros(256, dtype=torch.int64, device=device)
        dist.all_reduce(histogram, group=group)
        digit, rank = _select(histogram, rank)
        prefix = prefix << 8 | digit
    return torch.tensor(key_value(prefix), dtype=torch.float32, device=device)
