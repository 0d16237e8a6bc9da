"""The run folder's files: text, CSV rows, checkpoints and tickets, each written atomically and
flushed to disk through ``sparseticket.files.atomic_write``."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from sparseticket.files import atomic_write, atomic_write_text, keep_previous, remove_leftover_temporaries
from sparseticket.methods.ticket import Ticket

__all__ = ["PREVIOUS_CHECKPOINT", "keep_previous", "load_checkpoint", "remove_leftover_temporaries",
           "save_checkpoint", "save_ticket", "write_rows", "write_text"]

PREVIOUS_CHECKPOINT = "checkpoint.previous.pt"  # the checkpoint before checkpoint.pt, read when that one is not


def write_text(path: Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write_text(path, text)


def write_rows(path: Path, rows: list[dict]) -> None:
    """Atomically write dict rows as CSV (columns: union of keys, in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]

    def write(temporary: str) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(path, write)


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically ``torch.save`` a checkpoint."""
    atomic_write(path, lambda temporary: torch.save(state, temporary))


def save_ticket(path: Path, ticket: Ticket) -> None:
    """Atomically save a ticket, flushed to disk like every other file of the run."""
    ticket.save(path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain values only) onto ``device``.

    ValueError, naming the file and what to do, if it cannot be read.
    """
    try:
        return torch.load(path, weights_only=True, map_location=device)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors alike: one clear message
        raise ValueError(f"{path} cannot be read ({type(error).__name__}: {error}); delete it to redo the "
                         "step that wrote it (checkpoint.pt: the search restarts at epoch 1), or delete "
                         "the run folder to start over") from error
