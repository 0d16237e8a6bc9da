"""Bit masks: ``pack_mask``, ``unpack_mask`` and ``mask_distances`` (EarlyBird's mask queue)."""

from __future__ import annotations

import torch

from sparseticket.ops._library import define_op
from sparseticket.ops._validate import (
    FLOAT_DTYPES,
    check_contiguous,
    check_float,
    check_int,
    check_tensor,
)

_pack_op = define_op("pack_mask", "(Tensor mask) -> Tensor")
_unpack_op = define_op("unpack_mask", "(Tensor packed, int count) -> Tensor")
_distances_op = define_op(
    "mask_distances",
    "(Tensor importance, Tensor threshold, Tensor history, Tensor(a!)? static_runs) -> (Tensor, Tensor)",
)


def packed_size(count: int) -> int:
    """Bytes needed to pack ``count`` bits."""
    return (count + 7) // 8


@torch.library.register_fake("sparseticket::pack_mask")
def _pack_fake(mask):
    return mask.new_empty(packed_size(mask.numel()), dtype=torch.uint8)


@torch.library.register_fake("sparseticket::unpack_mask")
def _unpack_fake(packed, count):
    return packed.new_empty(count, dtype=torch.bool)


@torch.library.register_fake("sparseticket::mask_distances")
def _distances_fake(importance, threshold, history, static_runs):
    packed = importance.new_empty(packed_size(importance.numel()), dtype=torch.uint8)
    return packed, importance.new_empty(history.shape[0], dtype=torch.int64)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (flattened, N elements) into uint8[ceil(N/8)]: bit j of byte i is 8i+j."""
    check_tensor("mask", mask, (torch.bool,))
    return _pack_op(mask.contiguous())


def unpack_mask(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Unpack uint8[ceil(n/8)] from ``pack_mask`` into bool[n]."""
    check_tensor("packed", packed, (torch.uint8,))
    n = check_int("n", n, 0)
    if packed.dim() != 1 or packed.numel() != packed_size(n):
        raise ValueError(f"packed must be 1-D with ceil(n/8) = {packed_size(n)} bytes for n = {n}, "
                         f"got shape {tuple(packed.shape)}")
    return _unpack_op(packed.contiguous(), n)


def _threshold_tensor(threshold: object, device: torch.device) -> torch.Tensor:
    if isinstance(threshold, torch.Tensor):
        check_tensor("threshold", threshold, FLOAT_DTYPES, device)
        if threshold.numel() != 1:
            raise ValueError(f"threshold must be a number or a one-element tensor, "
                             f"got shape {tuple(threshold.shape)}")
        return threshold.reshape(()).to(torch.float32)
    return torch.tensor(check_float("threshold", threshold), dtype=torch.float32, device=device)


def mask_distances(
    importance: torch.Tensor,
    threshold: float | torch.Tensor,
    history: torch.Tensor,
    *,
    static_runs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack ``importance > threshold`` and measure it against a queue of older packed masks.

    ``history`` is uint8 ``[K, ceil(N/8)]`` (rows from ``pack_mask``, newest last, K may be 0).
    Returns ``(packed, distances)`` with ``distances[k]`` = differing bits / N (float32, K values).
    If ``static_runs`` (int32 ``[N]``) is given it is updated in place: +1 where the new bit
    equals the newest row's bit, else 0 (all 0 when K == 0). One pass over ``importance``;
    ``threshold`` may be a 0-d tensor on the device (e.g. from ``kth_value``), so no sync.
    """
    check_tensor("importance", importance, FLOAT_DTYPES)
    device = importance.device
    count = importance.numel()
    threshold_tensor = _threshold_tensor(threshold, device)
    check_tensor("history", history, (torch.uint8,), device)
    if history.dim() != 2 or history.shape[1] != packed_size(count):
        raise ValueError(f"history must have shape [K, ceil(N/8) = {packed_size(count)}] for "
                         f"N = {count} importance values, got {tuple(history.shape)}")
    if static_runs is not None:
        check_tensor("static_runs", static_runs, (torch.int32,), device)
        if static_runs.numel() != count or static_runs.dim() != 1:
            raise ValueError(f"static_runs must have shape ({count},), got {tuple(static_runs.shape)}")
        check_contiguous("static_runs", static_runs)
    packed, counts = _distances_op(
        importance.detach().contiguous(), threshold_tensor, history.contiguous(), static_runs)
    return packed, counts.to(torch.float32) / max(count, 1)
