"""``sparseticket reproduce --small``: the plumbing of the claims runner (never its scientific outcome).

One small run (2 seeds, tiny model) is shared by the tests: claims.md has every claim row with an
allowed verdict, each unit's JSON exists, a rerun retrains nothing, the plots exist; plus the
verdict rule on hand-made paired differences and the flag checks.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sparseticket.reporting.stats import paired_test
from sparseticket.studies import claims

ROWS = ("1", "2a", "2b", "3", "4")
PLOTS = ("found_epochs.png", "accuracy_at_pruning.png", "accuracy_vs_search.png", "barrier_vs_density.png",
         "barrier_vs_k.png")
UNITS = ("found-seed000", "found-seed001", "gemminer-seed000", "gemminer-seed001", "random-seed000",
         "random-seed001", "imp-k0-seed000", "imp-k0-seed001", "imp-k1ep-seed000", "imp-k1ep-seed001")


def _reproduce(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sparseticket", "reproduce", "--small", "--workers", "1", "--threads", "1",
               "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=out.parent)  # not the source tree


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("claims")
    run = _reproduce(out)
    assert run.returncode == 0, run.stdout + run.stderr
    return out, run


def _table_rows(text: str) -> dict[str, list[str]]:
    """Claim number -> the cells of its row in claims.md's table."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ROWS:
            rows[cells[0]] = cells
    return rows


def test_claims_md_has_every_claim_with_an_allowed_verdict(small_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = small_run
    text = (out / "claims.md").read_text()
    rows = _table_rows(text)
    assert sorted(rows) == sorted(ROWS)
    for _number, cells in rows.items():
        assert len(cells) == 6, cells  # number | claim | source | measured | p-value | verdict
        verdict = re.match(r"\*\*([\w ]+)\*\*", cells[5])
        assert verdict is not None and verdict.group(1) in claims.VERDICTS, cells[5]
        assert re.fullmatch(r"n/a|< 1e-4|[0-9.e-]+", cells[4]), cells[4]
        assert "n = 2" in cells[3], cells[3]  # 2 seeds per claim under --small
    for heading in ("1. Found epoch", "2. Accuracy at pruning", "3. Gem-Miner", "4. IMP stability"):
        assert f"## {heading}" in text


def test_every_unit_is_cached_as_json_with_its_settings(small_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, run = small_run
    files = sorted(path.stem for path in (out / "results").glob("*.json"))
    assert files == sorted(UNITS)
    for name in UNITS:
        record = json.loads((out / "results" / f"{name}.json").read_text())
        assert record["unit"] == name
        assert record["settings"]["width"] == claims.SMALL["width"]
        assert f"{name}:" in run.stdout  # a progress line per unit


def test_found_unit_records_the_methods_and_trigger(small_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = small_run
    record = json.loads((out / "results" / "found-seed000.json").read_text())
    result = record["result"]
    assert record["settings"]["convention"] == "original"  # the claims run the authors' semantics
    # the untrained model's mask opens the queue: the first full queue is one epoch before QUEUE
    first = claims.QUEUE - 1
    for method in ("earlybird", "worm"):
        entry = result[method]
        assert entry["found_epoch"] is None or first <= entry["found_epoch"] <= claims.SMALL["epochs"]
        assert len(entry["max_distance"]) == entry["epochs_trained"]
        assert None not in entry["max_distance"]  # epoch 1's mask already has the untrained one to compare with
        for key in ("accuracy_at_pruning", "accuracy_at_pruning_recalibrated"):
            assert 0 <= entry["at_pruning"][key] <= 1
    trigger = result["worm"]["trigger_epoch"]
    assert trigger is None or first <= trigger <= claims.SMALL["epochs"]


def test_imp_unit_reaches_the_density_and_measures_barriers(
        small_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = small_run
    result = json.loads((out / "results" / "imp-k1ep-seed000.json").read_text())["result"]
    rounds = result["rounds"]
    # rate 0.8 under --small, open_lth's count (convention "original"): round 1 prunes
    # n + 1 = ceil(0.8 * (S + O)) + 1 of the S weights IMP masks (O: the dense output layer's weights,
    # counted as remaining; no ties among random floats); round 2 is floored at the target density
    from sparseticket.methods.weights import prunable_weights
    from sparseticket.studies.claims.units import build_model

    model = build_model(claims.Settings(width=claims.SMALL["width"]), 0)
    masked = sum(weight.tensor.numel() for weight in prunable_weights(model, ("output",)))
    output = sum(weight.tensor.numel() for weight in prunable_weights(model)) - masked
    after_one = (masked - math.ceil(0.8 * (masked + output)) - 1) / masked
    assert [r["density"] for r in rounds] == pytest.approx([1.0, after_one, 0.05], abs=1 / masked)
    per_epoch = 4  # 256 images in batches of 64
    assert result["rewind_iterations"] == per_epoch
    assert [r["epochs"] for r in rounds] == [6, 5, 5]  # later rounds train k..T only
    assert [r["barrier"]["target_density"] for r in rounds] == [1.0, 0.2, 0.05]
    for entry in rounds:
        errors = entry["barrier"]["errors"]
        assert entry["barrier"]["barrier"] == pytest.approx(max(errors) - (errors[0] + errors[-1]) / 2)


def test_rerun_skips_finished_units(small_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = small_run
    stamps = {path.name: path.stat().st_mtime_ns for path in (out / "results").glob("*.json")}
    rerun = _reproduce(out)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"cached: {len(UNITS)} of {len(UNITS)} units" in rerun.stdout
    assert not re.search(r"^\[\d+/\d+\]", rerun.stdout, re.MULTILINE)  # no unit ran
    assert {path.name: path.stat().st_mtime_ns for path in (out / "results").glob("*.json")} == stamps
    assert _table_rows((out / "claims.md").read_text()).keys() == set(ROWS)


def test_plots_exist(small_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = small_run
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_changed_settings_invalidate_the_cache(tmp_path: Path) -> None:
    settings = claims.Settings(width=4)
    path = tmp_path / "unit.json"
    path.write_text(json.dumps({"settings": claims.settings_record(settings), "result": {}}))
    assert claims.load_cached(path, settings) is not None
    assert claims.load_cached(path, claims.Settings(width=8)) is None
    path.write_text("{truncated")
    assert claims.load_cached(path, settings) is None


@pytest.mark.parametrize(("worm", "earlybird", "required", "expected"), [
    ([5, 6, 5, 6, 5], [9, 11, 10, 12, 10], 5, "holds"),   # earlier on every seed, p << 0.05
    ([9, 11, 10, 12, 10], [5, 6, 5, 6, 5], 5, "fails"),   # later on every seed
    ([8, 8, 8, 8, 8], [8, 8, 8, 8, 8], 5, "fails"),       # never earlier: mean difference 0
    ([7, 9, 8, 10, 6], [8, 8, 9, 9, 8], 5, "inconclusive"),  # slightly earlier on average, p > 0.05
    ([5, 6], [9, 11], 5, "inconclusive"),                # too few seeds
    ([6, 7, 8, 9, 10], [8, 9, 10, 11, 12], 5, "holds"),  # every difference -2: zero variance
])
def test_directional_verdict(worm: list[int], earlybird: list[int], required: int, expected: str) -> None:
    verdict, reason = claims.directional_verdict(paired_test(worm, earlybird), -1, required)
    assert verdict == expected, reason


def test_barrier_rounds_match_the_imp_densities() -> None:
    settings = claims.Settings()  # rate 0.2 down to 0.05: 14 rounds; 0.8**7 = 0.21 is the closest to 0.2
    assert claims.prunes_to(0.05, 0.2) == 14
    assert [claims.barrier_round(d, settings) for d in (1.0, 0.2, 0.05)] == [0, 7, 14]


@pytest.mark.parametrize(("flags", "message"), [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--epochs", "5"], "--epochs must be >= 6"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--rewind-steps", "0", "junk"], "--rewind-steps"),
    (["--rewind-steps", "0", "40ep"], "--rewind-steps"),
])
def test_bad_flags_name_the_flag(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        claims.main(["--small", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
