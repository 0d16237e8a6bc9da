"""``find_ticket``: search -> ticket -> fine-tune -> evaluate, for any registered method.

The one search driver: the command line (run folders, resume, tables), ``compare``, ``reproduce``
and the reports all run their searches through it. It owns the training loop
(``driver.training.train_steps``); a ``RunStore`` keeps its checkpoints (in memory by default; the
command line's run folder writes them to disk atomically, so a run stopped at any moment resumes
with the same result), ``on_row`` receives each epoch's metrics, and ``progress`` shows bars.

Under ``torch.distributed`` pass ``processes``: every rank runs the same search on its shard of
each global batch with the model wrapped in ``DistributedDataParallel``; only rank 0's store
writes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from sparseticket.builtin.data import Split
from sparseticket.driver.data import Batch, TrainingData
from sparseticket.driver.jobs import EpochPlan, Job, make_job
from sparseticket.driver.processes import Processes, global_mean
from sparseticket.driver.recipe import Schedule
from sparseticket.driver.training import accuracy, evaluate, train_steps
from sparseticket.methods import Ticket

Row = dict[str, Any]


class TrainingDiverged(ValueError):
    """An epoch's mean training loss is NaN or infinite: the run stops rather than save what it made."""


class RunStore(Protocol):
    """Where a search keeps what it needs to resume: the latest checkpoint and the search's outcome."""

    def load_checkpoint(self) -> dict | None:
        """The latest ``save_checkpoint`` state, or None to start from scratch."""

    def save_checkpoint(self, state: dict) -> None:
        """Keep ``state`` (called after every epoch)."""

    def save_searched(self, ticket: Ticket, searched: dict) -> None:
        """Keep the search's ticket and the searched model and method state."""

    def load_searched(self) -> tuple[Ticket, dict]:
        """What ``save_searched`` kept (a resumed fine-tuning starts from it)."""


class MemoryStore:
    """A ``RunStore`` that keeps snapshots in memory (deep copies: later training does not change
    them; nothing survives the process)."""

    def __init__(self) -> None:
        self.checkpoint: dict | None = None
        self.searched: tuple[Ticket, dict] | None = None

    def load_checkpoint(self) -> dict | None:
        """The latest checkpoint (a copy)."""
        return copy.deepcopy(self.checkpoint)

    def save_checkpoint(self, state: dict) -> None:
        """Keep a snapshot of the checkpoint."""
        self.checkpoint = copy.deepcopy(state)

    def save_searched(self, ticket: Ticket, searched: dict) -> None:
        """Keep a snapshot of the search's outcome."""
        self.searched = copy.deepcopy((ticket, searched))

    def load_searched(self) -> tuple[Ticket, dict]:
        """The search's outcome."""
        if self.searched is None:
            raise ValueError("the store holds no finished search")
        return self.searched


@dataclass
class TicketResult:
    """What ``find_ticket`` returns."""

    ticket: Ticket
    accuracy: float  # clean test accuracy of the fine-tuned ticket
    search_epochs: int
    finetune_epochs: int
    seconds: float  # wall time of this call (a resumed run: the resumed part)
    search_seconds: float = 0.0  # of which the search (this call's part of it)
    rows: list[Row] = field(default_factory=list)  # one per search and fine-tuning epoch
    extra: dict[str, Any] = field(default_factory=dict)  # found/trigger epochs, distance history, prune report
    model: nn.Module | None = None  # the fine-tuned network
    job: Job | None = None  # what drove the method (its ``method``, IMP's ``rewound_copy`` ...)


def _no_progress(batches: Iterable[Batch], total: int, label: str) -> Iterable[Batch]:
    return batches


def _tqdm_progress(batches: Iterable[Batch], total: int, label: str) -> Iterable[Batch]:
    from tqdm import tqdm

    return tqdm(batches, desc=label, total=total, leave=False)


class TicketSearch:
    """One resumable search of one method: ``run()`` returns a ``TicketResult``."""

    def __init__(self, method: str, model: nn.Module, data: TrainingData, schedule: Schedule, *,
                 options: Mapping[str, Any] | None = None, store: RunStore | None = None,
                 on_row: Callable[[Row], None] | None = None, log: Callable[[str], None] | None = None,
                 progress: bool = False,
                 processes: Processes | None = None, evaluate_every_epoch: bool = True,
                 job_options: Mapping[str, Any] | None = None) -> None:
        self.processes = processes if processes is not None else Processes()
        self.method_name, self.model, self.data, self.schedule = method, model, data, schedule
        self.options = dict(options or {})
        self.store = store if store is not None else MemoryStore()
        self.on_row = on_row if on_row is not None and self.processes.is_main else (lambda _row: None)
        self.log = log if log is not None and self.processes.is_main else (lambda _message: None)
        self.progress = _tqdm_progress if progress and self.processes.is_main and sys.stderr.isatty() \
            else _no_progress
        self.evaluate_every_epoch = evaluate_every_epoch
        self.job_options = dict(job_options or {})
        self._wrapped: dict[int, nn.Module] = {}
        self.epochs: dict[str, int] = {}  # phase -> its epochs, known once that phase starts
        self.phase_started = time.perf_counter()  # when the current phase (or its resumed part) started

    def _network(self, model: nn.Module) -> nn.Module:
        """What the loop calls: ``model``, or its (one) DDP wrapper when distributed."""
        if not self.processes.distributed:
            return model
        if id(model) not in self._wrapped:
            from torch.nn.parallel import DistributedDataParallel

            self._wrapped[id(model)] = DistributedDataParallel(model)
        return self._wrapped[id(model)]

    def _train(self, model: nn.Module, phase: str, plan: EpochPlan, label: str, *, optimizer: Any, scheduler: Any,
               after_backward: tuple, after_step: tuple) -> float:
        """One epoch of ``plan`` through the one training loop; the mean loss over every process."""
        batches: Iterable[Batch] = self.data.batches(phase, plan.data_epoch)
        if plan.skip:
            batches = islice(batches, plan.skip, None)
        batches = self.progress(batches, max(self.data.steps_per_epoch - plan.skip, 0), label)
        total, count = train_steps(self._network(model), batches, optimizer=optimizer, scheduler=scheduler,
                                   after_backward=after_backward, after_step=after_step)
        loss = global_mean(total, count, self.processes)  # the same on every process: all of them stop
        if not math.isfinite(loss):
            raise TrainingDiverged(f"{label}: the training loss is {loss}: training diverged (a learning rate too "
                                   "large?); nothing is written from this epoch")
        return loss

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate(model, self.data.split, ndigits=6) if self.evaluate_every_epoch else {}

    def run(self) -> TicketResult:
        """Run (or resume from the store) the search and the fine-tuning."""
        start = time.perf_counter()
        model, store = self.model, self.store
        pristine = copy.deepcopy(model)  # the initial weights, before any method attaches itself
        job = make_job(self.method_name, model, self.options, self.schedule, self.data, **self.job_options)
        job.pristine = pristine
        state = store.load_checkpoint()
        self._check_same_checkpoint(state)
        rows: list[Row] = list(state["rows"]) if state else []
        search_seconds = 0.0
        if state is None or state["phase"] == "search":
            ticket, search_epochs = self._search(job, state, rows)
            search_seconds = time.perf_counter() - start
            searched = {"model": model.state_dict(), "method": job.state_dict()}
            self._main_only(lambda: store.save_searched(ticket, searched))
            state = None
        else:  # resuming the fine-tuning: the search's outcome is in the store
            ticket, searched = store.load_searched()
            search_epochs = state["search_epochs"]
        model.load_state_dict(searched["model"])
        job.load_state_dict(searched["method"])
        if job.fine_tunes():
            tuning = job.fine_tuning(ticket, pristine)
            self._finetune(tuning, state, rows, search_epochs)
            final, finetune_epochs = tuning.model, len(tuning.plans)
        else:  # the searched network is the result
            final, finetune_epochs = model, 0
        final_accuracy = accuracy(final, self.data.split.test_loader())
        return TicketResult(ticket, final_accuracy, search_epochs, finetune_epochs, time.perf_counter() - start,
                            search_seconds, rows, job.report(), final, job)

    def _main_only(self, write: Callable[[], None]) -> None:
        if self.processes.is_main:
            write()

    def _save_checkpoint(self, state: dict) -> None:
        if self.processes.is_main:
            self.store.save_checkpoint(state)

    def _check_same_checkpoint(self, state: dict | None) -> None:
        """Under torch.distributed: every rank resumes from the same point (phase and epoch, or none),
        or all of them raise (a rank that read another file would train another run)."""
        if not self.processes.distributed:
            return
        phase = {None: 0, "search": 1, "finetune": 2}.get(None if state is None else state["phase"], 3)
        point = torch.tensor([phase, -1 if state is None else state["epoch"]], dtype=torch.int64)
        device = self.processes.device if self.processes.device.type == "cuda" else torch.device("cpu")
        low, high = point.to(device), point.to(device).clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(f"rank {self.processes.rank}: the ranks resume from different checkpoints (phase, "
                               f"epoch from {low.tolist()} to {high.tolist()}): every rank must read the same run "
                               "folder")

    @contextlib.contextmanager
    def _restoring(self, phase: str) -> Iterator[None]:
        """Turn a checkpoint that does not fit this run (another method, model or optimizer: a key,
        shape or type mismatch) into one ValueError naming the checkpoint."""
        try:
            yield
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
            where = getattr(self.store, "checkpoint_path", "the checkpoint")
            detail = " ".join(str(error).split()) or type(error).__name__
            detail = detail if len(detail) <= 240 else detail[:237] + "..."
            raise ValueError(f"{where} does not fit this run's {phase} (another method, model or optimizer?): "
                             f"{detail}. Delete it to restart that phase, or the run folder to start "
                             "over") from error

    def _search(self, job: Job, state: dict | None, rows: list[Row]) -> tuple[Ticket, int]:
        model, first, done = self.model, 1, False
        if state is not None:
            with self._restoring("search"):
                model.load_state_dict(state["model"])
                if job.optimizer is not None:
                    job.optimizer.load_state_dict(state["optimizer"])
                if job.scheduler is not None and state.get("scheduler"):
                    job.scheduler.load_state_dict(state["scheduler"])
                job.load_state_dict(state["method"])
            first, done = state["epoch"] + 1, state.get("search_done", False)
            if not done:
                self.log(f"resuming at search epoch {first}")
        epoch = first - 1
        self.epochs["search"], self.phase_started = job.search_epochs, time.perf_counter()
        while not done and epoch < job.search_epochs:
            epoch += 1
            loss = self._train(model, "search", job.plan(epoch), f"search {epoch}/{job.search_epochs}",
                               optimizer=job.optimizer, scheduler=job.scheduler,
                               after_backward=(job.after_backward,), after_step=(job.after_step,))
            done, metrics = job.epoch_end(epoch)
            row = {"phase": "search", "epoch": epoch, "loss": round(loss, 6), **self._evaluate(model), **metrics}
            rows.append(row)
            self.on_row(row)
            checkpoint = {
                "phase": "search", "epoch": epoch, "model": model.state_dict(),
                "optimizer": job.optimizer.state_dict() if job.optimizer is not None else {},
                "scheduler": job.scheduler.state_dict() if job.scheduler is not None else {},
                "method": job.state_dict(), "rows": rows, "search_done": done}
            self._save_checkpoint(checkpoint)
        ticket = job.ticket()  # collective (e.g. the baselines' checksums): on every rank
        return ticket, epoch

    def _finetune(self, tuning: Any, state: dict | None, rows: list[Row], search_epochs: int) -> None:
        first = 1
        if state is not None and state["phase"] == "finetune":
            with self._restoring("fine-tuning"):
                tuning.model.load_state_dict(state["model"])
                if tuning.optimizer is not None:
                    tuning.optimizer.load_state_dict(state["optimizer"])
                if tuning.scheduler is not None and state.get("scheduler"):
                    tuning.scheduler.load_state_dict(state["scheduler"])
            first = state["epoch"] + 1
            self.log(f"resuming at fine-tune epoch {first}")
        epochs = len(tuning.plans)
        self.epochs["finetune"], self.phase_started = epochs, time.perf_counter()
        for epoch in range(first, epochs + 1):
            loss = self._train(tuning.model, tuning.phase, tuning.plans[epoch - 1], f"fine-tune {epoch}/{epochs}",
                               optimizer=tuning.optimizer, scheduler=tuning.scheduler,
                               after_backward=tuning.after_backward, after_step=tuning.after_step)
            row = {"phase": "finetune", "epoch": epoch, "loss": round(loss, 6), **self._evaluate(tuning.model)}
            rows.append(row)
            self.on_row(row)
            checkpoint = {"phase": "finetune", "epoch": epoch, "model": tuning.model.state_dict(),
                          "optimizer": tuning.optimizer.state_dict() if tuning.optimizer is not None else {},
                          "scheduler": tuning.scheduler.state_dict() if tuning.scheduler is not None else {},
                          "rows": rows, "search_epochs": search_epochs}
            self._save_checkpoint(checkpoint)


def find_ticket(method: str, model: nn.Module, data: Split | TrainingData, schedule: Schedule | None = None, *,
                seed: int = 0, progress: bool = False, on_row: Callable[[Row], None] | None = None,
                log: Callable[[str], None] | None = None, store: RunStore | None = None,
                processes: Processes | None = None,
                **options: Any) -> TicketResult:
    """Find a ticket with registered method ``method`` (``sparseticket.METHODS`` or ``BASELINES``),
    fine-tune it and test it.

    ``model``: the network at its initialization (changed in place by the search). ``data``: a
    ``Split`` (shuffled batches of ``schedule.batch_size``, orders fixed by ``seed``) or a
    ``TrainingData`` with batches of your own. ``options``: the method's own keyword arguments
    (``ratio=0.5``, ``density=0.05``, ``rewind_step="1ep"`` ...; an unknown one is a ValueError).
    ``on_row(row)``: each epoch's metrics; ``log(message)``: what else there is to say. ``store``:
    where checkpoints go (default: memory; a store holding a checkpoint resumes from it).

    >>> result = find_ticket("worm", model, load_digits_split(), Schedule(epochs=20, finetune_epochs=10))
    >>> result.ticket, result.accuracy
    """
    schedule = schedule if schedule is not None else Schedule()
    processes = processes if processes is not None else Processes()
    if isinstance(data, Split):
        data = TrainingData.from_split(data, schedule.batch_size, seed, processes)
    elif not isinstance(data, TrainingData):
        raise TypeError(f"data must be a Split or a TrainingData, got {type(data).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return TicketSearch(method, model, data, schedule, options=options, store=store, on_row=on_row,
                        log=log, progress=progress, processes=processes).run()
