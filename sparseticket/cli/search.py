"""``sparseticket search``: find a ticket, fine-tune it, evaluate it; checkpoint every epoch.

A run folder holds ``config.json``, ``init.pt`` (the initial weights), ``checkpoint.pt`` (the
latest epoch: phase, epoch, model, optimizer, method state, metrics), ``ticket.safetensors`` once
the search ends, then ``metrics.csv``, ``summary.md`` and plots. Every file is written atomically
and flushed to disk (``files.atomic_write``), and the metrics rows travel inside the checkpoint,
so a run stopped at any moment (Ctrl-C, ``kill -9``, a power cut) resumes from its last finished
epoch with the same result as an uninterrupted one; temporary files of an interrupted write are
deleted when it resumes.

Under ``torchrun`` every rank runs the same search on its shard of each global batch
(``--batch-size`` is the global batch, split by ``DistributedSampler``), with the model wrapped
in ``DistributedDataParallel``; rank 0 alone writes the run folder and the log, and every rank
resumes from the same checkpoint. Rank 0 holds an exclusive lock on the run folder while it
works on it (``files.lock_folder``): a second search or ``--resume`` of the same run exits 2
naming the process that holds it.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseticket.builtin.datasets import load_dataset
from sparseticket.builtin.models import build_model
from sparseticket.cli.files import (
    PREVIOUS_CHECKPOINT,
    keep_previous,
    load_checkpoint,
    remove_leftover_temporaries,
    save_checkpoint,
    save_ticket,
    write_rows,
    write_text,
)
from sparseticket.driver.config import RunConfig
from sparseticket.driver.data import TrainingData
from sparseticket.driver.jobs import check_job, method_options
from sparseticket.driver.processes import Processes
from sparseticket.driver.recipe import Schedule
from sparseticket.driver.search import TicketSearch
from sparseticket.files import lock_folder
from sparseticket.methods import BASELINES, METHODS, Ticket

Log = Callable[[str], None]

# flags named otherwise than the method's own argument: method -> {argument: RunConfig field}
_RENAMED = {"gemminer": {"lr": "score_lr"}}
WALL_TIME_FILE = "wall_time.json"  # the run's wall seconds summed over every process that worked on it


def finished_run(run_dir: Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a finished run of ``config``: ``metrics.csv`` and ``summary.md``, the
    last file a run writes (after its plots), are there. A run killed while writing its summary or
    plots is not finished: resuming it writes them."""
    config_path = run_dir / "config.json"
    return (config_path.exists() and (run_dir / "metrics.csv").exists() and (run_dir / "summary.md").exists()
            and RunConfig.read(config_path) == config)


def recorded_seconds(run_dir: Path) -> float:
    """The wall seconds the processes before this one spent on the run (0 for a new run)."""
    path = run_dir / WALL_TIME_FILE
    return float(json.loads(path.read_text())["seconds"]) if path.exists() else 0.0


def schedule_of(config: RunConfig) -> Schedule:
    """The training recipe of a run's flags; a ValueError names the flag (``--batch-size``), not the field."""
    try:
        return Schedule(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, momentum=config.momentum,
                        weight_decay=config.weight_decay, lr_schedule=config.lr_schedule,
                        warmup_epochs=config.warmup_epochs, round_epochs=config.round_epochs,
                        finetune_epochs=config.finetune_epochs, finetune_lr=config.finetune_lr)
    except ValueError as error:
        message = re.sub(r"Schedule\.(\w+)", lambda match: "--" + match.group(1).replace("_", "-"), str(error))
        raise ValueError(message) from None


def options_of(config: RunConfig) -> dict[str, Any]:
    """The method's keyword arguments among a run's flags (``--score-lr`` is Gem-Miner's ``lr``)."""
    target = METHODS.get(config.method) or BASELINES[config.method]
    renamed = _RENAMED.get(config.method, {})
    values = {}
    for name in inspect.signature(target).parameters:
        source = renamed.get(name, name)
        if hasattr(config, source) and name != "model":
            values[name] = getattr(config, source)
    if config.method == "imp":
        values["density"] = config.density
    return method_options(config.method, values, strict=False)


@dataclass
class SearchResult:
    """What a finished search reports."""

    config: RunConfig
    run_dir: Path
    ticket: Ticket
    accuracy: float
    search_epochs: int
    finetune_epochs: int
    seconds: float
    rows: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    finished_before: bool = False  # the run folder was already finished: nothing was trained or written


class RunFolder:
    """The ``RunStore`` of a run folder: ``checkpoint.pt``, ``ticket.safetensors`` and ``searched.pt``,
    each written atomically by rank 0."""

    def __init__(self, run_dir: Path, device: torch.device, *, read_only: bool = False,
                 log: Log = lambda _message: None) -> None:
        self.run_dir, self.device, self.read_only, self.log = run_dir, device, read_only, log
        self.checkpoint_path = run_dir / "checkpoint.pt"
        self.previous_path = run_dir / PREVIOUS_CHECKPOINT

    def load_checkpoint(self) -> dict | None:
        """The latest epoch's checkpoint, or None when there is none (a deleted ``checkpoint.pt``
        restarts its phase). One that exists but cannot be read (truncated, corrupted) falls back to
        the one before it, ``checkpoint.previous.pt``, when that one reads; else the ValueError."""
        if not self.checkpoint_path.exists():
            return None
        try:
            return load_checkpoint(self.checkpoint_path, self.device)
        except ValueError as error:
            if not self.previous_path.exists():
                raise
            try:
                state = load_checkpoint(self.previous_path, self.device)
            except ValueError:
                raise error from None
            self.log(f"{self.checkpoint_path.name} cannot be read; resuming from {self.previous_path.name}, the "
                     f"checkpoint before it ({state['phase']} epoch {state['epoch']})")
            return state

    def save_checkpoint(self, state: dict) -> None:
        """Write ``checkpoint.pt``, keeping the one it replaces as ``checkpoint.previous.pt`` (a hard
        link: no copy, and ``checkpoint.pt`` is never missing); not for a finished run read back."""
        if self.read_only:
            return
        if self.checkpoint_path.exists():
            keep_previous(self.checkpoint_path, self.previous_path)
        save_checkpoint(self.checkpoint_path, state)

    def save_searched(self, ticket: Ticket, searched: dict) -> None:
        """Write ``ticket.safetensors`` and ``searched.pt`` (not for a finished run read back)."""
        if not self.read_only:
            save_ticket(self.run_dir / "ticket.safetensors", ticket)
            save_checkpoint(self.run_dir / "searched.pt", searched)

    def load_searched(self) -> tuple[Ticket, dict]:
        """Read them back."""
        return (Ticket.load(self.run_dir / "ticket.safetensors"),
                load_checkpoint(self.run_dir / "searched.pt", self.device))


class Search:
    """One run of one method, resumable from its run folder: the run folder around ``TicketSearch``."""

    def __init__(self, config: RunConfig, run_dir: Path, *, log: Log = print, progress: bool = True,
                 device: str = "cpu", processes: Processes | None = None) -> None:
        self.processes = processes if processes is not None else Processes(device=torch.device(device))
        self.config, self.run_dir = config, run_dir
        self.log = log if self.processes.is_main else (lambda _message: None)
        self.progress = progress and self.processes.is_main
        self.device = self.processes.device
        self.read_only = False  # set by run() when the run folder is already finished

    def _write(self, write: Callable[[], None]) -> None:
        """Run a file write on rank 0 only, and never for a finished run read back."""
        if self.processes.is_main and not self.read_only:
            write()

    def _remove_leftovers(self) -> None:
        """Delete the temporary files of writes that a kill cut short (nothing ever reads them)."""
        removed = remove_leftover_temporaries(self.run_dir)
        if removed:
            self.log(f"removed {len(removed)} temporary file(s) of an interrupted write: {', '.join(removed)}")

    def _model(self, data) -> nn.Module:
        shape = data.train_images.shape
        model = build_model(self.config.model, classes=data.classes, input_shape=tuple(shape[1:]),
                            width=self.config.width)
        return model.to(self.device)

    def run(self) -> SearchResult:
        """Run (or resume) the search and the fine-tuning; write the run folder."""
        config, run_dir = self.config, self.run_dir
        if config.batch_size % self.processes.world_size:
            raise ValueError(f"--batch-size {config.batch_size} (the global batch) must be a multiple of the "
                             f"number of processes ({self.processes.world_size})")
        # Everything that can refuse the configuration runs before the first file is written:
        # the recipe and options, the data, the model and the method built on a copy of it.
        schedule, options = schedule_of(config), options_of(config)
        finished = self.read_only = finished_run(run_dir, config)  # then nothing is written: nothing changes
        self._started, self._seconds_before = time.perf_counter(), recorded_seconds(run_dir)
        split = load_dataset(config.data, data_dir=config.data_dir, seed=config.seed, augment=config.augment,
                             samples=config.samples).to(self.device)
        torch.manual_seed(config.seed)
        model = self._model(split)
        resumed = (run_dir / "init.pt").exists()
        if resumed:
            model.load_state_dict(load_checkpoint(run_dir / "init.pt", self.device))
        data = TrainingData.from_split(split, config.batch_size, config.seed, self.processes)
        check_job(config.method, model, options, schedule, data)
        self._write(lambda: run_dir.mkdir(parents=True, exist_ok=True))
        release = lock_folder(run_dir) if self.processes.is_main and not finished else (lambda: None)
        try:
            return self._run_locked(config, run_dir, model, schedule, options, data, resumed, finished)
        finally:
            release()

    def _run_locked(self, config: RunConfig, run_dir: Path, model: nn.Module, schedule: Schedule,
                    options: dict[str, Any], data: TrainingData, resumed: bool, finished: bool) -> SearchResult:
        """The rest of ``run``, while this process alone holds the run folder (``files.lock_folder``)."""
        self._write(self._remove_leftovers)
        self._write(lambda: write_text(run_dir / "config.json", config.to_json()))
        if not resumed:  # every rank built the same seeded model; rank 0 keeps it for --resume
            self._write(lambda: save_checkpoint(run_dir / "init.pt", model.state_dict()))
        search = TicketSearch(config.method, model, data, schedule, options=options,
                              store=RunFolder(run_dir, self.device, read_only=finished, log=self.log),
                              on_row=lambda row: self._log_row(row, search),
                              log=lambda message: self.log(f"{message} ({run_dir.name})"), progress=self.progress,
                              processes=self.processes)
        self._phase_start: dict[str, tuple[float, int]] = {}
        result = search.run()
        rows = result.rows
        seconds = self._seconds_before if finished else self._record_seconds()  # the figure the file keeps
        self._write(lambda: write_rows(run_dir / "metrics.csv", rows))
        return SearchResult(config, run_dir, result.ticket, result.accuracy, result.search_epochs,
                            result.finetune_epochs, seconds, rows, result.extra, finished_before=finished)

    def _record_seconds(self) -> float:
        """The run's wall seconds so far, summed over every process that worked on it, written to
        wall_time.json (unless this process writes nothing) and returned."""
        seconds = self._seconds_before + time.perf_counter() - self._started
        self._write(lambda: write_text(self.run_dir / WALL_TIME_FILE, json.dumps({"seconds": seconds})))
        return seconds

    def _log_row(self, row: dict, search: TicketSearch) -> None:
        """One line per epoch: phase, epoch, loss, accuracy, the method's metrics, the phase's ETA (and the
        run's wall time so far, kept in wall_time.json so that a kill loses at most an epoch of it)."""
        self._record_seconds()
        phase = row["phase"]
        epochs = search.epochs[phase]
        start, first = self._phase_start.setdefault(phase, (search.phase_started, row["epoch"]))
        elapsed = time.perf_counter() - start
        parts = [f"{row['phase']} {row['epoch']}/{epochs}"]
        if "round" in row:
            parts.append(f"round {row['round']} steps {row['first_step']}-{row['last_step']}")
        parts += [f"loss {row['loss']:.4f}", f"acc {row['test_accuracy']:.3f}"]
        for key in ("density", "mask_density", "max_distance", "mean_distance"):
            if key not in row:
                continue
            if row[key] != row[key]:  # NaN: the first mask has no older one to compare with
                if key == "max_distance":
                    parts.append("no mask distance yet (first mask)")
                continue
            parts.append(f"{key.replace('_', ' ')} {row[key]:.3f}")
        if "round_test_accuracy" in row:
            parts.append(f"acc before pruning {row['round_test_accuracy']:.3f}")
        if "truncating" in row:
            parts.append("truncating" if row["truncating"] else "not truncating")
        remaining = elapsed / max(row["epoch"] - first + 1, 1) * (epochs - row["epoch"])
        parts.append(f"ETA of this phase {remaining:.0f}s")
        self.log(" | ".join(parts))
