"""``kill -9`` of ``sparseticket search`` at any moment, then ``--resume``: same ticket and metrics.

Each run is a real subprocess killed by SIGKILL (no handler, no cleanup). Deterministic kill points
come from the test-only fault-injection hook ``SPARSETICKET_TEST_KILL_AT`` of
``sparseticket.files`` (mid-write: the temporary file half written, before the rename;
after-write: just after the rename); one test also kills from outside at seeded random moments.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from safetensors import safe_open

from sparseticket.cli.files import load_checkpoint, write_text
from sparseticket.cli.main import main
from sparseticket.files import KILL_AT_VARIABLE, atomic_write, remove_leftover_temporaries

TINY = ["--model", "mlp", "--width", "8", "--finetune-epochs", "2", "--no-progress", "--threads", "1"]
GEMMINER = ["search", "--method", "gemminer", "--epochs", "6", "--density", "0.2", *TINY]
IMP = ["search", "--method", "imp", "--rate", "0.5", "--density", "0.2", "--round-epochs", "3",
       "--rewind-step", "3", *TINY]
TIMEOUT_S = 180
# Subprocesses start here, so that they import the installed package (C++ kernels built), not the
# checkout's source folder that the current directory would put first on sys.path.
OUTSIDE_SOURCE_TREE = tempfile.gettempdir()


def sparseticket(arguments: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m sparseticket`` (one thread), with the kill hook set or not."""
    return subprocess.run([sys.executable, "-m", "sparseticket", *arguments], env=environment(kill_at),
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=OUTSIDE_SOURCE_TREE)


def environment(kill_at: str | None = None) -> dict[str, str]:
    """This environment, one thread, the kill hook as given."""
    env = {key: value for key, value in os.environ.items() if key != KILL_AT_VARIABLE}
    env["OMP_NUM_THREADS"] = "1"
    if kill_at is not None:
        env[KILL_AT_VARIABLE] = kill_at
    return env


def killed(arguments: list[str], kill_at: str) -> None:
    """Run and check that the hook killed it."""
    result = sparseticket(arguments, kill_at)
    assert result.returncode == -signal.SIGKILL, f"{kill_at}: exit {result.returncode}\n{result.stderr[-3000:]}"


def finished(arguments: list[str]) -> None:
    """Run and check that it finished."""
    result = sparseticket(arguments)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-3000:]}"


def run_folder(out: Path) -> Path:
    """The one run folder under ``out``."""
    (folder,) = [path for path in out.iterdir() if path.is_dir()]
    return folder


def reference(tmp_path_factory: pytest.TempPathFactory, name: str, arguments: list[str]) -> Path:
    """The run folder of an uninterrupted run, made once per test session (shared by xdist workers)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above every worker's own
    out = root / f"kill-resume-reference-{name}"
    with FileLock(str(out) + ".lock"):
        if not (out / "done").exists():
            finished([*arguments, "--out", str(out)])
            (out / "done").write_text("")
    return run_folder(out)


def metrics(run: Path) -> list[dict[str, str]]:
    """metrics.csv rows without timing columns (none today; a wall-clock column may not match)."""
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    return [{key: value for key, value in row.items() if "time" not in key and "second" not in key}
            for row in rows]


def ticket_contents(run: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The ticket file's metadata and tensors."""
    with safe_open(str(run / "ticket.safetensors"), "pt") as handle:
        return handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}


def assert_same_result(run: Path, expected: Path) -> None:
    """Same metrics and bit-identical ticket; no temporary file left behind."""
    assert metrics(run) == metrics(expected)
    metadata, tensors = ticket_contents(run)
    expected_metadata, expected_tensors = ticket_contents(expected)
    assert metadata == expected_metadata
    assert list(tensors) == list(expected_tensors)
    for key, tensor in tensors.items():
        assert tensor.dtype == expected_tensors[key].dtype and torch.equal(tensor, expected_tensors[key]), key
    assert hidden_files(run) == []


def hidden_files(run: Path) -> list[str]:
    """Names starting with a dot: only temporary files of writes are."""
    return sorted(path.name for path in run.iterdir() if path.name.startswith("."))


def checkpoint_position(run: Path) -> tuple[str, int]:
    """(phase, epoch) of the run's checkpoint."""
    state = load_checkpoint(run / "checkpoint.pt")
    return state["phase"], state["epoch"]


# ----------------------------------------------------------------- deterministic kill points
def test_kills_before_and_during_the_search(tmp_path, tmp_path_factory, capsys):
    expected = reference(tmp_path_factory, "gemminer", GEMMINER)
    command = [*GEMMINER, "--out", str(tmp_path)]

    # Killed while writing config.json, the very first file: no run folder to resume yet, and
    # --resume says so in one line (in process: it stops before any training).
    killed(command, "mid-write:config.json:1")
    run = run_folder(tmp_path)
    assert not (run / "config.json").exists() and len(hidden_files(run)) == 1
    capsys.readouterr()
    assert main(["search", "--resume", str(run)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no config.json" in lines[0], lines

    # The same command again picks the folder up; killed while writing init.pt (no checkpoint yet).
    killed(command, "mid-write:init.pt:1")
    assert (run / "config.json").exists() and not (run / "init.pt").exists()
    assert not (run / "checkpoint.pt").exists() and len(hidden_files(run)) == 1  # the old one is gone

    killed(["search", "--resume", str(run)], "after-write:checkpoint.pt:3")
    assert checkpoint_position(run) == ("search", 3) and hidden_files(run) == []

    # Killed halfway through writing epoch 5's checkpoint: epoch 4's is intact beside the half file.
    killed(["search", "--resume", str(run)], "mid-write:checkpoint.pt:2")
    assert checkpoint_position(run) == ("search", 4) and len(hidden_files(run)) == 1

    finished(["search", "--resume", str(run)])
    assert_same_result(run, expected)


def test_kills_after_the_search(tmp_path, tmp_path_factory):
    expected = reference(tmp_path_factory, "gemminer", GEMMINER)
    command = [*GEMMINER, "--out", str(tmp_path)]
    killed(command, "mid-write:ticket.safetensors:1")
    run = run_folder(tmp_path)
    assert not (run / "ticket.safetensors").exists() and checkpoint_position(run) == ("search", 6)

    # This process writes the fine-tuning's checkpoints 1 and 2: killed halfway through the 2nd.
    killed(["search", "--resume", str(run)], "mid-write:checkpoint.pt:2")
    assert checkpoint_position(run) == ("finetune", 1) and (run / "ticket.safetensors").exists()

    killed(["search", "--resume", str(run)], "mid-write:metrics.csv:1")
    assert checkpoint_position(run) == ("finetune", 2) and not (run / "metrics.csv").exists()

    finished(["search", "--resume", str(run)])
    assert_same_result(run, expected)


# ----------------------------------------------------------------- kills from outside
def test_kill_at_random_moments(tmp_path, tmp_path_factory):
    """SIGKILL from outside at a seeded random delay after a new checkpoint appeared, until the run
    finishes; IMP (its rewind point, optimizer and step count must survive)."""
    expected = reference(tmp_path_factory, "imp", IMP)
    delays = random.Random(20240611)
    command, kills = [*IMP, "--out", str(tmp_path)], 0
    for _ in range(3):
        returncode, stderr = run_and_kill(command, tmp_path, delays.uniform(0.0, 0.4))
        assert returncode in (0, -signal.SIGKILL), f"exit {returncode}\n{stderr}"
        if returncode == 0:
            break  # the kill came after the end (or no new checkpoint was due): nothing to resume
        kills += 1
        command = ["search", "--resume", str(run_folder(tmp_path))]
    else:
        finished(command)
    assert kills >= 1  # the delays are short next to the run: most land in it
    assert_same_result(run_folder(tmp_path), expected)


def run_and_kill(command: list[str], out: Path, delay: float) -> tuple[int, str]:
    """Start ``command``; once it has put a new checkpoint in place, wait ``delay`` seconds and
    SIGKILL it. Returns its exit status (0 if it finished first) and its stderr."""
    process = subprocess.Popen([sys.executable, "-m", "sparseticket", *command], env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=OUTSIDE_SOURCE_TREE)
    try:
        if wait_for_new_checkpoint(out, process):
            time.sleep(delay)
            process.kill()
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr


def checkpoint_identity(out: Path) -> tuple[int, int] | None:
    """(inode, mtime) of the checkpoint under ``out``: os.replace puts a new inode in place."""
    folders = [path for path in out.iterdir() if path.is_dir()] if out.exists() else []
    try:
        status = (folders[0] / "checkpoint.pt").stat() if folders else None
    except FileNotFoundError:
        return None
    return None if status is None else (status.st_ino, status.st_mtime_ns)


def wait_for_new_checkpoint(out: Path, process: subprocess.Popen) -> bool:
    """Wait until ``process`` has put a new checkpoint in place (True) or has ended (False)."""
    before = checkpoint_identity(out)
    deadline = time.monotonic() + TIMEOUT_S
    while checkpoint_identity(out) in (before, None):
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "no new checkpoint"
        time.sleep(0.005)
    return True


# ----------------------------------------------------------------- the pieces, in process
def test_leftover_temporaries_are_removed_and_nothing_else(tmp_path):
    names = [".checkpoint.pt.k2j_9x0a.tmp", ".ticket.safetensors.abcdefgh.tmp", ".layer_density.png.a1b2c3d4.tmp"]
    kept = ["checkpoint.pt", "notes.tmp", ".hidden", "layer_density.png"]
    for name in names + kept:
        (tmp_path / name).write_text("x")
    assert remove_leftover_temporaries(tmp_path) == sorted(names)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(kept)


def test_unreadable_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"PK\x03\x04 half a zip file")
    with pytest.raises(ValueError, match="checkpoint.pt cannot be read.*delete it"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "config.json"
    write_text(path, "old")

    def fail(temporary: str) -> None:
        Path(temporary).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and hidden_files(tmp_path) == []


@pytest.mark.parametrize("value", ["mid-write:checkpoint.pt", "during:checkpoint.pt:1", "after-write::1",
                                   "mid-write:checkpoint.pt:0"])
def test_bad_kill_hook_value_names_the_variable(tmp_path, monkeypatch, value):
    monkeypatch.setenv(KILL_AT_VARIABLE, value)
    with pytest.raises(ValueError, match=KILL_AT_VARIABLE):
        write_text(tmp_path / "a.txt", "x")


def _files(run: Path) -> dict[str, tuple[bytes, int]]:
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(run.iterdir())}


def test_wall_time_sums_every_process_and_a_finished_resume_changes_nothing(tmp_path):
    """Issue 26: summary.md showed the last process's time only, and resuming a finished run rewrote it."""
    command = [*GEMMINER, "--out", str(tmp_path)]
    killed(command, "after-write:checkpoint.pt:3")
    run = run_folder(tmp_path)
    first = json.loads((run / "wall_time.json").read_text())["seconds"]
    assert first > 0  # the killed process's time is on disk
    write_text(run / "wall_time.json", json.dumps({"seconds": first + 1000.0}))  # as if it had run 1000 s more
    finished(["search", "--resume", str(run)])
    total = json.loads((run / "wall_time.json").read_text())["seconds"]
    assert total > first + 1000.0
    assert f"| wall time | {total:.1f} s |" in (run / "summary.md").read_text()

    before = _files(run)
    result = sparseticket(["search", "--resume", str(run)])
    assert result.returncode == 0 and "already finished; nothing retrained, nothing rewritten" in result.stdout
    assert f"{total:.1f} s" in result.stdout
    assert _files(run) == before  # not a byte, not a timestamp


def test_a_run_killed_while_writing_its_plots_is_completed_by_resume(tmp_path):
    """metrics.csv is on disk but the plots and summary.md are not: the run is not finished, and
    --resume writes them (and removes the half-written temporary) instead of treating it as done."""
    killed([*GEMMINER, "--out", str(tmp_path)], "mid-write:layer_density.png:1")
    run = run_folder(tmp_path)
    assert (run / "metrics.csv").exists() and not (run / "summary.md").exists() and len(hidden_files(run)) == 1
    finished(["search", "--resume", str(run)])
    assert (run / "summary.md").exists() and (run / "layer_density.png").exists() and hidden_files(run) == []
