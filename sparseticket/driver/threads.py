"""How many CPU threads a process of the command line or of reproduce uses: at most the free cores.

Two threads on two cores, one of them busy with other work, made a digits run twice as slow as one
thread (and ``compare`` took minutes instead of seconds): torch's intra-op threads wait for each
other at every op, and one of them keeps losing its core. So the default is the number of usable
cores (this process's CPU affinity) that were idle when measured, at least 1, shared among the
processes ``torchrun`` starts on this machine. ``--threads`` overrides it; so does
``OMP_NUM_THREADS``. ``sparseticket info`` shows the choice.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STAT = Path("/proc/stat")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times(cores: set[int]) -> tuple[float, float]:
    """(idle, total) jiffies summed over ``cores``, from /proc/stat."""
    idle = total = 0.0
    for line in STAT.read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cores:
            continue
        values = [float(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle += values[3] + values[4]
        total += sum(values)
    return idle, total


def idle_cores(sample_s: float = 0.2) -> float:
    """How many of the usable cores were idle over ``sample_s`` seconds (all of them where /proc/stat
    cannot tell)."""
    usable = usable_cores()
    try:
        cores = os.sched_getaffinity(0)
        idle_before, total_before = _cpu_times(cores)
        time.sleep(sample_s)
        idle_after, total_after = _cpu_times(cores)
    except (AttributeError, OSError, ValueError):
        return float(usable)
    elapsed = total_after - total_before
    if elapsed <= 0:
        return float(usable)
    return usable * (idle_after - idle_before) / elapsed


def default_threads(idle: float, usable: int, processes_here: int = 1) -> int:
    """Threads per process: the idle cores (rounded, at least 1, at most ``usable``) shared among
    ``processes_here`` processes of this machine."""
    free = max(1, min(usable, int(idle + 0.5)))
    return max(1, free // max(1, processes_here))


def choose_threads(requested: int | None) -> tuple[int, str]:
    """The threads this process should use and why (for ``info`` and the log): ``requested``
    (``--threads``) wins, then ``OMP_NUM_THREADS``, then ``default_threads``."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        return requested, "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        try:
            return max(1, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS"
        except ValueError:
            pass  # not a number: torch ignores it too
    usable, idle = usable_cores(), idle_cores()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # torchrun's processes on this machine
    threads = default_threads(idle, usable, local)
    shared = f", shared by {local} processes" if local > 1 else ""
    return threads, f"{idle:.1f} of {usable} usable cores idle when measured{shared}"
