"""``TrainingData``: the batches a search trains on, per phase and epoch, and the split it is tested on."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from sparseticket.builtin.data import Split
from sparseticket.driver.processes import Processes

Batch = tuple[torch.Tensor, torch.Tensor]
# (phase, epoch) -> that epoch's batches; phase is "search" or "finetune", epoch counts from 0
EpochBatches = Callable[[str, int], Iterable[Batch]]

FINETUNE_SEED_OFFSET = 50_000  # the fine-tuning's data orders are other seeds than the search's
EPOCH_SEED_STRIDE = 100_003  # seed s, epoch e -> loader seed s * stride + e + 1


@dataclass
class TrainingData:
    """What the driver trains on (``batches``) and tests on (``split``'s test sets).

    ``batches(phase, epoch)`` must give the same batches for the same arguments every time (a
    resumed or rewound run replays them); ``steps_per_epoch`` is how many it gives on this process.
    ``scoring_batch(size)``: one batch for the methods that score weights on data (SNIP, GraSP).
    """

    split: Split
    batches: EpochBatches
    steps_per_epoch: int
    scoring_batch: Callable[[int], Batch] | None = None

    @classmethod
    def from_split(cls, split: Split, batch_size: int = 64, seed: int = 0,
                   processes: Processes | None = None) -> TrainingData:
        """Shuffled batches of ``split``: epoch e of seed s is the loader seeded ``s * 100003 + e + 1``
        (fine-tuning: ``+ 50000``); under several processes each rank gets its shard of each global
        batch of ``batch_size``."""
        processes = processes or Processes()
        world, rank = processes.world_size, processes.rank
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} (the global batch) must be a multiple of the number of "
                             f"processes ({world})")
        if len(split.train_labels) == 0:
            raise ValueError("the training set is empty")

        def batches(phase: str, epoch: int) -> Iterable[Batch]:
            offset = FINETUNE_SEED_OFFSET if phase == "finetune" else 0
            return split.sharded_loader(batch_size, seed * EPOCH_SEED_STRIDE + offset + epoch + 1, rank, world)

        def scoring_batch(size: int) -> Batch:
            size = max(world, size - size % world)  # a multiple of the processes: each scores its part
            return next(iter(split.sharded_loader(size, seed, rank, world)))

        per_rank = math.ceil(len(split.train_labels) / world)  # DistributedSampler pads to a multiple of world
        return cls(split, batches, math.ceil(per_rank / (batch_size // world)), scoring_batch)
