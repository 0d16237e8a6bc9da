"""What the command line says (issue 26): the folder to resume after Ctrl-C, no "nan" distance on
the first epoch, a search that never draws its ticket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sparseticket.cli.main import main

TINY = ["--width", "4", "--finetune-epochs", "1", "--no-progress", "--threads", "1"]


def test_ctrl_c_names_the_run_folder_to_resume(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sparseticket", "search", "--method", "worm", "--epochs", "30", *TINY,
               "--out", str(tmp_path)]
    # SIG_DFL in the child: a SIGINT ignored by the test's process (as a pytest-xdist worker may have
    # it) is inherited across exec, and Python would then never raise KeyboardInterrupt; a shell gives SIG_DFL
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in process.stdout:
            if line.startswith("search 2/"):
                process.send_signal(signal.SIGINT)
                break
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    (run_dir,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    assert process.returncode == 130, stderr
    assert f"--resume {run_dir}" in stderr and "RUN_DIR" not in stderr, stderr


def test_the_first_epoch_prints_no_nan_distance_and_an_undrawn_ticket_is_said_plainly(tmp_path, capsys) -> None:
    # eps 0: the masks never settle within it in 3 epochs, so no ticket epoch is found
    assert main(["search", "--method", "earlybird", "--epochs", "3", "--queue", "2", "--eps", "0", *TINY,
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.startswith("search 1/3"))
    assert "nan" not in first and "no mask distance yet (first mask)" in first
    assert "max distance" in next(line for line in out.splitlines() if line.startswith("search 2/3"))
    (run_dir,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    summary = (run_dir / "summary.md").read_text()
    assert "None" not in summary and "the masks never settled within eps" in summary, summary


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """Issue 26: tqdm's carriage returns filled log files. Without --no-progress, a redirected stderr
    gets no bar (stdout keeps its one line per epoch)."""
    command = [sys.executable, "-m", "sparseticket", "search", "--method", "random", "--density", "0.2",
               "--width", "4", "--finetune-epochs", "2", "--threads", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "it/s" not in done.stderr, done.stderr[-2000:]
    assert "finetune 2/2" in done.stdout
