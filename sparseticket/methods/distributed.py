"""What the methods need from ``torch.distributed``: unwrapping DDP, the world, mean all-reduces.

Every method accepts the model wrapped in ``DistributedDataParallel`` (or ``DataParallel``) as
well as the bare module: it works on ``model.module`` so that names, masks and tickets are the
same as in a single-process run. Without an initialised process group everything here is a no-op.
"""

from __future__ import annotations

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
