"""``sparseticket compare --seeds``: a run folder per method and seed, mean ± std tables, paired tests,
error-bar plots; a rerun reads finished runs back without training, an interrupted one resumes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from sparseticket.cli import search as search_module
from sparseticket.cli.main import main
from sparseticket.cli.report import summarize_compare
from sparseticket.cli.search import SearchResult
from sparseticket.driver import search as driver_search
from sparseticket.driver.config import RunConfig
from sparseticket.methods import Ticket

pytest.importorskip("matplotlib")

TINY = ["--model", "mlp", "--epochs", "2", "--finetune-epochs", "1", "--no-progress", "--threads", "1"]
PNG = b"\x89PNG\r\n\x1a\n"


class Counted:
    """Counts the training epochs the driver runs (wraps ``driver.search.train_steps``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.epochs = 0
        original = driver_search.train_steps

        def counting(*args, **kwargs):
            self.epochs += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(driver_search, "train_steps", counting)


def _compare(folder: Path, arguments: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, Counted]:
    """Run ``sparseticket compare`` in ``folder`` (default --out: runs); (exit code, stdout, epoch counter)."""
    monkeypatch.chdir(folder)
    counter, out = Counted(monkeypatch), io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["compare", *arguments, *TINY])
    return code, out.getvalue(), counter


def _runs(out: Path) -> dict[tuple[str, int], Path]:
    """(method, seed) -> run folder."""
    runs = {}
    for folder in (p for p in out.iterdir() if p.is_dir()):
        config = json.loads((folder / "config.json").read_text())
        runs[config["method"], config["seed"]] = folder
    return runs


def _final_accuracy(run: Path) -> float:
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    return float([row for row in rows if row["phase"] == "finetune"][-1]["test_accuracy"])


def _checkpoints(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/checkpoint.pt"))}


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """One ``compare --seeds 0 1`` of earlybird, worm and random: (folder, stdout, training epochs)."""
    folder = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, stdout, counter = _compare(folder, ["--seeds", "0", "1", "--methods", "earlybird", "worm", "random"],
                                         monkeypatch)
    assert code == 0, stdout
    return folder, stdout, counter.epochs


def test_every_method_runs_on_every_seed_in_its_own_folder(two_seeds):
    folder, stdout, epochs = two_seeds
    runs = _runs(folder / "runs")
    assert set(runs) == {(m, s) for m in ("earlybird", "worm", "random") for s in (0, 1)}
    assert len(set(runs.values())) == 6
    assert epochs == 2 * (3 + 3 + 1)  # per seed: 2 search + 1 fine-tune epochs for EB and WORM, 1 for random
    assert "run 4/6: seed 2/2 (1), earlybird" in stdout and "run 6/6: seed 2/2 (1), random at density 0.05" in stdout


def test_table_shows_mean_std_and_interval_over_seeds(two_seeds):
    folder, stdout, _ = two_seeds
    text = (folder / "runs" / "compare.md").read_text()
    runs = _runs(folder / "runs")
    for method in ("earlybird", "worm", "random"):
        (row,) = [line for line in text.splitlines() if line.startswith(f"| {method} |")]
        accuracies = [_final_accuracy(runs[method, seed]) for seed in (0, 1)]
        mean, std = statistics.mean(accuracies), statistics.stdev(accuracies)
        half = math.tan(0.475 * math.pi) * std / math.sqrt(2)  # t(0.975, 1 dof) = tan(0.475 pi)
        assert f"| 2 | {mean:.3f} ± {std:.3f} [{mean - half:.3f}, {mean + half:.3f}] |" in row
        assert row in stdout
    assert "Seeds: 0 1 (n = 2)" in text and "| found epoch |" in text.splitlines()[4]


def test_significance_section_pairs_worm_with_earlybird(two_seeds):
    folder, stdout, _ = two_seeds
    text = (folder / "runs" / "compare.md").read_text()
    assert "## Significance" in text and "## Significance" in stdout
    runs = _runs(folder / "runs")
    differences = [_final_accuracy(runs["worm", s]) - _final_accuracy(runs["earlybird", s]) for s in (0, 1)]
    (row,) = [line for line in text.splitlines() if line.startswith("| worm vs earlybird | test acc |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == "2"
    if math.isclose(differences[0], differences[1], abs_tol=1e-12):
        assert cells[4] == "n/a" and "zero variance" in cells[5]
    else:  # two pairs: t = (d1 + d2) / |d1 - d2| with 1 dof (Cauchy), p = 1 - 2/pi atan|t|
        t = (differences[0] + differences[1]) / abs(differences[0] - differences[1])
        p = 1 - 2 / math.pi * math.atan(abs(t))
        assert cells[4] == f"{p:.3g}" and cells[5] == ("yes" if p < 0.05 else "no")
    assert "| worm vs earlybird | found epoch |" in text  # "n/a" when no seed drew with 2 epochs
    assert "## What WORM's trigger did" in text and "first full queue (epoch 5)" in text


def test_plots_have_error_bars_over_seeds(two_seeds):
    folder, _, _ = two_seeds
    out = folder / "runs"
    for name in ("accuracy_vs_density.png", "mask_distance.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_rerun_reads_finished_runs_back_without_training(two_seeds):
    folder, _, _ = two_seeds
    out = folder / "runs"
    before, table = _checkpoints(out), (out / "compare.md").read_text()
    with pytest.MonkeyPatch.context() as monkeypatch:
        code, stdout, counter = _compare(folder, ["--seeds", "0", "1", "--methods", "earlybird", "worm", "random"],
                                         monkeypatch)
    assert code == 0 and counter.epochs == 0
    assert stdout.count("already finished, not retrained") == 6 and "search 1/2" not in stdout
    assert _checkpoints(out) == before and len(before) == 6
    assert (out / "compare.md").read_text() == table  # wall times come back from each run's wall_time.json


def test_interrupted_compare_resumes_where_it_stopped(tmp_path, monkeypatch):
    original = search_module.Search._log_row

    def interrupt(self, row, *rest):
        original(self, row, *rest)
        if self.config.seed == 1 and self.config.method == "earlybird" and row["phase"] == "search":
            raise KeyboardInterrupt  # before epoch 1's checkpoint of seed 1 is written

    monkeypatch.setattr(search_module.Search, "_log_row", interrupt)
    arguments = ["--seeds", "0", "1", "--methods", "earlybird", "random"]
    code, _, counter = _compare(tmp_path, arguments, monkeypatch)
    assert code == 130 and counter.epochs == 3 + 1 + 1  # seed 0 whole, seed 1's first epoch
    monkeypatch.setattr(search_module.Search, "_log_row", original)
    seed_zero = {k: v for k, v in _checkpoints(tmp_path / "runs").items() if "-s0-" in k}
    code, stdout, counter = _compare(tmp_path, arguments, monkeypatch)
    assert code == 0 and counter.epochs == 3 + 1  # seed 1 only; seed 0 read back
    assert stdout.count("already finished") == 2
    assert {k: v for k, v in _checkpoints(tmp_path / "runs").items() if "-s0-" in k} == seed_zero
    assert "| earlybird | 0.4" in (tmp_path / "runs" / "compare.md").read_text()  # channel density ~0.5


def test_one_seed_prints_as_before(tmp_path, monkeypatch):
    code, stdout, _ = _compare(tmp_path, ["--methods", "random", "--seed", "3"], monkeypatch)
    assert code == 0 and "±" not in stdout and "| seeds |" not in stdout
    (run,) = _runs(tmp_path / "runs").values()
    assert f"| random | 0.050 | {_final_accuracy(run):.3f} | 0 | 1 |" in stdout
    assert "n/a: needs >= 2 seeds" in (tmp_path / "runs" / "compare.md").read_text()


@pytest.mark.parametrize("seeds", [["1", "1"], ["-2"]])
def test_bad_seeds_are_one_line_errors(tmp_path, monkeypatch, capsys, seeds):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "--seeds", *seeds, "--methods", "random", *TINY]) == 2
    assert "--seeds must be distinct integers >= 0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _result(method: str, seed: int, accuracy: float, *, density: float = 0.05, search_epochs: int = 10,
            found: int | None = None, trigger: int | None = None) -> SearchResult:
    """A made-up finished run (no training): what the report reads from a SearchResult."""
    config = RunConfig(method=method, seed=seed, density=density)
    if method in ("earlybird", "worm"):
        ticket = Ticket({}, method, {}, channel_masks={"bn": torch.tensor([True, False, True, False])})
        extra = {"history": [[0.2], [0.05]], "found_epoch": found, "trigger_epoch": trigger}
    else:
        mask = torch.zeros(100, dtype=torch.bool)
        mask[: round(100 * density)] = True
        ticket, extra = Ticket({"w": mask}, method, {}), {}
    return SearchResult(config, Path(f"/nowhere/{method}-{seed}"), ticket, accuracy, search_epochs, 10, 1.0 + seed,
                        [], extra)


def test_report_on_known_results_pairs_what_the_papers_compare(tmp_path):
    gem, imp, rand = [0.90, 0.85, 0.80, 0.70], [0.91, 0.87, 0.83, 0.74], [0.5, 0.6, 0.4, 0.5]
    results = [_result("earlybird", s, 0.9, found=f) for s, f in enumerate([9, 8, 10, 7])]
    worm = [(7, 5), (6, 5), (8, 6), (5, 5)]  # (found, trigger) per seed
    results += [_result("worm", s, 0.9, found=f, trigger=t) for s, (f, t) in enumerate(worm)]
    results += [_result("gemminer", s, a, search_epochs=10) for s, a in enumerate(gem)]
    results += [_result("imp", s, a, search_epochs=50) for s, a in enumerate(imp)]
    results += [_result("random", s, a) for s, a in enumerate(rand)]
    summarize_compare(results, tmp_path)
    text = (tmp_path / "compare.md").read_text()
    lines = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in text.splitlines()
             if " vs " in line}
    # WORM - EarlyBird found epochs: differences -2 -2 -2 -2 -> zero variance, no p-value
    assert "zero variance" in lines["worm vs earlybird", "found epoch"]
    # Gem-Miner - IMP accuracies: differences -0.01 -0.02 -0.03 -0.04, i.e. 0.01 * (1, 2, 3, 4) negated
    row = lines["gemminer @ 0.05 vs imp @ 0.05", "test acc"]
    t = 2.5 / (math.sqrt(5 / 3) / 2)
    x = t / math.sqrt(3)
    p = 1 - 2 / math.pi * (x / (1 + x * x) + math.atan(x))  # t with 3 dof, closed form
    assert "| 4 | -0.025 ± 0.013 [" in row and row.endswith(f"| {p:.3g} | {'yes' if p < 0.05 else 'no'} |")
    assert "zero variance" in lines["gemminer @ 0.05 vs imp @ 0.05", "search epochs"]  # always -40
    assert ("imp @ 0.05 vs random @ 0.05", "test acc") in lines
    assert not any(pair[0].startswith("earlybird vs") for pair in lines)
    assert "in 3 of 4 seeds, later in 1, never in 0" in text
    assert "| 2 | 6 | 8 | 2 |" in text  # seed 2: trigger 6, found 8 -> 2 epochs truncated before the ticket
    assert (tmp_path / "found_epoch.png").read_bytes()[:8] == PNG
    assert (tmp_path / "accuracy_vs_density.png").read_bytes()[:8] == PNG


def test_error_bar_plots_validate_their_input(tmp_path):
    from sparseticket.reporting.plots import plot_accuracy_vs_density, plot_found_epochs

    points = {"imp": [(0.2, 0.9, 0.02), (0.05, 0.8, None)], "random": [(0.05, 0.5)]}
    assert plot_accuracy_vs_density(points, tmp_path / "a.png").read_bytes()[:8] == PNG
    assert plot_found_epochs({"earlybird": [9, 11], "worm": [7]}, tmp_path / "f.png", full_queue=5).exists()
    for call, words in [
        (lambda: plot_accuracy_vs_density({"imp": [(0.2, 0.9, -0.1)]}, tmp_path / "x.png"), "std must be"),
        (lambda: plot_accuracy_vs_density({"imp": [(0.2,)]}, tmp_path / "x.png"), "points must be"),
        (lambda: plot_found_epochs({}, tmp_path / "x.png"), "at least one method"),
        (lambda: plot_found_epochs({"worm": [0]}, tmp_path / "x.png"), "positive finite"),
    ]:
        with pytest.raises(ValueError, match=words):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "f.png"]


def test_accuracy_at_pruning_is_paired_only_where_both_methods_report_it(tmp_path):
    """Channel runs carry accuracy at pruning, weight runs do not: the IMP-vs-random pair must skip
    that figure (it once raised KeyError), WORM-vs-EarlyBird must pair it."""
    results = []
    for seed, (eb, worm) in enumerate([(0.50, 0.40), (0.55, 0.42), (0.60, 0.47)]):
        for method, value in (("earlybird", eb), ("worm", worm)):
            result = _result(method, seed, 0.9, found=8)
            result.rows.append({"phase": "search", "epoch": 8, "accuracy_at_pruning": value,
                                "accuracy_at_pruning_recalibrated": value + 0.3})
            results.append(result)
    results += [_result("imp", s, 0.9 + 0.01 * s) for s in range(3)] + [_result("random", s, 0.5) for s in range(3)]
    summarize_compare(results, tmp_path)
    pairs = [line for line in (tmp_path / "compare.md").read_text().splitlines() if " vs " in line]
    pruning = [line for line in pairs if "accuracy at pruning" in line]
    assert len(pruning) == 2 and all(line.startswith("| worm vs earlybird") for line in pruning)
    assert "| 3 | -0.120 ± 0.017 [" in pruning[0]  # differences -0.10, -0.13, -0.13: std sqrt(0.0003)
    assert any(line.startswith("| imp @ 0.05 vs random @ 0.05 | test acc | 3 |") for line in pairs)
