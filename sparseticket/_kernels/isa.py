"""The CPU's instruction set, as ``-march=native`` sees it (standard library only: ``setup.py`` reads
this file too, before torch or sparseticket can be imported)."""

from __future__ import annotations

import contextlib
import hashlib
import platform
from pathlib import Path


def instruction_set() -> str:
    """The CPU's architecture and a hash of its feature flags (what ``-march=native`` compiles for)."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    return f"{platform.machine()}-{hashlib.sha256(flags.encode()).hexdigest()[:16]}"
