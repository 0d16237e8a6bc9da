"""``sparseticket reproduce --task mnist1d``: the task's plumbing at --small size, the settings records that
keep the digits caches valid, the "not testable here" verdict on hand-made records, and the --task flag.

The scientific outcome is never asserted: the small run only checks that every unit runs through the
driver with the task's data, model and recipe and that the report and plots are written under the task's
names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparseticket.studies import claims
from sparseticket.studies.claims.runner import Unit
from sparseticket.studies.claims.settings import NOT_TESTABLE, STABLE_BARRIER
from sparseticket.studies.claims.verdicts import claim_found_epoch, claim_stability

ROWS = ("1", "2a", "2b", "3", "4")
PLOTS = ("found_epochs", "accuracy_at_pruning", "accuracy_vs_search", "barrier_vs_density", "barrier_vs_k")
UNITS = ("found-seed000", "found-seed001", "gemminer-seed000", "gemminer-seed001", "random-seed000",
         "random-seed001", "imp-k0-seed000", "imp-k0-seed001", "imp-k2ep-seed000", "imp-k2ep-seed001")
# The fields of a digits unit's settings record, as the records written before the MNIST-1D task hold them
DIGITS_RECORD_FIELDS = {"epochs", "round_epochs", "width", "batch_size", "lr", "momentum", "weight_decay",
                        "lr_schedule", "warmup_epochs", "density", "imp_rate", "score_lr", "rewind_steps",
                        "barrier_densities", "barrier_points", "split_seed", "train_limit", "convention"}


@pytest.fixture(scope="module")
def mnist1d_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, float]:
    out = tmp_path_factory.mktemp("claims-mnist1d")
    command = [sys.executable, "-m", "sparseticket", "reproduce", "--task", "mnist1d", "--small", "--workers", "1",
               "--threads", "1", "--out", str(out)]
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=out.parent)  # not the source tree
    seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stdout + run.stderr
    return out, run, seconds


def test_mnist1d_small_run_writes_its_report_plots_and_units(
        mnist1d_run: tuple[Path, subprocess.CompletedProcess, float]) -> None:
    out, run, seconds = mnist1d_run
    assert seconds < 60, f"the --small plumbing run took {seconds:.0f} s"
    text = (out / "mnist1d.md").read_text()
    assert not (out / "claims.md").exists()  # the digits report's name is left to the digits task
    assert text.startswith("# The papers' claims on MNIST-1D")
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ROWS:
            rows[cells[0]] = cells
    assert sorted(rows) == sorted(ROWS)
    for cells in rows.values():
        verdict = re.match(r"\*\*([\w ]+)\*\*", cells[5])
        assert verdict is not None and verdict.group(1) in claims.VERDICTS, cells[5]
    assert "before fine-tuning" in rows["3"][3]  # Gem-Miner's mined network, beside the fine-tuned ticket
    assert "Distorted" not in text  # MNIST-1D has no distorted test set
    for name in PLOTS:
        path = out / f"mnist1d_{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({path.name})" in text  # the report links the task's plots by their names
    assert sorted(path.stem for path in (out / "results").glob("*.json")) == sorted(UNITS)
    assert json.loads((out / "wall_time.json").read_text())["seconds"] > 0
    assert "--task mnist1d" in run.stdout


def test_mnist1d_units_run_the_task(mnist1d_run: tuple[Path, subprocess.CompletedProcess, float]) -> None:
    out, _, _ = mnist1d_run
    record = json.loads((out / "results" / "imp-k2ep-seed000.json").read_text())
    settings = record["settings"]
    assert settings["task"] == "mnist1d" and settings["barrier_bn"] == "recomputed"
    assert settings["imp_exclude"] == [] and settings["batch_size"] == 100 and settings["width"] == 4
    result = record["result"]
    assert result["rewind_iterations"] == 2 * 3  # 2ep of 256 signals in batches of 100
    assert [r["barrier"]["target_density"] for r in result["rounds"]] == [1.0, 0.2, 0.05]
    for entry in result["rounds"]:
        assert set(entry["accuracy"]) == {"clean"}
        errors = entry["barrier"]["errors"]
        assert len(errors) == claims.TASKS["mnist1d"].small["barrier_points"]
        assert entry["barrier"]["barrier"] == pytest.approx(max(errors) - (errors[0] + errors[-1]) / 2)
    gemminer = json.loads((out / "results" / "gemminer-seed000.json").read_text())["result"]
    assert 0 <= gemminer["before_finetune"]["accuracy"]["clean"] <= 1
    assert 0 <= gemminer["before_finetune"]["density"] <= gemminer["density"] + 1e-9


def test_imp_prunes_and_rewinds_the_output_layer_when_asked() -> None:
    """With ``imp_exclude=()`` the instability test's second copy carries the output layer's mask too."""
    from sparseticket.studies.claims.units import _search, epoch_batches

    settings, _, _ = claims.TASKS["mnist1d"].small_settings()
    found = _search("imp", settings, 0, settings.round_epochs, settings.round_epochs, rate=settings.imp_rate,
                    rewind_step="1ep", density=settings.density, exclude=settings.imp_exclude,
                    convention=settings.convention)
    output = found.model[-1].weight
    assert bool((output == 0).any())  # the output layer is pruned with the rest
    twin = found.job.rewound_copy(lambda epoch: epoch_batches(settings, 7, epoch))
    assert torch.equal(twin[-1].weight == 0, output == 0)


def test_barrier_prepare_runs_on_every_interpolated_network() -> None:
    import copy

    from sparseticket.driver.training import accuracy, recalibrate_batchnorm
    from sparseticket.methods import error_barrier
    from sparseticket.studies.claims.units import build_model, task_split

    settings, _, _ = claims.TASKS["mnist1d"].small_settings()
    split = task_split(settings)
    first, second = build_model(settings, 0), build_model(settings, 1)
    calls = []

    def prepare(network: torch.nn.Module) -> None:
        calls.append(network)
        recalibrate_batchnorm(network, split.train_images)

    barrier = error_barrier(first, second, split.test_loader(), points=4, prepare=prepare)
    assert len(calls) == 4 and all(network is not first and network is not second for network in calls)
    assert float(first[1].running_mean.abs().sum()) == 0  # the inputs are left alone (fresh: zero means)
    for model, error in ((first, barrier.errors[0]), (second, barrier.errors[-1])):  # the endpoints: recalibrated
        recalibrated = recalibrate_batchnorm(copy.deepcopy(model), split.train_images)
        assert error == pytest.approx(1 - accuracy(recalibrated, split.test_loader()))


def test_digits_settings_record_is_the_one_stored_before_tasks() -> None:
    assert set(claims.settings_record(claims.Settings())) == DIGITS_RECORD_FIELDS
    record = claims.settings_record(claims.TASKS["mnist1d"].settings)
    assert record["task"] == "mnist1d" and record["barrier_bn"] == "recomputed" and record["imp_exclude"] == []
    assert claims.settings_record(claims.TASKS["digits"].settings) == claims.settings_record(claims.Settings())


def test_mnist1d_defaults_fit_the_claims() -> None:
    task = claims.TASKS["mnist1d"]
    settings = task.settings
    assert task.seeds >= 20 and task.seeds_other >= 10
    assert (task.model, settings.width, settings.batch_size, settings.lr, settings.weight_decay) == \
        ("cnn1d", 32, 100, 0.1, 5e-4)
    rounds = [claims.barrier_round(d, settings) for d in settings.barrier_densities]
    assert len(set(rounds)) == len(rounds) and max(settings.barrier_densities) == 1.0
    assert min(settings.barrier_densities) <= 0.035  # the sweep reaches about 3%
    assert {"0"} < set(settings.rewind_steps)  # k = 0 and a k > 0


# ============================================================================ verdicts on hand-made records
def _imp_records(barriers: dict[str, dict[float, list[float]]]) -> dict[str, dict]:
    """IMP unit records holding the given barriers per rewind step and density (one value per seed)."""
    records: dict[str, dict] = {}
    for rewind, per_density in barriers.items():
        seeds = len(next(iter(per_density.values())))
        for seed in range(seeds):
            rounds = [{"density": density, "accuracy": {"clean": 0.9},
                       "barrier": {"target_density": density, "barrier": values[seed], "errors": []}}
                      for density, values in per_density.items()]
            records[Unit("imp", seed, rewind).name] = {"result": {"rounds": rounds}}
    return records


DENSITIES = (1.0, 0.25, 0.0625)


@pytest.mark.parametrize(("zero", "positive", "expected"), [
    # k = 0 clearly stable everywhere: the premise (an unstable k = 0) is absent
    ({1.0: [0.004, 0.006, 0.005, 0.003, 0.007], 0.25: [0.002, 0.004, 0.003, 0.005, 0.001],
      0.0625: [0.008, 0.006, 0.007, 0.009, 0.005]},
     {1.0: [0.002, 0.003, 0.001, 0.002, 0.003], 0.25: [0.001, 0.002, 0.001, 0.002, 0.001],
      0.0625: [0.003, 0.002, 0.004, 0.003, 0.002]}, NOT_TESTABLE),
    # unstable when dense, stable when sparse (the digits task): the claim is contradicted
    ({1.0: [0.85, 0.80, 0.90, 0.86, 0.88], 0.25: [0.006, 0.004, 0.008, 0.005, 0.007],
      0.0625: [0.005, 0.003, 0.006, 0.004, 0.007]},
     {1.0: [0.04, 0.02, 0.06, 0.03, 0.05], 0.25: [0.003, 0.002, 0.004, 0.003, 0.002],
      0.0625: [0.003, 0.002, 0.004, 0.003, 0.002]}, "fails"),
    # k = 0 unstable at the lowest density, k > 0 stable: holds
    ({1.0: [0.10, 0.12, 0.09, 0.11, 0.10], 0.25: [0.03, 0.04, 0.02, 0.03, 0.05],
      0.0625: [0.06, 0.07, 0.05, 0.08, 0.06]},
     {1.0: [0.005, 0.004, 0.006, 0.005, 0.004], 0.25: [0.003, 0.004, 0.002, 0.003, 0.005],
      0.0625: [0.008, 0.006, 0.009, 0.007, 0.005]}, "holds"),
])
def test_claim_4_verdict_on_hand_made_records(zero: dict, positive: dict, expected: str) -> None:
    settings = claims.Settings(rewind_steps=("0", "2ep"), barrier_densities=DENSITIES, density=min(DENSITIES))
    records = _imp_records({"0": zero, "2ep": positive})
    row, text = claim_stability(records, range(5), settings, 5)
    assert row.verdict == expected, row.reason
    if expected != NOT_TESTABLE:  # k > 0 lowers the barrier where k = 0 is unstable: the per-density tests say so
        assert "(lower)" in text


def test_claim_4_not_testable_needs_enough_seeds() -> None:
    stable = {d: [0.004, 0.005] for d in DENSITIES}
    settings = claims.Settings(rewind_steps=("0", "1ep"), barrier_densities=DENSITIES, density=min(DENSITIES))
    row, _ = claim_stability(_imp_records({"0": stable, "1ep": stable}), range(2), settings, 5)
    assert row.verdict == "inconclusive"


def test_stability_verdict_premise_uses_the_interval() -> None:
    # mean below 2% at every density, but one interval reaches above it: not clearly stable, so testable
    wide = [0.001, 0.035, 0.002, 0.03, 0.001]
    assert sum(wide) / len(wide) < STABLE_BARRIER
    verdict, _, _ = claims.stability_verdict([0.004] * 4 + [0.005], [0.002] * 4 + [0.003],
                                             [wide, [0.004] * 4 + [0.005]], "2ep", 5)
    assert verdict == "fails"  # k = 0 clearly stable at the lowest density


def _found_records(earlybird: list[int | None], worm: list[int | None]) -> list[dict]:
    return [{"result": {m: {"found_epoch": e, "trigger_epoch": None, "mean_distance": [0.3] * 6}
                        for m, e in (("earlybird", a), ("worm", b))}} for a, b in zip(earlybird, worm)]


@pytest.mark.parametrize(("earlybird", "worm", "expected"), [
    ([None] * 20, [None] * 20, NOT_TESTABLE),  # neither method draws: nothing to compare
    ([12] * 20, [12] * 20, "fails"),  # both draw, never earlier
    ([None] * 20, [10] * 20, "holds"),  # WORM draws where EarlyBird does not (counted at the cap)
])
def test_claim_1_verdict_on_hand_made_records(earlybird: list, worm: list, expected: str) -> None:
    row, _ = claim_found_epoch(_found_records(earlybird, worm), claims.Settings(epochs=30), 20)
    assert row.verdict == expected, row.reason


# ============================================================================ flags
def test_bad_task_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        claims.main(["--task", "cifar10", "--small"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--task" in error and "cifar10" in error and "mnist1d" in error


@pytest.mark.parametrize(("flags", "message"), [
    (["--task", "mnist1d", "--rewind-steps", "0", "30ep"], "--rewind-steps"),  # beyond a 25-epoch round
    (["--task", "mnist1d", "--seeds-other", "0"], "--seeds-other must be >= 1"),
])
def test_bad_mnist1d_flags_name_the_flag(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        claims.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_task_picks_its_defaults_and_output_folder() -> None:
    parser = claims.build_parser()
    for task, out in (("digits", "runs/claims"), ("mnist1d", "runs/claims-mnist1d")):
        arguments = parser.parse_args(["--task", task])
        settings, seeds, seeds_other = claims.settings_from(arguments)
        assert settings == claims.TASKS[task].settings
        assert (seeds, seeds_other) == (claims.TASKS[task].seeds, claims.TASKS[task].seeds_other)
        assert claims.output_folder(arguments) == Path(out)
    assert parser.parse_args([]).task == "digits"
    arguments = parser.parse_args(["--task", "mnist1d", "--out", "elsewhere", "--width", "8", "--seeds-other", "3"])
    settings, _, seeds_other = claims.settings_from(arguments)
    assert claims.output_folder(arguments) == Path("elsewhere") and settings.width == 8 and seeds_other == 3
