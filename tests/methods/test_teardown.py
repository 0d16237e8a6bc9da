"""``end_distributed`` frees the process group, so gloo's threads end before the interpreter does
(issue 11: a rank aborting at exit with "terminate called without an active exception")."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from gloo_ranks import init_gloo, spawn
from torch import nn

from sparseticket.methods.teardown import communication_threads, end_distributed

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads are listed from /proc")


def _train_and_gather(rank: int) -> None:
    """What the examples do that makes torch keep the group: DDP (it imports torch.distributed.nn,
    which binds the default group as a default argument) and a DTensor gathered (DTensor caches)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.nn.parallel import DistributedDataParallel

    network = DistributedDataParallel(nn.Linear(4, 2))
    network(torch.randn(3, 4)).sum().backward()
    mesh = init_device_mesh("cpu", (2,))
    full = distribute_tensor(torch.arange(8.0), mesh, [Shard(0)]).full_tensor()
    assert torch.equal(full, torch.arange(8.0)), rank


def _worker(rank: int, port: int, results) -> None:
    init_gloo(rank, port)
    _train_and_gather(rank)
    threads_while_running = communication_threads()
    released = end_distributed()
    results[rank] = {"while_running": threads_while_running, "released": released,
                     "left": communication_threads(), "initialized": dist.is_initialized()}


def test_end_distributed_joins_the_gloo_threads():
    results = spawn(_worker)
    if not any(results[rank]["while_running"] for rank in range(2)) and torch.__version__ < "2.10":
        pytest.skip(f"torch {torch.__version__}'s gloo does not name its threads: nothing to count")
    for rank in range(2):
        assert "pt_gloo_runloop" in results[rank]["while_running"], results[rank]  # the check sees them
        assert results[rank]["released"] and results[rank]["left"] == [], results[rank]
        assert not results[rank]["initialized"]


def test_end_distributed_without_a_group_is_a_no_op():
    assert not dist.is_initialized()
    end_distributed()
    end_distributed(finished=False)
    assert not dist.is_initialized()


def test_exit_now_flushes_and_keeps_the_exit_code(tmp_path):
    code = ("import sys; from sparseticket.methods.teardown import exit_now; "
            "print('written', end=''); sys.stderr.write('warned'); exit_now(3)")
    # outside the source tree: the installed package (with its C++ kernels), not the checkout's folder
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (3, "written", "warned")  # pipes are block-buffered
