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
resumes from the same checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from sparseticket.cli.config import RunConfig
from sparseticket.cli.distributed import Processes, global_mean
from sparseticket.cli.files import (
    load_checkpoint,
    remove_leftover_temporaries,
    save_checkpoint,
    save_ticket,
    write_rows,
    write_text,
)
from sparseticket.cli.jobs import make_job
from sparseticket.experiments.datasets import load_dataset
from sparseticket.experiments.models import build_model
from sparseticket.experiments.training import accuracy, evaluate
from sparseticket.methods import Ticket

Log = Callable[[str], None]


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


def _train_epoch(model: nn.Module, loader, optimizer, after_backward, step, progress: bool, label: str,
                 skip: int = 0) -> tuple[float, int]:
    """One epoch, from its batch ``skip`` on (the earlier ones are drawn and dropped, so the
    rest are the whole epoch's); returns (sum of the losses, examples) on this rank."""
    from tqdm import tqdm

    model.train()
    total, count = 0.0, 0
    batches = islice(loader, skip, None) if skip else loader
    for images, labels in tqdm(batches, desc=label, leave=False, disable=not progress,
                               total=max(len(loader) - skip, 0)):
        if optimizer is not None:
            optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        after_backward()
        step()
        total += loss.item() * len(labels)
        count += len(labels)
    return total, count


class Search:
    """One run of one method, resumable from its run folder."""

    def __init__(self, config: RunConfig, run_dir: Path, *, log: Log = print, progress: bool = True,
                 device: str = "cpu", processes: Processes | None = None) -> None:
        self.processes = processes if processes is not None else Processes(device=torch.device(device))
        self.config, self.run_dir = config, run_dir
        self.log = log if self.processes.is_main else (lambda _message: None)
        self.progress = progress and self.processes.is_main
        self.device = self.processes.device
        self.checkpoint_path = run_dir / "checkpoint.pt"
        self._wrapped: dict[int, nn.Module] = {}

    def _write(self, write: Callable[[], None]) -> None:
        """Run a file write on rank 0 only."""
        if self.processes.is_main:
            write()

    def _remove_leftovers(self) -> None:
        """Delete the temporary files of writes that a kill cut short (nothing ever reads them)."""
        removed = remove_leftover_temporaries(self.run_dir)
        if removed:
            self.log(f"removed {len(removed)} temporary file(s) of an interrupted write: {', '.join(removed)}")

    def _network(self, model: nn.Module) -> nn.Module:
        """What the training loop calls: ``model`` itself, or its (one) DDP wrapper when distributed."""
        if not self.processes.distributed:
            return model
        if id(model) not in self._wrapped:
            from torch.nn.parallel import DistributedDataParallel

            self._wrapped[id(model)] = DistributedDataParallel(model)
        return self._wrapped[id(model)]

    def _loader(self, seed: int, batch_size: int | None = None):
        """This rank's shard of the global batches (``--batch-size``, or ``batch_size`` rounded down
        to a multiple of the number of processes)."""
        world = self.processes.world_size
        size = self.config.batch_size if batch_size is None else max(world, batch_size - batch_size % world)
        return self.data.sharded_loader(size, seed, self.processes.rank, world)

    def _steps_per_epoch(self) -> int:
        """Batches per epoch on this rank (what ``len(self._loader(seed))`` is, without building one):
        ``DistributedSampler`` pads the training set to a multiple of the number of processes."""
        world = self.processes.world_size
        per_rank = -(-len(self.data.train_labels) // world)
        return -(-per_rank // (self.config.batch_size // world))

    def _epoch_loss(self, total_and_count: tuple[float, int]) -> float:
        return global_mean(*total_and_count, self.processes)

    def _model(self, data) -> nn.Module:
        shape = data.train_images.shape
        model = build_model(self.config.model, classes=data.classes, in_channels=shape[1],
                            image_size=shape[-1], width=self.config.width)
        return model.to(self.device)

    def run(self) -> SearchResult:
        """Run (or resume) the search and the fine-tuning; write the run folder."""
        config, run_dir = self.config, self.run_dir
        if config.batch_size % self.processes.world_size:
            raise ValueError(f"--batch-size {config.batch_size} (the global batch) must be a multiple of the "
                             f"number of processes ({self.processes.world_size})")
        self._write(lambda: run_dir.mkdir(parents=True, exist_ok=True))
        self._write(self._remove_leftovers)
        self._write(lambda: write_text(run_dir / "config.json", config.to_json()))
        start = time.perf_counter()
        data = self.data = load_dataset(config.data, data_dir=config.data_dir, seed=config.seed,
                                        augment=config.augment).to(self.device)
        torch.manual_seed(config.seed)
        model = self._model(data)
        if (run_dir / "init.pt").exists():
            model.load_state_dict(load_checkpoint(run_dir / "init.pt", self.device))
        else:  # every rank built the same seeded model; rank 0 keeps it for --resume
            self._write(lambda: save_checkpoint(run_dir / "init.pt", model.state_dict()))
        initial = {key: value.clone() for key, value in model.state_dict().items()}
        job = make_job(config, model, data, steps_per_epoch=self._steps_per_epoch())
        job.batch_loader = self._loader
        job.fresh_model = lambda: self._model(data)
        state = load_checkpoint(self.checkpoint_path, self.device) if self.checkpoint_path.exists() else None
        rows: list[dict] = list(state["rows"]) if state else []
        search_done_epoch = 0

        if state is None or state["phase"] == "search":
            first = 1
            if state is not None:
                model.load_state_dict(state["model"])
                if job.optimizer is not None:
                    job.optimizer.load_state_dict(state["optimizer"])
                if job.scheduler is not None and state.get("scheduler"):
                    job.scheduler.load_state_dict(state["scheduler"])
                job.load_state_dict(state["method"])
                first = state["epoch"] + 1
                self.log(f"resuming {run_dir.name} at search epoch {first}")
            search_done_epoch = first - 1
            done = state is not None and state.get("search_done", False)
            epoch = first - 1
            search_start = time.perf_counter()
            while not done and epoch < job.search_epochs:
                epoch += 1
                plan = job.plan(epoch)
                loss = self._epoch_loss(_train_epoch(
                    self._network(model), self._loader(config.seed * 100_003 + plan.data_epoch), job.optimizer,
                    job.after_backward, job.step, self.progress, f"search {epoch}/{job.search_epochs}", plan.skip))
                done, metrics = job.epoch_end(epoch)
                row = {"phase": "search", "epoch": epoch, "loss": round(loss, 6),
                       **evaluate(model, data, ndigits=6), **metrics}
                rows.append(row)
                self._log_row(row, job.search_epochs, search_start, first)
                checkpoint = {
                    "phase": "search", "epoch": epoch, "model": model.state_dict(),
                    "optimizer": job.optimizer.state_dict() if job.optimizer is not None else {},
                    "scheduler": job.scheduler.state_dict() if job.scheduler is not None else {},
                    "method": job.state_dict(), "rows": rows, "search_done": done}
                self._write(lambda: save_checkpoint(self.checkpoint_path, checkpoint))
            search_done_epoch = epoch
            ticket = job.ticket()  # collective (e.g. the baselines' checksums): on every rank
            self._write(lambda: save_ticket(run_dir / "ticket.safetensors", ticket))
            searched = {"model": model.state_dict(), "method": job.state_dict()}
            self._write(lambda: save_checkpoint(run_dir / "searched.pt", searched))
            state = None
        else:  # resuming the fine-tuning: the search's results are in the run folder
            ticket = Ticket.load(run_dir / "ticket.safetensors")
            searched = load_checkpoint(run_dir / "searched.pt", self.device)
        model.load_state_dict(searched["model"])
        job.load_state_dict(searched["method"])
        finetuned, hook = job.finetune_model(ticket, initial, data.test_images[:16])
        optimizer = torch.optim.SGD(finetuned.parameters(), lr=config.finetune_lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        first = 1
        if state is not None and state["phase"] == "finetune":
            finetuned.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            first = state["epoch"] + 1
            search_done_epoch = state["search_epochs"]
            self.log(f"resuming {run_dir.name} at fine-tune epoch {first}")
        else:
            search_done_epoch = max(search_done_epoch, max((r["epoch"] for r in rows if r["phase"] == "search"),
                                                           default=0))
        finetune_start = time.perf_counter()
        for epoch in range(first, config.finetune_epochs + 1):
            loss = self._epoch_loss(_train_epoch(
                self._network(finetuned), self._loader(config.seed * 100_003 + 50_000 + epoch), optimizer,
                hook, optimizer.step, self.progress, f"fine-tune {epoch}/{config.finetune_epochs}"))
            row = {"phase": "finetune", "epoch": epoch, "loss": round(loss, 6),
                   **evaluate(finetuned, data, ndigits=6)}
            rows.append(row)
            self._log_row(row, config.finetune_epochs, finetune_start, first)
            checkpoint = {"phase": "finetune", "epoch": epoch, "model": finetuned.state_dict(),
                          "optimizer": optimizer.state_dict(), "rows": rows, "search_epochs": search_done_epoch}
            self._write(lambda: save_checkpoint(self.checkpoint_path, checkpoint))
        final_accuracy = accuracy(finetuned, data.test_loader())
        self._write(lambda: write_rows(run_dir / "metrics.csv", rows))
        extra = {}
        report = getattr(job, "prune_report", None)
        if report is not None:
            extra["prune_report"] = report
        if hasattr(job, "search_steps"):  # IMP: later rounds start mid-round, so epochs count partial ones
            extra["search_steps"], extra["steps_per_epoch"] = job.search_steps, job.steps_per_epoch
        if hasattr(job, "method") and hasattr(job.method, "history"):
            extra["history"] = job.method.history
            extra["found_epoch"] = job.method.found_epoch
            extra["trigger_epoch"] = getattr(job.method, "trigger_epoch", None)
        return SearchResult(config, run_dir, ticket, final_accuracy, search_done_epoch, config.finetune_epochs,
                            time.perf_counter() - start, rows, extra)

    def _log_row(self, row: dict, epochs: int, start: float, first: int) -> None:
        elapsed = time.perf_counter() - start
        parts = [f"{row['phase']} {row['epoch']}/{epochs}"]
        if "round" in row:
            parts.append(f"round {row['round']} steps {row['first_step']}-{row['last_step']}")
        parts += [f"loss {row['loss']:.4f}", f"acc {row['test_accuracy']:.3f}"]
        for key in ("density", "mask_density", "max_distance", "mean_distance"):
            if key in row:
                parts.append(f"{key.replace('_', ' ')} {row[key]:.3f}")
        if "round_test_accuracy" in row:
            parts.append(f"acc before pruning {row['round_test_accuracy']:.3f}")
        if "truncating" in row:
            parts.append("truncating" if row["truncating"] else "not truncating")
        remaining = elapsed / max(row["epoch"] - first + 1, 1) * (epochs - row["epoch"])
        parts.append(f"ETA of this phase {remaining:.0f}s")
        self.log(" | ".join(parts))
