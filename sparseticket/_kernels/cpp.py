"""Loads the C++ CPU kernels (``sparseticket._C``), registered as ``torch.ops.sparseticket_cpu``."""

from __future__ import annotations

import os
from types import ModuleType

import torch


def _load() -> tuple[ModuleType | None, object | None, str]:
    if os.environ.get("SPARSETICKET_DISABLE_CPP") == "1":
        return None, None, "disabled by SPARSETICKET_DISABLE_CPP=1"
    try:
        import sparseticket._C as extension  # importing registers the ops
    except ImportError as error:
        return None, None, f"the C++ extension is not built ({error})"
    return extension, torch.ops.sparseticket_cpu, ""


_EXTENSION, CPP_KERNELS, CPP_UNAVAILABLE_REASON = _load()


def cpp_extension() -> ModuleType | None:
    """The extension module itself (its bound classes, e.g. ``NativeTruncationPlan``), or None."""
    return _EXTENSION


def cpp_kernels() -> ModuleType | None:
    """The C++ op namespace (same function names as ``sparseticket.reference``), or None."""
    return CPP_KERNELS
