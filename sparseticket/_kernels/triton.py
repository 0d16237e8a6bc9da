"""Loads the Triton kernels when triton is importable; knows whether its interpreter is on."""

from __future__ import annotations

import os
from types import ModuleType

# Triton 3.9 warns on every import until this is set; keep its documented default (fusion on).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get("SPARSETICKET_DISABLE_TRITON") == "1":
        return None, "disabled by SPARSETICKET_DISABLE_TRITON=1"
    try:
        import sparseticket.triton_kernels as kernels
    except ImportError as error:
        return None, f"triton is not importable ({error})"
    return kernels, ""


TRITON_KERNELS, TRITON_UNAVAILABLE_REASON = _load()


def triton_kernels() -> ModuleType | None:
    """The Triton launchers (same function names as ``sparseticket.reference``), or None."""
    return TRITON_KERNELS


def interpreter_on() -> bool:
    """Whether Triton runs through its CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    if TRITON_KERNELS is None:
        return False
    from triton import knobs

    return bool(knobs.runtime.interpret)
