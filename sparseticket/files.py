"""Atomic file writes: a file is either its old content or its complete new content, never a mix.

Every file sparseticket writes (tickets, checkpoints, metrics, summaries, plots, trainer-callback
states) goes through ``atomic_write``: the content goes to a temporary file beside the target, is
flushed to disk (``fsync``), then renamed onto the target (``os.replace``) and the rename flushed
(``fsync`` of the folder). A ``kill -9`` or a power cut at any moment leaves the old file or the new
one, plus at most a temporary file (``.NAME.XXXXXXXX.tmp``) that ``remove_leftover_temporaries``
deletes. This module is the bottom layer: it imports nothing from sparseticket.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

KILL_AT_VARIABLE = "SPARSETICKET_TEST_KILL_AT"
_KILL_POINTS = ("mid-write", "after-write")
_writes_so_far: dict[str, int] = {}  # file name -> atomic writes of it by this process

# The temporary file of a write that a kill cut short: ".NAME.XXXXXXXX.tmp" (mkstemp's random part).
_LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def default_file_mode() -> int:
    """The permissions ``open()`` would give a new file (0o666 less the umask); ``mkstemp`` gives 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _kill_point() -> tuple[str, str, int] | None:
    """The parsed ``SPARSETICKET_TEST_KILL_AT`` (when, file name, n), or None when unset or when this
    process is a restart of an elastic run (``TORCHELASTIC_RESTART_COUNT`` > 0: the fault is injected
    into the first attempt only, so that ``torchrun --max-restarts`` can be tested)."""
    value = os.environ.get(KILL_AT_VARIABLE)
    if not value or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    when, _, rest = value.partition(":")
    name, _, count = rest.rpartition(":")
    if when not in _KILL_POINTS or not name or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{KILL_AT_VARIABLE} must be 'mid-write:FILE:N' or 'after-write:FILE:N' "
                         f"(N >= 1), got {value!r}")
    return when, name, int(count)


def _maybe_kill(when: str, path: Path, temporary: str | None = None) -> None:
    """Fault injection for tests only: SIGKILL this process at the point ``SPARSETICKET_TEST_KILL_AT`` names.

    ``mid-write:checkpoint.pt:3`` kills during this process's 3rd write of ``checkpoint.pt``, after
    cutting its temporary file to half its length (a write stopped halfway) and before the rename;
    ``after-write:checkpoint.pt:3`` kills just after the 3rd write is in place. Unset (always,
    outside tests), it does nothing. A real SIGKILL: no handler, no cleanup runs.
    """
    point = _kill_point()
    if point is None or point != (when, path.name, _writes_so_far.get(path.name, 0)):
        return
    if temporary is not None:
        os.truncate(temporary, os.path.getsize(temporary) // 2)
    os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: str | Path) -> None:
    """Flush a file's content, or a folder's entries, to disk (folders: POSIX only)."""
    if os.path.isdir(path) and os.name != "posix":
        return  # Windows cannot open a folder for fsync; its rename is as durable as it gets
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _rename(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put ``source`` in ``target``'s place in one step (the package's one rename of a file)."""
    os.replace(source, target)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)``, flush it to disk, then rename the temporary file onto ``path``.

    The folder must exist. The new file gets the permissions ``open()`` would give it. On any error
    (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` keeps its old content.
    Returns ``path`` as a ``Path``.
    """
    path = Path(path)
    _writes_so_far[path.name] = _writes_so_far.get(path.name, 0) + 1
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:  # a read-only or missing folder, no space: say which file
        raise _write_error(path, error) from error
    os.close(handle)
    try:
        write(temporary)
        _maybe_kill("mid-write", path, temporary)
        os.chmod(temporary, default_file_mode())
        _fsync(temporary)
        _rename(temporary, path)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if _failed_writing(error):
            raise _write_error(path, error) from error
        raise
    _fsync(path.parent)
    _maybe_kill("after-write", path)
    return path


def _failed_writing(error: BaseException) -> bool:
    """Whether ``error`` is the file system refusing a write: an OSError without a file name (a full
    disk, a file size limit), or torch's C++ stream writer reporting one (``basic_ios::clear``)."""
    if isinstance(error, OSError):
        return error.filename is None
    text = str(error)
    markers = ("basic_ios", "PytorchStreamWriter failed", "file write failed", "inline_container")
    return isinstance(error, RuntimeError) and any(marker in text for marker in markers)


def _write_error(path: Path, error: BaseException) -> OSError:
    """An OSError naming ``path`` and the cause."""
    if isinstance(error, OSError):
        return OSError(error.errno, f"cannot write {path}: {error.strerror or error}")
    return OSError(f"cannot write {path}: {' '.join(str(error).split())}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda temporary: Path(temporary).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def keep_previous(path: str | os.PathLike, previous: str | os.PathLike) -> None:
    """Make ``previous`` another name of ``path``'s current file (a hard link, swapped in atomically)
    before ``path`` is replaced: the file it held stays readable there. Best effort: where the file
    system has no hard links, nothing is kept."""
    previous = Path(previous)
    temporary = previous.with_name(f".{previous.name}.prevlink.tmp")  # a leftover if killed: removed on resume
    try:
        temporary.unlink(missing_ok=True)
        os.link(path, temporary)
        _rename(temporary, previous)
    except OSError:
        temporary.unlink(missing_ok=True)


def remove_leftover_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files that killed writes left in ``folder``; returns their names.

    Only for a folder no other process is writing to: another writer's temporary file would go.
    """
    folder = Path(folder)
    removed = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        if entry.is_file() and _LEFTOVER.fullmatch(entry.name):
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


class FolderInUse(ValueError):
    """Another process holds a folder's exclusive lock (``lock_folder``)."""


def lock_folder(folder: str | os.PathLike) -> Callable[[], None]:
    """Take an exclusive lock on ``folder`` (which must exist) for this process; returns the function
    that releases it. ``FolderInUse`` naming the holder's PID when another process has it.

    The lock is the kernel's ``flock`` on the folder itself: no lock file is written, and the
    kernel releases it when its holder exits, however it exits (``kill -9`` included), so a lock is
    never stale. Processes on one machine see each other's locks; on platforms without ``fcntl``
    (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return lambda: None
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _flock_holder(descriptor)
        os.close(descriptor)
        who = f"process {holder}" if holder is not None else "another process"
        raise FolderInUse(f"{folder} is in use by {who} (another search or --resume of the same run): wait for it "
                          "to finish, or stop it, then run this again") from None
    except BaseException:
        os.close(descriptor)
        raise
    return lambda: os.close(descriptor)  # closing the descriptor releases the lock


def _flock_holder(descriptor: int) -> int | None:
    """The PID holding a flock on the file open as ``descriptor``, read from /proc/locks (Linux), else None."""
    info = os.fstat(descriptor)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 12345 08:01:1234 0 EOF" (blocked waiters have "->")
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and "->" not in parts and parts[5] == device:
            return int(parts[4])
    return None
