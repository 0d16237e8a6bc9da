"""Hostile input at the command line: every case exits 2 with one line naming the cause (and the
file), writes nothing it should not, and never turns a diverged run into a ticket."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparseticket.cli.main import main
from sparseticket.files import lock_folder

TINY = ["--width", "4", "--finetune-epochs", "1", "--no-progress", "--threads", "1"]


def _error_line(capsys) -> str:
    """The one line the command printed on stderr (asserting there is exactly one, and no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparseticket: error"), err
    return err[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize(("flags", "named"), [
    (["--width", "0"], "--width must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be"),
    (["--epochs", "-1"], "--epochs must be"),
    (["--finetune-epochs", "-2"], "--finetune-epochs must be"),
    (["--lr", "nan"], "--lr must be"),
])
def test_bad_flags_are_refused_before_anything_is_written(flags, named, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["search", "--method", "earlybird", *TINY, "--out", str(out), *flags]) == 2
    assert named in _error_line(capsys)
    assert not out.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished EarlyBird run folder (3 epochs)."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["search", "--method", "earlybird", "--epochs", "3", *TINY, "--out", str(out)]) == 0
    (run,) = [path for path in out.iterdir() if path.is_dir()]
    return run


def test_resume_refuses_flags_that_would_be_ignored_and_changes_nothing(finished_run, capsys):
    before = _snapshot(finished_run)
    assert main(["search", "--resume", str(finished_run), "--lr", "0.3", "--preset", "hard", "--no-progress"]) == 2
    line = _error_line(capsys)
    assert "--lr 0.3 (the run has 0.05)" in line and "--preset hard" in line
    assert str(finished_run / "config.json") in line
    assert _snapshot(finished_run) == before
    # a flag equal to the run's own value is not a conflict
    assert main(["search", "--resume", str(finished_run), "--lr", "0.05", "--no-progress"]) == 0
    assert _snapshot(finished_run) == before


def test_a_checkpoint_of_another_method_is_refused_naming_the_file(finished_run, tmp_path, capsys):
    other = tmp_path / "runs"
    assert main(["search", "--method", "imp", "--epochs", "2", "--round-epochs", "1", "--density", "0.5", *TINY,
                 "--width", "8", "--out", str(other)]) == 0
    (imp_run,) = [path for path in other.iterdir() if path.is_dir()]
    run = tmp_path / "mixed"
    shutil.copytree(finished_run, run)
    (run / "summary.md").unlink()  # unfinished: --resume reads the checkpoint
    shutil.copy(imp_run / "checkpoint.pt", run / "checkpoint.pt")
    capsys.readouterr()
    assert main(["search", "--resume", str(run), "--no-progress"]) == 2
    line = _error_line(capsys)
    assert f"{run / 'checkpoint.pt'} does not fit this run" in line and "size mismatch" in line


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["search", "--method", "earlybird", "--epochs", "3", *TINY, "--out", str(blocker / "runs")]) == 2
    assert "a_file" in _error_line(capsys)


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    """A file size limit (as a full disk would) makes torch's writer fail inside its C++ stream."""
    command = [sys.executable, "-m", "sparseticket", "search", "--method", "imp", "--epochs", "2", "--round-epochs",
               "1", "--density", "0.5", *TINY, "--width", "16", "--out", str(tmp_path / "runs")]

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    done = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)  # the installed package
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparseticket: error: cannot write "), done.stderr
    assert not [path.name for path in (tmp_path / "runs").rglob(".*.tmp")]  # no temporary file left


@pytest.mark.parametrize(("flags", "named"), [
    (["--method", "earlybird", "--epochs", "4", "--lr", "1e6"], "search 1/4: the training loss is nan"),
    (["--method", "worm", "--epochs", "4", "--lr", "1e6"], "search 1/4: the training loss is nan"),
    (["--method", "gemminer", "--epochs", "6", "--finetune-lr", "1e6"], "fine-tune 1/1: the training loss is nan"),
])
def test_a_diverged_run_exits_2_and_writes_no_ticket(flags, named, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["search", *TINY, "--out", str(out), *flags]) == 2
    assert named in _error_line(capsys)
    (run,) = [path for path in out.iterdir() if path.is_dir()]
    assert not (run / "summary.md").exists()
    if flags[1] != "gemminer":  # Gem-Miner's search finished: its searched ticket is kept for --resume
        assert not (run / "ticket.safetensors").exists()


@pytest.mark.parametrize("method", ["earlybird", "worm"])
def test_one_epoch_of_earlybird_or_worm_finishes_with_its_plot(method, tmp_path):
    out = tmp_path / "runs"
    assert main(["search", "--method", method, "--epochs", "1", *TINY, "--out", str(out)]) == 0
    (run,) = [path for path in out.iterdir() if path.is_dir()]
    assert (run / "mask_distance.png").stat().st_size > 0 and (run / "summary.md").exists()
    assert main(["search", "--resume", str(run), "--no-progress"]) == 0  # and --resume reads it back


def _run_folder(out: Path) -> Path:
    (run,) = [path for path in out.iterdir() if path.is_dir()]
    return run


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_folder(tmp_path, capsys):
    """Two processes on one run folder: the second exits 2 naming the first's PID and touches nothing;
    once the holder dies (kill -9: no clean-up runs) the kernel has released the lock and --resume works."""
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "sparseticket", "search", "--method", "gemminer", "--epochs", "400", *TINY,
               "--out", str(out)]
    holder = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    try:
        for line in holder.stdout:  # the holder has the lock once it trains
            if line.startswith("search 2/"):
                break
        run = _run_folder(out)
        assert main(["search", "--resume", str(run), "--no-progress"]) == 2
        line = _error_line(capsys)
        assert f"{run} is in use by process {holder.pid}" in line
        assert holder.poll() is None  # the holder goes on
    finally:
        holder.kill()
        holder.wait()
    lock_folder(run)()  # taken and released at once: nothing of the dead holder's lock is left


def test_an_unreadable_checkpoint_falls_back_to_the_one_before_it(tmp_path, capsys):
    """checkpoint.pt truncated on disk: --resume reads checkpoint.previous.pt (the epoch before) and
    ends with the same ticket and metrics as the uninterrupted run."""
    out = tmp_path / "runs"
    assert main(["search", "--method", "imp", "--epochs", "2", "--round-epochs", "1", "--density", "0.5", *TINY,
                 "--out", str(out)]) == 0
    run = _run_folder(out)
    expected = {name: (run / name).read_bytes() for name in ("ticket.safetensors", "metrics.csv")}
    previous = torch.load(run / "checkpoint.previous.pt", weights_only=True)
    current = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (previous["phase"], previous["epoch"]) != (current["phase"], current["epoch"])
    (run / "summary.md").unlink()  # unfinished again
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["search", "--resume", str(run), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "checkpoint.pt cannot be read; resuming from checkpoint.previous.pt" in said
    assert {name: (run / name).read_bytes() for name in expected} == expected
    # both unreadable: one line naming checkpoint.pt, nothing guessed
    (run / "summary.md").unlink()
    for name in ("checkpoint.pt", "checkpoint.previous.pt"):
        (run / name).write_bytes(b"PK\x03\x04 half a zip file")
    assert main(["search", "--resume", str(run), "--no-progress"]) == 2
    assert "checkpoint.pt cannot be read" in _error_line(capsys)


def test_a_broken_config_is_one_line_naming_the_file(finished_run, tmp_path, capsys):
    run = tmp_path / "broken"
    shutil.copytree(finished_run, run)
    (run / "config.json").write_text('{"method": "earlybird", "lr": ')
    assert main(["search", "--resume", str(run), "--no-progress"]) == 2
    assert f"{run / 'config.json'}: config is not valid JSON" in _error_line(capsys)
