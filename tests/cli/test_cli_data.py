"""The command line on MNIST-1D and on the user's own .npz / IDX files: end to end on tiny settings, and the
flags' one-line errors."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from sparseticket.cli.main import main
from sparseticket.methods import Ticket

TINY = ["--finetune-epochs", "1", "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """MNIST-1D caches into the test's folder, never the user's."""
    monkeypatch.setenv("SPARSETICKET_CACHE", str(tmp_path / "cache"))


def _run_dir(out):
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def test_search_worm_on_mnist1d_cnn1d(tmp_path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    for owner, name in ((socket.socket, "connect"), (socket, "create_connection"), (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)  # generated offline: no network needed
    out = tmp_path / "runs"
    assert main(["search", "--data", "mnist1d", "--model", "cnn1d", "--method", "worm", "--epochs", "4", "--queue",
                 "2", "--width", "8", "--samples", "500", "--out", str(out), *TINY]) == 0
    run = _run_dir(out)
    assert run.name.startswith("worm-cnn1d-mnist1d-s0-")
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == "mnist1d" and config["samples"] == 500 and config["width"] == 8
    ticket = Ticket.load(run / "ticket.safetensors")
    assert ticket.method == "worm" and set(ticket.channel_masks) == {"1", "4", "7"}  # the three BatchNorm1d
    text = capsys.readouterr().out
    assert "cnn1d / mnist1d" in text and "channels kept" in text


def test_cnn1d_takes_32_channels_unless_width_is_given(tmp_path) -> None:
    from sparseticket.cli.main import _config, build_parser

    parse = build_parser().parse_args
    assert _config(parse(["search", "--model", "cnn1d", "--data", "mnist1d"])).width == 32
    assert _config(parse(["search", "--model", "cnn1d", "--width", "8"])).width == 8
    assert _config(parse(["search", "--model", "resnet1d"])).width == 16
    assert _config(parse(["search"])).width == 16 and _config(parse(["search"])).samples is None


def test_search_on_an_npz_file(tmp_path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x=rng.normal(size=(120, 16)).astype(np.float32), y=np.arange(120) % 3)
    out = tmp_path / "runs"
    assert main(["search", "--data", "npz", "--data-dir", str(path), "--model", "cnn1d", "--method", "imp",
                 "--density", "0.6", "--round-epochs", "1", "--width", "4", "--out", str(out), *TINY]) == 0
    config = json.loads((_run_dir(out) / "config.json").read_text())
    assert config["data"] == "npz" and config["data_dir"] == str(path)


@pytest.mark.parametrize("arguments, words", [
    (["--data", "mnist1d", "--samples", "0"], "samples (--samples) must be an integer >= 10"),
    (["--data", "mnist1d", "--samples", "many"], "invalid int value: 'many'"),
    (["--samples", "100"], "only dataset 'mnist1d' takes it, not 'digits'"),
    (["--data", "mnist1d", "--augment"], "--augment (random affine and noise"),
    (["--data", "mnist1d", "--model", "vgg", "--samples", "100"], "model 'vgg' takes images"),
    (["--data", "npz"], "'npz' needs data_dir"),
    (["--data", "idx", "--data-dir", "/nonexistent"], "/nonexistent"),
])
def test_bad_data_flags_are_one_line_and_exit_code_2(tmp_path, capsys, arguments, words) -> None:
    out = tmp_path / "runs"
    try:
        code = main(["search", *arguments, "--out", str(out), "--threads", "1"])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    error = capsys.readouterr().err
    assert code == 2 and words in error and error.count("\n") == 1, error
    assert not out.exists()  # nothing written
