"""Bit masks: ``pack_mask``, ``unpack_mask`` and ``mask_distances`` (EarlyBird's mask queue)."""

from __future__ import annotations

import torch

from sparseticket.ops._contracts import packed_size
from sparseticket.ops._library import define_op, register_fake
from sparseticket.ops._validate import FLOAT_DTYPES, check_float, check_int, check_tensor, require_tensors

_pack_op = define_op("pack_mask", "(Tensor mask) -> Tensor")
_unpack_op = define_op("unpack_mask", "(Tensor packed, int count) -> Tensor")
_distances_op = define_op(
    "mask_distances",
    "(Tensor importance, Tensor threshold, Tensor history, Tensor(a!)? static_runs) -> (Tensor, Tensor)",
)


@register_fake("pack_mask")
def _pack_fake(mask):
    return mask.new_empty(packed_size(mask.numel()), dtype=torch.uint8)


@register_fake("unpack_mask")
def _unpack_fake(packed, count):
    return packed.new_empty(count, dtype=torch.bool)


@register_fake("mask_distances")
def _distances_fake(importance, threshold, history, static_runs):
    packed = importance.new_empty(packed_size(importance.numel()), dtype=torch.uint8)
    return packed, importance.new_empty(history.shape[0], dtype=torch.int64)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (flattened, N elements) into uint8[ceil(N/8)]: bit j of byte i is 8i+j."""
    check_tensor("mask", mask, (torch.bool,))
    return _pack_op(mask)


def unpack_mask(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Unpack uint8[ceil(n/8)] from ``pack_mask`` into bool[n]."""
    check_tensor("packed", packed, (torch.uint8,))
    n = check_int("n", n, 0)
    if packed.dim() != 1 or packed.numel() != packed_size(n):
        raise ValueError(f"packed must be 1-D with ceil(n/8) = {packed_size(n)} bytes for n = {n}, "
                         f"got shape {tuple(packed.shape)}")
    return _unpack_op(packed, n)


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
    threshold_tensor = _threshold_tensor(threshold, importance.device)
    require_tensors(history=history)
    if static_runs is not None:
        require_tensors(static_runs=static_runs)
    packed, counts = _distances_op(importance.detach(), threshold_tensor, history, static_runs)  # op checks
    return packed, counts.to(torch.float32) / max(importance.numel(), 1)
