"""Reference for the bit-mask ops: packing, unpacking, and mask distances."""

from __future__ import annotations

import torch

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (flattened) into uint8[ceil(N/8)]; bit j of byte i is element 8i+j."""
    flat = mask.reshape(-1)
    count = flat.numel()
    padded = torch.zeros(((count + 7) // 8) * 8, dtype=torch.uint8, device=mask.device)
    padded[:count] = flat.to(torch.uint8)
    weights = _BIT_WEIGHTS.to(mask.device)
    return (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_mask(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Unpack uint8[ceil(count/8)] into bool[count] (inverse of ``pack_mask``)."""
    weights = _BIT_WEIGHTS.to(packed.device)
    bits = (packed.view(-1, 1) & weights) != 0
    return bits.reshape(-1)[:count].clone()


def popcount_bytes(values: torch.Tensor) -> torch.Tensor:
    """Number of set bits of each uint8 value, as int64."""
    weights = _BIT_WEIGHTS.to(values.device)
    return ((values.unsqueeze(-1) & weights) != 0).sum(dim=-1)


def mask_distances(
    importance: torch.Tensor,
    threshold: torch.Tensor,
    history: torch.Tensor,
    static_runs: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack ``importance > threshold`` and count differing bits against each history row.

    Returns ``(packed uint8[B], counts int64[K])``; updates ``static_runs`` (int32[N]) in place:
    +1 where the new bit equals the newest history row's bit, else 0 (all 0 when K == 0).
    The comparison is done in fp32.
    """
    flat = importance.reshape(-1).to(torch.float32)
    bits = flat > threshold.to(torch.float32)
    packed = pack_mask(bits)
    if history.shape[0] == 0:
        counts = torch.zeros(0, dtype=torch.int64, device=importance.device)
    else:
        counts = popcount_bytes(history ^ packed.unsqueeze(0)).sum(dim=1)
    if static_runs is not None:
        if history.shape[0] == 0:
            static_runs.zero_()
        else:
            newest = unpack_mask(history[-1], flat.numel())
            same = newest == bits
            static_runs.copy_(torch.where(same, static_runs + 1, 0).to(torch.int32))
    return packed, counts
