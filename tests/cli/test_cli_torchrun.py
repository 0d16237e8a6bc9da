"""The CLI under torchrun (2 gloo processes): sharded global batches, files and log written once by
rank 0, and a run interrupted with Ctrl-C resumes to the same result as an uninterrupted one."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparseticket.builtin.data import load_digits_split
from sparseticket.methods import Ticket

RUN_FLAGS = ["--method", "worm", "--epochs", "6", "--finetune-epochs", "2", "--width", "8", "--no-progress",
             "--dist-timeout", "60"]


def test_union_of_rank_shards_is_the_single_process_global_batch():
    data = load_digits_split()
    single = [labels for _, labels in data.sharded_loader(64, seed=5)]
    ranks = [[(images, labels) for images, labels in data.sharded_loader(64, seed=5, rank=r, world_size=2)]
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    index = {image.numpy().tobytes(): position for position, image in enumerate(data.train_images)}
    for step, expected in enumerate(data.sharded_loader(64, seed=5)):
        expected_rows = sorted(index[image.numpy().tobytes()] for image in expected[0])
        got_rows = sorted(index[image.numpy().tobytes()] for r in range(2) for image in ranks[r][step][0])
        assert got_rows == expected_rows, step
    assert torch.equal(single[0], next(iter(data.sharded_loader(64, seed=5)))[1])  # seeded: repeatable
    assert not torch.equal(single[0], next(iter(data.sharded_loader(64, seed=6)))[1])


@pytest.mark.parametrize("arguments, words", [
    ({"batch_size": 63, "seed": 0, "rank": 0, "world_size": 2}, "multiple of the number of processes"),
    ({"batch_size": 64, "seed": 0, "rank": 2, "world_size": 2}, "rank must be in [0, world_size)"),
])
def test_sharded_loader_rejects_bad_shards(arguments, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_digits_split().sharded_loader(**arguments)


def _torchrun(arguments: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "sparseticket",
            *arguments]


OUTSIDE_THE_SOURCE_TREE = Path(__file__).parent  # `python -m` puts the working folder first on sys.path


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _run(arguments: list[str]) -> str:
    done = subprocess.run(_torchrun(arguments), capture_output=True, text=True, env=_environment(), timeout=300,
                          cwd=OUTSIDE_THE_SOURCE_TREE)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _interrupt_after(arguments: list[str], line_start: str) -> None:
    """Start torchrun and press Ctrl-C (SIGINT to the whole process group) once ``line_start`` is logged."""
    process = subprocess.Popen(_torchrun(arguments), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=_environment(), start_new_session=True,
                               cwd=OUTSIDE_THE_SOURCE_TREE)
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if line.startswith(line_start):
                os.killpg(process.pid, signal.SIGINT)
                break
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert any(line.startswith(line_start) for line in seen), "".join(seen)[-3000:]


def _only_run_folder(out: Path) -> Path:
    (folder,) = out.iterdir()
    return folder


def _metrics(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_torchrun_search_writes_once_and_resumes_after_ctrl_c(tmp_path):
    whole = _run(["search", *RUN_FLAGS, "--out", str(tmp_path / "whole")])
    assert whole.count("search 1/6") == 1 and whole.count("fine-tune epochs") == 1  # rank 0 logs alone
    reference = _only_run_folder(tmp_path / "whole")
    assert sorted(path.name for path in reference.iterdir() if path.name.startswith(".")) == []  # no temp files

    _interrupt_after(["search", *RUN_FLAGS, "--out", str(tmp_path / "cut")], "search 3/6")
    cut = _only_run_folder(tmp_path / "cut")
    assert not (cut / "metrics.csv").exists(), "the interrupted run must not have finished"
    interrupted_at = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert interrupted_at["phase"] == "search" and 2 <= interrupted_at["epoch"] < 6  # 2 if cut mid-save

    resumed = _run(["search", "--resume", str(cut), "--no-progress", "--dist-timeout", "60"])
    assert f"resuming at search epoch {interrupted_at['epoch'] + 1} ({cut.name})" in resumed
    assert _metrics(cut) == _metrics(reference)
    found, expected = Ticket.load(cut / "ticket.safetensors"), Ticket.load(reference / "ticket.safetensors")
    assert expected.channel_masks and found.channel_masks.keys() == expected.channel_masks.keys()
    assert all(torch.equal(found.channel_masks[k], expected.channel_masks[k]) for k in expected.channel_masks)


def test_global_batch_must_split_evenly_before_anything_is_written(tmp_path):
    from sparseticket.cli.distributed import Processes
    from sparseticket.cli.search import Search
    from sparseticket.driver.config import RunConfig

    with pytest.raises(ValueError, match="must be a multiple of the number of processes"):
        Search(RunConfig(batch_size=63), tmp_path / "run", processes=Processes(rank=0, world_size=2)).run()
    assert not (tmp_path / "run").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _same_run(folder: Path, reference: Path) -> None:
    """Equal metrics and a byte-identical ticket."""
    assert _metrics(folder) == _metrics(reference)
    assert (folder / "ticket.safetensors").read_bytes() == (reference / "ticket.safetensors").read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The run folder of an uninterrupted 1-node x 2-process run."""
    out = tmp_path_factory.mktemp("whole")
    _run(["search", *RUN_FLAGS, "--out", str(out)])
    return _only_run_folder(out)


def test_a_killed_rank_restarts_under_max_restarts_and_ends_with_the_same_ticket(tmp_path, uninterrupted):
    """torchrun --max-restarts 1: rank 0 is SIGKILLed right after its 3rd checkpoint (fault injection
    fires in the first attempt only); torchrun restarts both ranks, which agree on that checkpoint,
    resume from it and end with the uninterrupted run's ticket, byte for byte."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1",
               "-m", "sparseticket", "search", *RUN_FLAGS, "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=OUTSIDE_THE_SOURCE_TREE,
                          env={**_environment(), "SPARSETICKET_TEST_KILL_AT": "after-write:checkpoint.pt:3"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = _only_run_folder(tmp_path)
    assert f"resuming at search epoch 4 ({folder.name})" in done.stdout, done.stdout[-3000:]
    _same_run(folder, uninterrupted)
    assert sorted(path.name for path in folder.iterdir() if path.name.startswith(".")) == []


def test_two_nodes_of_one_process_give_the_ticket_of_one_node_of_two(tmp_path, uninterrupted):
    """Two torchrun launchers (--nnodes 2, c10d rendezvous on localhost), one process each: the same
    world of 2 ranks, so the same global batches, run folder and ticket as 1 node x 2 processes."""
    endpoint = f"127.0.0.1:{_free_port()}"
    launchers = []
    for _ in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "two-nodes",
                   "-m", "sparseticket", "search", *RUN_FLAGS, "--out", str(tmp_path)]
        launchers.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          env=_environment(), cwd=OUTSIDE_THE_SOURCE_TREE))
    outputs = []
    try:
        for launcher in launchers:
            outputs.append(launcher.communicate(timeout=300)[0])
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
    assert [launcher.returncode for launcher in launchers] == [0, 0], "".join(outputs)[-4000:]
    assert sum(output.count("search 1/6") for output in outputs) == 1  # global rank 0 alone logs
    _same_run(_only_run_folder(tmp_path), uninterrupted)
