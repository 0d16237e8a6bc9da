"""Helpers for the tests that run 2 gloo processes on this machine."""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparseticket.methods.teardown import free_destroyed_groups

WORLD = 2


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def init_gloo(rank: int, port: int, timeout_s: float = 60.0) -> None:
    """Join the ``WORLD``-rank gloo group on ``port`` with one thread and a bounded timeout."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=timeout_s))


def _run_then_free(rank: int, worker: Callable, *args) -> None:
    """``worker(rank, *args)``, then free the group it destroyed before the rank's interpreter exits."""
    worker(rank, *args)
    # torch keeps destroyed groups referenced (DDP, DTensor caches): their gloo threads would run into
    # interpreter finalization and may abort the rank (see sparseticket.methods.teardown)
    free_destroyed_groups()


def spawn(worker: Callable, *args) -> dict:
    """Run ``worker(rank, port, results, *args)`` on every rank; returns ``results`` as a dict."""
    results = mp.Manager().dict()
    mp.spawn(_run_then_free, args=(worker, free_port(), results, *args), nprocs=WORLD, join=True)
    return dict(results)
