"""Running the units: per-unit JSON caches (reused only under equal settings), longest first on
spawned worker processes, with progress lines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from sparseticket.studies.claims.settings import ADDED_FIELDS, Settings
from sparseticket.studies.claims.units import prunes_to, run_found, run_gemminer, run_imp, run_random


# ============================================================================ scheduling and caching
@dataclass(frozen=True)
class Unit:
    """One method family on one seed."""

    kind: str  # "found", "gemminer", "random" or "imp"
    seed: int
    rewind: str = ""

    @property
    def name(self) -> str:
        """The cache file's stem."""
        rewind = f"-k{self.rewind}" if self.kind == "imp" else ""
        return f"{self.kind}{rewind}-seed{self.seed:03d}"

    def cost(self, settings: Settings) -> float:
        """A rough cost in epochs (longest units are started first)."""
        if self.kind == "found":
            return settings.epochs
        if self.kind == "imp":
            return (prunes_to(settings.density, settings.imp_rate) + 2) * settings.round_epochs
        return 2 * settings.round_epochs

    def run(self, settings: Settings) -> dict[str, Any]:
        """Compute this unit's result."""
        if self.kind == "imp":
            return run_imp(settings, self.seed, self.rewind)
        return {"found": run_found, "gemminer": run_gemminer, "random": run_random}[self.kind](settings, self.seed)


def settings_record(settings: Settings) -> dict[str, Any]:
    """The settings as JSON would store them (tuples become lists); the fields added after the digits runs
    (``ADDED_FIELDS``) only where they differ from their defaults, so the digits records stay valid."""
    record = asdict(settings)
    defaults = Settings()
    for name in ADDED_FIELDS:
        if record[name] == getattr(defaults, name):
            del record[name]
    return json.loads(json.dumps(record))


def load_cached(path: Path, settings: Settings) -> dict[str, Any] | None:
    """A unit's stored result when the file exists, parses, and was made under the same settings."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("settings") == settings_record(settings) else None


def _write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (a temporary file renamed onto ``path``)."""
    from sparseticket.files import atomic_write

    def write(temporary: str) -> None:
        with open(temporary, "w") as file:
            json.dump(value, file, indent=1)

    atomic_write(path, write)


def _worker_init(threads: int) -> None:
    """Each worker process: ``threads`` intra-op threads."""
    torch.set_num_threads(threads)


def _run_and_store(unit: Unit, settings: Settings, path: Path) -> tuple[str, float]:
    """Run a unit and write its JSON; returns (a one-line summary, seconds)."""
    started = time.perf_counter()
    result = unit.run(settings)
    seconds = time.perf_counter() - started
    _write_json(path, {"unit": unit.name, "seed": unit.seed, "settings": settings_record(settings),
                       "seconds": seconds, "result": result})
    return _describe(unit, result), seconds


def _describe(unit: Unit, result: dict[str, Any]) -> str:
    """A short progress line for a finished unit."""
    if unit.kind == "found":
        return (f"EarlyBird epoch {result['earlybird']['found_epoch']}, WORM epoch {result['worm']['found_epoch']} "
                f"(trigger {result['worm']['trigger_epoch']})")
    text = f"density {result['density']:.3f}, accuracy {result['accuracy']['clean']:.3f}"
    if unit.kind == "imp":
        barriers = [r["barrier"]["barrier"] for r in result["rounds"] if "barrier" in r]
        text += ", barriers " + " ".join(f"{b:.3f}" for b in barriers)
    return text


def run_units(units: Sequence[Unit], settings: Settings, out: Path, workers: int, threads: int,
              log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Every unit's stored record, running those not cached (longest first, ``workers`` processes)."""
    results_dir = out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict[str, Any]] = {}
    pending = []
    for unit in units:
        record = load_cached(results_dir / f"{unit.name}.json", settings)
        if record is None:
            pending.append(unit)
        else:
            records[unit.name] = record
    if records:
        log(f"cached: {len(records)} of {len(units)} units already finished under these settings (skipped)")
    pending.sort(key=lambda unit: -unit.cost(settings))
    started = time.perf_counter()
    total_cost, done_cost = sum(unit.cost(settings) for unit in pending), 0.0

    def finished(index: int, unit: Unit, line: str, seconds: float) -> None:
        nonlocal done_cost
        records[unit.name] = json.loads((results_dir / f"{unit.name}.json").read_text())
        done_cost += unit.cost(settings)
        elapsed = time.perf_counter() - started
        left = elapsed * (total_cost - done_cost) / done_cost
        log(f"[{index}/{len(pending)}] {unit.name}: {line} ({seconds:.1f} s; {elapsed:.0f} s elapsed, "
            f"about {left:.0f} s left)")

    if workers <= 1 or len(pending) <= 1:
        _worker_init(threads)
        for index, unit in enumerate(pending, 1):
            line, seconds = _run_and_store(unit, settings, results_dir / f"{unit.name}.json")
            finished(index, unit, line, seconds)
        return records
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_run_and_store, unit, settings, results_dir / f"{unit.name}.json"): unit
                   for unit in pending}
        for index, future in enumerate(as_completed(futures), 1):
            line, seconds = future.result()
            finished(index, futures[future], line, seconds)
    return records


