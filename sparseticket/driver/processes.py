"""Where this process stands in a (possibly distributed) run: rank, world size, device."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """Where this process stands: its rank among ``world_size`` and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the files and the log."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def global_mean(total: float, count: int, processes: Processes) -> float:
    """``total / count`` summed over every process (one small all-reduce when distributed)."""
    if not processes.distributed:
        return total / max(count, 1)
    device = processes.device if processes.device.type == "cuda" else torch.device("cpu")
    sums = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    return float(sums[0]) / max(float(sums[1]), 1.0)
