"""Atomic writes: a file is either its old content or its complete new content, never a mix."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from sparseticket.methods.ticket import default_file_mode


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``, then rename the temporary file onto ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, default_file_mode())  # mkstemp's 0o600 -> what open() would give
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_text(path: Path, text: str) -> None:
    """Atomically write a text file."""
    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
    atomic_write(path, write)


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


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain values only) onto ``device``."""
    return torch.load(path, weights_only=True, map_location=device)
