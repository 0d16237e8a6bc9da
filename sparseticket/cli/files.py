"""Atomic writes: a file is either its old content or its complete new content, never a mix.

Each write goes to a temporary file beside the target, is flushed to disk (``fsync``), then
renamed onto the target (``os.replace``) and the rename flushed (``fsync`` of the folder): a
``kill -9`` or a power cut at any moment leaves the old file or the new one, plus at most a
temporary file that ``remove_leftover_temporaries`` deletes when the run resumes.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from sparseticket.methods.ticket import Ticket, default_file_mode

KILL_AT_VARIABLE = "SPARSETICKET_TEST_KILL_AT"
_KILL_POINTS = ("mid-write", "after-write")
_writes_so_far: dict[str, int] = {}  # file name -> atomic writes of it by this process

# Temporary files of a killed write: ``atomic_write`` (.NAME.XXXXXXXX.tmp), ``Ticket.save``
# (.ticket-XXXXXXXX.tmp) and the plots (.NAME.png.XXXXXXXX.png); XXXXXXXX is mkstemp's random part.
_LEFTOVER = re.compile(r"\.(?:.+\.|ticket-)[a-z0-9_]{8}\.tmp|\..+\.png\.[a-z0-9_]{8}\.png")


def _kill_point() -> tuple[str, str, int] | None:
    """The parsed ``SPARSETICKET_TEST_KILL_AT`` (when, file name, n), or None when unset."""
    value = os.environ.get(KILL_AT_VARIABLE)
    if not value:
        return None
    when, _, rest = value.partition(":")
    name, _, count = rest.rpartition(":")
    if when not in _KILL_POINTS or not name or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{KILL_AT_VARIABLE} must be 'mid-write:FILE:N' or 'after-write:FILE:N' "
                         f"(N >= 1), got {value!r}")
    return when, name, int(count)


def _maybe_kill(when: str, path: Path, temporary: str | None = None) -> None:
    """Fault-injection hook for tests only: SIGKILL this process at the point named by
    ``SPARSETICKET_TEST_KILL_AT``.

    ``mid-write:checkpoint.pt:3`` kills during this process's 3rd write of ``checkpoint.pt``,
    after cutting its temporary file to half its length (a write stopped halfway) and before
    the rename; ``after-write:checkpoint.pt:3`` kills just after the 3rd write is in place.
    Unset (always, outside tests), it does nothing. A real SIGKILL: no handler, no cleanup runs.
    """
    point = _kill_point()
    if point is None or point != (when, path.name, _writes_so_far.get(path.name, 0)):
        return
    if temporary is not None:
        os.truncate(temporary, os.path.getsize(temporary) // 2)
    os.kill(os.getpid(), signal.SIGKILL)


def _fsync_file(path: str) -> None:
    """Flush a file's content to disk (so a crash cannot leave the renamed file empty)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _fsync_directory(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the platform allows it."""
    if os.name != "posix":
        return  # Windows cannot open a folder for fsync; its rename is as durable as it gets
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``, flush it to disk, then rename the temporary file onto ``path``."""
    path = Path(path)
    _writes_so_far[path.name] = _writes_so_far.get(path.name, 0) + 1
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        _maybe_kill("mid-write", path, temporary)
        os.chmod(temporary, default_file_mode())  # mkstemp's 0o600 -> what open() would give
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)
    _maybe_kill("after-write", path)


def remove_leftover_temporaries(folder: Path) -> list[str]:
    """Delete the temporary files that killed writes left in ``folder``; returns their names.

    Only for a folder no other process is writing to: another writer's temporary file would go.
    """
    removed = []
    for entry in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else ():
        if entry.is_file() and _LEFTOVER.fullmatch(entry.name):
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


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


def save_ticket(path: Path, ticket: Ticket) -> None:
    """Atomically save a ticket, flushed to disk like every other file of the run."""
    # Ticket.save is atomic on its own (it renames its own temporary file onto ``temporary``);
    # going through atomic_write adds the fsyncs and the fault-injection point.
    atomic_write(path, ticket.save)


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
