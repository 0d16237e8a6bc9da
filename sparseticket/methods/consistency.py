"""Cross-rank consistency: under torch.distributed every rank must hold the same mask.

``assert_same_on_all_ranks`` all-reduces a checksum (MIN and MAX of one int64) and raises on
every rank when they differ, so a silent divergence becomes an error instead of a hang or a
different ticket per rank. It is a no-op without an initialised process group.

If one rank fails before reaching the check, the others get a RuntimeError as soon as its
process exits, or at the latest after the process group's ``timeout`` (pass a short one, e.g.
``dist.init_process_group(..., timeout=timedelta(minutes=5))``): never an endless hang.

Ranks that train *different* models on purpose (one sweep configuration per rank, say) turn the
checks off: ``with rank_checks(False): ...`` or ``SPARSETICKET_RANK_CHECKS=0`` in the environment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from sparseticket.methods.distributed import collective_device

_enabled: bool | None = None  # None: follow SPARSETICKET_RANK_CHECKS (on unless "0")


def rank_checks_enabled() -> bool:
    """Whether the methods compare their masks across ranks."""
    if _enabled is not None:
        return _enabled
    return os.environ.get("SPARSETICKET_RANK_CHECKS", "1") != "0"


@contextlib.contextmanager
def rank_checks(enabled: bool) -> Iterator[None]:
    """Turn the cross-rank checks on or off inside the block (every rank must do the same)."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = previous


def checksum(tensor: torch.Tensor) -> int:
    """A position-sensitive int64 checksum of a tensor's bytes."""
    data = tensor.detach().reshape(-1).contiguous().view(torch.uint8).to(torch.int64)
    weights = torch.arange(1, data.numel() + 1, dtype=torch.int64, device=data.device) % 65521 + 1
    return int((data * weights).sum().item() % (1 << 61))


def assert_same_on_all_ranks(tensor: torch.Tensor, what: str) -> None:
    """Raise RuntimeError on every rank if ``tensor`` differs between ranks (collective call)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    if not rank_checks_enabled():
        return
    device = collective_device(tensor.device)
    value = checksum(tensor)
    low = torch.tensor([value], dtype=torch.int64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if int(low.item()) != int(high.item()):
        raise RuntimeError(f"{what} differs between ranks (rank {dist.get_rank()} checksum {value}); "
                           "were the parameters or the data different on some rank? (If each rank "
                           "trains its own model on purpose, turn this check off: "
                           "sparseticket.methods.consistency.rank_checks(False) or "
                           "SPARSETICKET_RANK_CHECKS=0)")
