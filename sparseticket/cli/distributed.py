"""The CLI under ``torchrun``: one process per GPU (or per CPU worker), PyTorch's own process group.

``torchrun --nproc_per_node N -m sparseticket search ...`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; ``start`` then initialises the default process group (NCCL for CUDA, gloo for
the CPU) with a bounded timeout, so that a rank that dies or errors makes the others fail
within that time instead of hanging. Under ``torchrun --max-restarts N`` a restarted attempt gets
its own namespace of torchrun's store, and the run folder's checkpoint makes it go on where the
failed attempt stopped (the command is the same, so the run folder is too).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from sparseticket.driver.processes import Processes, global_mean
from sparseticket.methods.teardown import end_distributed, exit_now

__all__ = ["DEFAULT_TIMEOUT_S", "Processes", "exit_if_threads_left", "global_mean", "launched_by_torchrun",
           "start", "stop"]

DEFAULT_TIMEOUT_S = 600


def launched_by_torchrun() -> bool:
    """True when the environment names more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Processes:
    """Initialise the process group from torchrun's environment (no-op for one process)."""
    if not launched_by_torchrun():
        return Processes(device=torch.device(device))
    if timeout_s <= 0:
        raise ValueError(f"--dist-timeout must be > 0 seconds, got {timeout_s}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs on this node: "
                             "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local_rank)
        placement = torch.device("cuda", local_rank)
    else:
        placement = torch.device("cpu")
    if not dist.is_initialized():
        backend, timeout = "nccl" if device == "cuda" else "gloo", datetime.timedelta(seconds=timeout_s)
        store = _attempt_store(timeout)
        if store is None:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                    world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
    return Processes(dist.get_rank(), dist.get_world_size(), placement)


def _attempt_store(timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun's agent store, a view of it private to this attempt (``torchrun --max-restarts``
    restarts every worker on the same store, whose keys from the failed attempt, e.g. gloo's peer
    addresses, would otherwise be read by the new one: "Connection refused"); None otherwise."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"sparseticket/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def stop(finished: bool) -> bool:
    """Tear the process group down and free it (no-op without one); True once none of its threads is left.

    ``finished``: every rank got to the end, so wait for them all first (rank 0 writes files last).
    After an error, tear down at once: a barrier could only hang. Freeing the group, not only
    destroying it, is what keeps gloo's threads from aborting the process at interpreter exit
    (see ``sparseticket.methods.teardown``)."""
    return end_distributed(finished)


def exit_if_threads_left(released: bool, processes: Processes, code: int) -> None:
    """Leave with ``code`` at once (``os._exit``) when this run's group could not be freed.

    Its threads would otherwise run into interpreter finalization, where they can abort the process
    (SIGABRT) after a run that succeeded; every file has been written and closed by then."""
    if processes.distributed and not released:
        exit_now(code)
