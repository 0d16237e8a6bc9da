"""--preset: named overrides under explicit flags; the hard preset's rows carry the new metrics."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict

import pytest

from sparseticket.cli.main import _config, build_parser, main
from sparseticket.cli.presets import PRESETS, apply_preset
from sparseticket.driver.config import RunConfig

HARD = {"augment": True, "model": "resnet20", "width": 16, "lr": 0.05, "momentum": 0.9, "batch_size": 64,
        "epochs": 40, "finetune_epochs": 40}  # the pilot's setting, written out independently of presets.py


def _parsed(*argv: str) -> RunConfig:
    return _config(build_parser().parse_args(["search", *argv]))


def test_default_preset_is_runconfig():
    assert asdict(_parsed()) == asdict(RunConfig())
    assert asdict(_parsed("--preset", "default")) == asdict(RunConfig())


def test_hard_preset_is_the_pilot_setting():
    config = _parsed("--preset", "hard")
    assert {key: getattr(config, key) for key in HARD} == HARD
    untouched = {"ratio", "queue", "eps", "trigger", "density", "seed", "data"}
    assert all(getattr(config, key) == getattr(RunConfig(), key) for key in untouched)


def test_paper_preset_is_hard_trained_longer():
    config = _parsed("--preset", "paper")
    longer = {"epochs", "finetune_epochs"}
    assert {key: getattr(config, key) for key in HARD if key not in longer} == {k: v for k, v in HARD.items()
                                                                               if k not in longer}
    assert (config.epochs, config.finetune_epochs, config.round_epochs) == (160, 160, 160)


def test_explicit_flags_win_even_when_they_equal_the_default():
    config = _parsed("--preset", "hard", "--epochs", "30", "--model", "vgg", "--no-augment", "--width", "8")
    assert (config.epochs, config.model, config.augment, config.width) == (30, "vgg", False, 8)
    assert config.lr == 0.05 and config.batch_size == 64  # not given: the preset's
    assert _parsed("--preset", "paper", "--epo", "7").epochs == 7  # an abbreviated flag counts as given
    assert _parsed("--augment").augment is True  # without a preset too


def test_compare_applies_the_preset_to_every_method():
    arguments = build_parser().parse_args(["compare", "--preset", "hard", "--lr", "0.2", "--methods", "worm"])
    config = _config(arguments, method="worm")
    assert (config.method, config.model, config.augment, config.epochs, config.lr) == ("worm", "resnet20", True,
                                                                                        40, 0.2)


def test_unknown_preset_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["search", "--preset", "huge"])
    assert exit_info.value.code == 2 and "--preset" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--preset"):
        apply_preset(RunConfig(), "huge")
    assert set(PRESETS) == {"default", "hard", "paper"}


def test_hard_search_rows_report_distorted_accuracy_and_accuracy_at_pruning(tmp_path):
    arguments = ["search", "--method", "worm", "--preset", "hard", "--width", "4", "--epochs", "3", "--queue", "2",
                 "--finetune-epochs", "1", "--no-progress", "--threads", "1", "--out", str(tmp_path)]
    assert main(arguments) == 0
    (run,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    config = json.loads((run / "config.json").read_text())
    assert (config["augment"], config["model"], config["width"], config["epochs"]) == (True, "resnet20", 4, 3)
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    search = [row for row in rows if row["phase"] == "search"]
    finetune = [row for row in rows if row["phase"] == "finetune"]
    assert search and finetune
    for row in rows:
        assert 0 <= float(row["test_accuracy_distorted"]) <= 1
    last = search[-1]  # the drawn ticket's epoch (or the last): accuracy at pruning, raw and recalibrated
    assert 0 <= float(last["accuracy_at_pruning"]) <= 1 and 0 <= float(last["accuracy_at_pruning_recalibrated"]) <= 1
    assert all(row["accuracy_at_pruning"] == "" for row in search[:-1])  # only where the search ended


def test_plain_search_rows_have_no_distorted_accuracy(tmp_path):
    arguments = ["search", "--method", "earlybird", "--width", "4", "--epochs", "2", "--queue", "2",
                 "--finetune-epochs", "1", "--no-progress", "--threads", "1", "--out", str(tmp_path)]
    assert main(arguments) == 0
    (run,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test_accuracy_distorted" not in header and "accuracy_at_pruning_recalibrated" in header
