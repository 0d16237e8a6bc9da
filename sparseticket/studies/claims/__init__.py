"""``sparseticket reproduce``: the papers' claims measured on a built-in task, over seeds.

Tasks (``--task``, ``tasks.TASKS``): ``digits`` (the default: augmented 8x8 digits, ResNet-20) and
``mnist1d`` (MNIST-1D, a 1-D CNN; harder for sparse networks).

Four claims, each checked with a paired test across seeds (same seed = same initialization and
data order for every method):

1. WORM draws the EarlyBird ticket in fewer epochs than EarlyBird (Vasudev 2024).
2. WORM-pruned models lose less accuracy at pruning (Vasudev 2024), raw and after BN recalibration.
3. Gem-Miner finds <= 5% density tickets trainable to IMP's accuracy or better with far less search
   compute (Sreenivasan et al. 2022); a random ticket is the floor.
4. IMP rewound to k > 0 is stable (error barrier < 2%), k = 0 is not, at high sparsity (Frankle et al. 2020).

Layout: ``settings`` (what determines a result), ``tasks`` (data, model and recipe of each task),
``units`` (one method family on one seed per unit, through the search driver), ``runner`` (caches and
worker processes), ``verdicts`` (paired tests and the rules), ``report`` (the report and plots); this
module is the command line.

The work is cut into units (one method family on one seed), each written to
``<out>/results/<unit>.json`` as soon as it finishes; a rerun skips the units whose file holds the
same settings. The report (``claims.md``; MNIST-1D: ``mnist1d.md``) and the plots are then written
atomically from those files.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sparseticket.driver.threads import usable_cores
from sparseticket.studies.claims.report import write_report
from sparseticket.studies.claims.runner import Unit, load_cached, run_units, settings_record
from sparseticket.studies.claims.settings import QUEUE, SMALL, VERDICTS, Settings
from sparseticket.studies.claims.tasks import DEFAULT_TASK, TASKS, Task
from sparseticket.studies.claims.units import barrier_round, prunes_to, steps_per_epoch
from sparseticket.studies.claims.verdicts import directional_verdict, stability_verdict

__all__ = ["QUEUE", "SMALL", "TASKS", "VERDICTS", "Settings", "Task", "Unit", "barrier_round", "directional_verdict",
           "load_cached", "main", "output_folder", "prunes_to", "run_units", "settings_record", "stability_verdict",
           "steps_per_epoch", "write_report"]

# ============================================================================ command line
def build_parser() -> argparse.ArgumentParser:
    """The flags of ``sparseticket reproduce`` (defaults in the help: the digits task's; ``--task`` sets its own)."""
    defaults = Settings()
    mnist1d = TASKS["mnist1d"]
    parser = argparse.ArgumentParser(
        prog="sparseticket reproduce",
        description="Measure the papers' four claims on a built-in task over seeds; writes the report (claims.md, "
                    "or mnist1d.md for --task mnist1d), plots and per-seed JSON results (a rerun skips finished "
                    "seeds).")
    parser.add_argument("--task", choices=tuple(TASKS), default=DEFAULT_TASK,
                        help=f"the task: digits (augmented 8x8 digits, ResNet-20; the default) or mnist1d (MNIST-1D, "
                             f"a 1-D CNN, IMP at rate {mnist1d.settings.imp_rate:g} down to "
                             f"{mnist1d.settings.density:.3g} with every layer pruned, barriers with BatchNorm "
                             f"statistics re-estimated; at most {mnist1d.budget_minutes} minutes on 2 cores)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: runs/claims for digits, runs/claims-<task> for the others)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds for claims 1-2 (default: 20, as claim 1 needs)")
    parser.add_argument("--seeds-other", type=int, default=None,
                        help=f"seeds for claims 3-4 (default: 5 for digits, {mnist1d.seeds_other} for mnist1d)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"EarlyBird/WORM training length and found-epoch cap (default: {defaults.epochs} for "
                             f"digits, the pilot's; {mnist1d.settings.epochs} for mnist1d; the paper trains 160 on "
                             "CIFAR)")
    parser.add_argument("--round-epochs", type=int, default=None,
                        help=f"IMP round length, Gem-Miner mining and fine-tuning epochs (default: "
                             f"{defaults.round_epochs} for digits: 14 IMP rounds to 5%% must fit the 30-minute "
                             f"budget; {mnist1d.settings.round_epochs} for mnist1d)")
    parser.add_argument("--width", type=int, default=None,
                        help=f"model width: ResNet-20's (default {defaults.width}) or cnn1d's channels (default "
                             f"{mnist1d.settings.width})")
    parser.add_argument("--rewind-steps", nargs="+", default=None,
                        help="IMP rewind steps k, open_lth style: '0', '500it', '2ep' (default: 0 1ep for digits, "
                             f"{' '.join(mnist1d.settings.rewind_steps)} for mnist1d; 0 and one k > 0 are needed "
                             "for claim 4)")
    parser.add_argument("--small", action="store_true",
                        help="plumbing size for CI: 2 seeds, 6 epochs, width 4, 256 training examples, IMP rate 0.8, "
                             "6 barrier points (verdicts are then inconclusive by design)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default: 1)")
    parser.add_argument("--workers", type=int, default=min(2, usable_cores()),
                        help="worker processes, one unit (method, seed) each; workers x threads must not exceed "
                             "the usable cores (default: 2, or 1 on one core)")
    return parser


def settings_from(arguments: argparse.Namespace) -> tuple[Settings, int, int]:
    """(settings, seeds, seeds_other) from the parsed flags; ValueError naming the flag on bad values."""
    task = TASKS[arguments.task]
    if arguments.small:
        base, seeds, seeds_other = task.small_settings()
    else:
        base, seeds, seeds_other = task.settings, task.seeds, task.seeds_other
    chosen = {"seeds": seeds, "seeds_other": seeds_other}
    values: dict[str, Any] = {}
    for name in ("seeds", "seeds_other"):
        if getattr(arguments, name) is not None:
            chosen[name] = getattr(arguments, name)
    for name in ("epochs", "round_epochs", "width"):
        if getattr(arguments, name) is not None:
            values[name] = getattr(arguments, name)
    if arguments.rewind_steps is not None:
        values["rewind_steps"] = tuple(arguments.rewind_steps)
    settings = replace(base, **values)
    checks = (("--seeds", chosen["seeds"], 1), ("--seeds-other", chosen["seeds_other"], 1),
              ("--epochs", settings.epochs, QUEUE + 1), ("--round-epochs", settings.round_epochs, 6),
              ("--width", settings.width, 1), ("--threads", arguments.threads, 1), ("--workers", arguments.workers, 1))
    for flag, value, least in checks:
        if value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    if arguments.workers * arguments.threads > usable_cores():
        raise ValueError(f"--workers {arguments.workers} x --threads {arguments.threads} = "
                         f"{arguments.workers * arguments.threads} threads, more than the {usable_cores()} usable "
                         "cores: threads that wait for each other at every op then take turns on a core")
    from sparseticket.driver.schedules import parse_rewind_step

    total = settings.round_epochs * steps_per_epoch(settings)
    for rewind in settings.rewind_steps:
        try:
            parse_rewind_step(rewind, steps_per_epoch(settings), total)
        except (TypeError, ValueError) as error:
            raise ValueError(f"--rewind-steps: {error}") from error
    rounds = [barrier_round(d, settings) for d in settings.barrier_densities]
    if len(set(rounds)) != len(rounds):
        raise ValueError(f"the barrier densities {settings.barrier_densities} fall on the same IMP rounds {rounds} "
                         f"at rate {settings.imp_rate:g}")
    if len(set(settings.rewind_steps)) != len(settings.rewind_steps):
        raise ValueError(f"--rewind-steps must not repeat a step, got {' '.join(settings.rewind_steps)}")
    return settings, chosen["seeds"], chosen["seeds_other"]


def units_for(seeds: int, seeds_other: int, settings: Settings) -> list[Unit]:
    """Every unit the report needs."""
    units = [Unit("found", seed) for seed in range(seeds)]
    for seed in range(seeds_other):
        units += [Unit("gemminer", seed), Unit("random", seed)]
        units += [Unit("imp", seed, rewind) for rewind in settings.rewind_steps]
    return units


WALL_TIME_FILE = "wall_time.json"  # wall seconds summed over the invocations that worked on this folder


def _add_wall_seconds(out: Path, seconds: float) -> float:
    """Add this invocation's wall seconds to the folder's total and return the total."""
    import json

    from sparseticket.files import atomic_write

    path = out / WALL_TIME_FILE
    total = (json.loads(path.read_text())["seconds"] if path.exists() else 0.0) + seconds
    atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps({"seconds": total})))
    return total


def output_folder(arguments: argparse.Namespace) -> Path:
    """``--out``, else the task's default folder (runs/claims, runs/claims-mnist1d)."""
    return Path(arguments.out if arguments.out is not None else TASKS[arguments.task].out)


def main(argv: list[str] | None = None) -> int:
    """Run the claims; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        settings, seeds, seeds_other = settings_from(arguments)
    except ValueError as error:
        parser.error(str(error))
    out = output_folder(arguments)
    units = units_for(seeds, seeds_other, settings)
    print(f"sparseticket reproduce --task {arguments.task}: {len(units)} units ({seeds} seeds for claims 1-2, "
          f"{seeds_other} for 3-4), "
          f"{arguments.workers} worker(s) x {arguments.threads} thread(s), results in {out}", flush=True)
    started = time.perf_counter()
    records = run_units(units, settings, out, arguments.workers, arguments.threads,
                        log=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - started
    total = _add_wall_seconds(out, seconds)
    command = "sparseticket reproduce " + " ".join(argv)
    path = write_report(records, settings, seeds, seeds_other, out, command.strip(), total)
    print(f"wrote {path} and plots ({seconds:.0f} s now, {total:.0f} s in all)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

