"""Loads the C++ CPU kernels (``sparseticket._C``), registered as ``torch.ops.sparseticket_cpu``."""

from __future__ import annotations

import os
from types import ModuleType

import torch


def _load() -> tuple[object | None, str]:
    if os.environ.get("SPARSETICKET_DISABLE_CPP") == "1":
        return None, "disabled by SPARSETICKET_DISABLE_CPP=1"
    try:
        import sparseticket._C  # noqa: F401  (importing registers the ops)
    except ImportError as error:
        return None, f"the C++ extension is not built ({error})"
    return torch.ops.sparseticket_cpu, ""


CPP_KERNELS, CPP_UNAVAILABLE_REASON = _load()


def cpp_kernels() -> ModuleType | None:
    """The C++ op namespace (same function names as ``sparseticket.reference``), or None."""
    return CPP_KERNELS
