"""Reference for ``kth_value`` and ``digit_histogram``: select by sorting, count by bincount."""

from __future__ import annotations

import torch


def kth_value(values: list[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th smallest (0-based) of all elements, NaN ordered last (as ``torch.sort``)."""
    flat = torch.cat([tensor.reshape(-1) for tensor in values])
    return torch.sort(flat).values[k].clone()


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2^32) whose order is the float order of ``values`` (every NaN last)."""
    as_float = values.float().reshape(-1)
    bits = as_float.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    keys = torch.where(bits >= 0x80000000, bits ^ 0xFFFFFFFF, bits | 0x80000000)
    return torch.where(torch.isnan(as_float), torch.full_like(keys, 0xFFFFFFFF), keys)


def digit_histogram(values: list[torch.Tensor], shift: int, prefix: int) -> torch.Tensor:
    """int64 counts [256] of the 8-bit digit ``(key >> shift) & 255`` of the order keys, over the
    elements whose higher digits ``key >> (shift + 8)`` equal ``prefix`` (all elements at shift 24)."""
    keys = order_keys(torch.cat([tensor.reshape(-1) for tensor in values]))
    if shift < 24:
        keys = keys[(keys >> (shift + 8)) == prefix]
    return torch.bincount((keys >> shift) & 0xFF, minlength=256)
