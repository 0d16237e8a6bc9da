"""RunConfig, a run folder's ``config.json``: written and read back unchanged; a file this version
cannot use is a ValueError that names it."""

from __future__ import annotations

import json

import pytest

from sparseticket.driver.config import RunConfig, is_channel_method, method_choices


def test_round_trip_and_defaults(tmp_path):
    config = RunConfig(method="imp", density=0.2, rewind_step="2ep", data_dir="/data", augment=True)
    assert RunConfig.from_json(config.to_json()) == config
    path = tmp_path / "config.json"
    path.write_text(config.to_json())
    assert RunConfig.read(path) == config
    assert RunConfig.from_json(json.dumps({"model": "mlp"})) == RunConfig(model="mlp")  # missing keys: defaults
    assert RunConfig.from_json(json.dumps({"lr": 1, "rewind_step": 500})) == RunConfig(lr=1.0, rewind_step="500")


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object, got list"),
    ('{"method": "imp", "colour": "red"}', "unknown keys: colour"),
    ('{"width": "8", "augment": 1, "seed": true}', "wrong type: augment (1), seed (True), width ('8')"),
    ('{"data_dir": 3}', "wrong type: data_dir (3)"),
])
def test_a_bad_file_is_a_value_error_naming_it(tmp_path, text, words):
    path = tmp_path / "run" / "config.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ValueError) as raised:
        RunConfig.read(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and words in message
    with pytest.raises(ValueError, match="config"):
        RunConfig.from_json(text)


def test_a_missing_file_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=f"^{tmp_path / 'config.json'}: "):
        RunConfig.read(tmp_path / "config.json")


def test_method_names():
    assert {"earlybird", "worm", "gemminer", "imp", "random"} <= set(method_choices())
    assert is_channel_method("worm") and not is_channel_method("gemminer")


def test_a_field_added_later_leaves_old_run_folder_names_alone():
    # 0f238bd0: the default config's hash before `samples` existed (run folders written then keep their names)
    assert RunConfig().digest() == "0f238bd0"
    assert RunConfig(samples=None).digest() == RunConfig().digest()
    assert RunConfig(samples=20_000).digest() != RunConfig().digest()  # away from its default it counts
