"""`sparseticket deploy` end to end: the files it writes and bad input as one line with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_same_outputs, digits, rebuilt, search_run, zero_channels

from sparseticket.cli.main import main
from sparseticket.methods import Ticket


def test_deploy_writes_table_report_and_export(tmp_path, capsys):
    run = search_run(tmp_path / "runs", "earlybird")
    capsys.readouterr()
    out = tmp_path / "deployed"
    assert main(["deploy", str(run), "--export", "torch", "--out", str(out), "--batch-sizes", "1", "3",
                 "--repeats", "2", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| latency batch 3 (ms) |" in printed and "torch export" in printed
    assert (out / "deploy.md").read_text().strip() in printed
    report = json.loads((out / "deploy.json").read_text())
    assert report["kind"] == "channel" and report["error"] <= 1e-5 and report["export"]["error"] <= 1e-5
    assert set(report["deployed"]["latency_ms"]) == {"1", "3"}
    assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]  # atomic writes left nothing
    ticket = Ticket.load(run / "ticket.safetensors")
    reference = rebuilt(run)
    reference.load_state_dict(torch.load(run / "searched.pt", weights_only=True)["model"])
    program = torch.export.load(out / "model.pt2")
    # the VGG has no coupled channels: it keeps what the ticket drew (unless a layer drew none)
    counts = report["channels"]
    assert all(kept >= drawn for drawn, kept, _ in counts.values())
    if all(kept == drawn for drawn, kept, _ in counts.values()):
        assert_same_outputs(program.module(), zero_channels(reference, ticket.channel_masks), digits())


def _fake_run(folder, *, ticket: bool, summary: bool, config: str | None = None):
    folder.mkdir(parents=True)
    config = json.dumps({"method": "earlybird", "model": "vgg", "width": 8}) if config is None else config
    (folder / "config.json").write_text(config)
    if ticket:
        ticket = Ticket({}, "earlybird", channel_masks={"1": torch.ones(8, dtype=torch.bool)})
        ticket.save(folder / "ticket.safetensors")
    if summary:
        (folder / "summary.md").write_text("done\n")
    return folder


@pytest.mark.parametrize("make, flags, words", [
    (None, [], "RUN_FOLDER {path}: no such folder"),
    (lambda path: path.mkdir(), [], "not a run folder (no config.json)"),
    (lambda path: _fake_run(path, ticket=False, summary=False), [], "holds no ticket"),
    (lambda path: _fake_run(path, ticket=True, summary=False), [], "still in progress"),
    (lambda path: _fake_run(path, ticket=True, summary=True, config="{broken"), [],
     "{path}/config.json: config is not valid JSON"),
    (lambda path: _fake_run(path, ticket=True, summary=True, config='{"method": "earlybird", "colour": 1}'), [],
     "{path}/config.json: config has unknown keys: colour"),
    (None, ["--round-to", "0"], "--round-to must be >= 1, got 0"),
    (None, ["--round-to", "-8"], "--round-to must be >= 1, got -8"),
    (None, ["--export", "tflite"], "argument --export: invalid choice: 'tflite'"),
    (None, ["--batch-sizes", "0"], "--batch-sizes must be >= 1"),
])
def test_bad_input_is_one_line_naming_the_argument(tmp_path, capsys, make, flags, words):
    path = tmp_path / "run"
    if make is not None:
        make(path)
    with pytest.raises(SystemExit) if flags[:1] == ["--export"] else _no_exit() as stopped:
        code = main(["deploy", str(path), *flags])
    code = stopped.value.code if flags[:1] == ["--export"] else code
    error = capsys.readouterr().err
    assert code == 2 and words.format(path=path) in error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
