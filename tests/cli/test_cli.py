"""The command line end to end on tiny settings: files, contents, resume, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from sparseticket.cli.main import main
from sparseticket.methods import Ticket

TINY = ["--width", "8", "--finetune-epochs", "2", "--no-progress", "--threads", "1"]


def _run_dir(out):
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


@pytest.mark.parametrize("method, extra", [
    ("worm", ["--epochs", "6", "--queue", "3"]),
    ("gemminer", ["--epochs", "6", "--density", "0.2"]),
    ("imp", ["--density", "0.6", "--round-epochs", "1", "--rewind-step", "3"]),
    ("snip", ["--density", "0.1"]),
])
def test_search_writes_a_complete_run_folder(tmp_path, capsys, method, extra):
    assert main(["search", "--method", method, "--out", str(tmp_path), *TINY, *extra]) == 0
    run = _run_dir(tmp_path)
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.csv", "ticket.safetensors", "summary.md", "layer_density.png"} <= names
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == method and config["width"] == 8
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert rows[-1]["phase"] == "finetune" and rows[-1]["epoch"] == "2"
    ticket = Ticket.load(run / "ticket.safetensors")
    assert ticket.method == method
    if method != "worm":
        assert abs(ticket.density() - config["density"]) < 0.02
    else:
        assert "mask_distance.png" in names and ticket.channel_masks
    assert (run / "layer_density.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test accuracy" in capsys.readouterr().out


def test_compare_writes_table_and_plots(tmp_path, capsys):
    assert main(["compare", "--methods", "earlybird", "random", "--densities", "0.2", "0.05",
                 "--epochs", "5", "--queue", "3", "--out", str(tmp_path), *TINY]) == 0
    table = (tmp_path / "compare.md").read_text()
    assert table.count("| random |") == 2 and "| earlybird |" in table
    assert (tmp_path / "accuracy_vs_density.png").exists() and (tmp_path / "mask_distance.png").exists()
    for run in (p for p in tmp_path.iterdir() if p.is_dir()):
        assert (run / "summary.md").exists() and (run / "layer_density.png").exists()
    assert "| random |" in capsys.readouterr().out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "kernels: C++ on" in out and "threads:" in out


@pytest.mark.parametrize("arguments, words", [
    (["search", "--model", "alexnet"], "unknown model 'alexnet'"),
    (["search", "--data", "cifar10"], "cifar10"),
    (["search", "--data", "cifar10", "--data-dir", "/nonexistent"], "/nonexistent"),
    (["search", "--method", "magic"], "invalid choice: 'magic'"),
    (["search", "--epochs", "many"], "invalid int value: 'many'"),
    (["search", "--density", "1.5"], "--density must be in (0, 1]"),
    (["search", "--resume", "/nonexistent/run"], "no config.json there"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["search", "--method", "gemminer", "--epochs", "5"], "leaves no freezing round"),  # period 5: no round
    (["search", "--method", "imp", "--rewind-step", "99ep"], "rewind"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, arguments, words):
    out = tmp_path / "runs"
    result = subprocess.run([sys.executable, "-m", "sparseticket", *arguments, "--out", str(out)]
                            if arguments[0] == "search" else [sys.executable, "-m", "sparseticket", *arguments],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not out.exists(), "a refused configuration must write nothing"  # issue 26: no run folder left behind


def test_device_flag(tmp_path):
    arguments = ["search", "--method", "random", "--density", "0.3", "--out", str(tmp_path), *TINY]
    assert main([*arguments, "--device", "cpu"]) == 0
    expected = 0 if torch.cuda.is_available() else 2  # no GPU: one clear error, nothing trained
    assert main([*arguments, "--device", "cuda"]) == expected
