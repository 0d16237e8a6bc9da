"""Loads the C++ CPU kernels, registered as ``torch.ops.sparseticket_cpu``.

First the extension built at install time (``sparseticket._C``: ``pip install --no-build-isolation``,
the fast path). When there is none, or it does not load for the running torch (built against
another version), the kernels are built on first use from the shipped sources and cached
(``sparseticket._kernels.jit``). When neither works, the reason is kept and the ops use the
plain-PyTorch reference.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

from sparseticket._kernels.isa import instruction_set

KERNELS_FROM = {"installed": "the extension built at install time", "jit": "built on first use (cached)"}


def installed_build_mismatch(record: dict, torch_version: str, isa: str) -> str:
    """Why an install-time ``_C`` described by ``record`` (its ``_C_build.json``) must not be loaded
    here, or "" when it may: built for another torch, or with ``-march=native`` for another CPU."""
    if record.get("torch") != torch_version:
        return f"it was built for torch {record.get('torch')}, this is torch {torch_version}"
    if record.get("isa") not in ("portable", isa):
        return "it was built with -march=native for another CPU"
    return ""


def _installed_mismatch() -> str:
    """``installed_build_mismatch`` of the ``_C`` beside this package ("" when it has no record)."""
    record_path = Path(__file__).resolve().parents[1] / "_C_build.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return ""  # no record (an older install): importing it is the test
    return installed_build_mismatch(record, torch.__version__, instruction_set())


def source_checkout() -> Path | None:
    """The source checkout this package is imported from (``setup.py`` and ``csrc/`` beside it), or None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "setup.py").is_file() and (root / "csrc").is_dir() else None


def _say_source_tree(root: Path) -> str:
    """Say, once, that the source tree without a built ``_C`` is being imported, and what to do."""
    advice = (f"you are importing the source tree {root / 'sparseticket'}, which has no built C++ extension: "
              "run from another folder to use the installed package, or install this checkout with "
              "`pip install --no-build-isolation -e .`")
    print(f"sparseticket: {advice}", file=sys.stderr, flush=True)
    return advice


def _load() -> tuple[ModuleType | None, object | None, str, str]:
    """(extension module, op namespace, why unavailable, where from: "installed" or "jit")."""
    if os.environ.get("SPARSETICKET_DISABLE_CPP") == "1":
        return None, None, "disabled by SPARSETICKET_DISABLE_CPP=1", ""
    mismatch = _installed_mismatch()
    if mismatch:
        installed = f"the install-time build is not loaded: {mismatch}"
    else:
        try:
            import sparseticket._C as extension  # importing registers the ops
        except (ImportError, OSError) as error:  # not built, or built for another torch (undefined symbol)
            installed = f"no usable install-time build ({str(error).splitlines()[0][:200]})"
            checkout = source_checkout()
            if checkout is not None:
                installed = f"{_say_source_tree(checkout)}; {installed}"
        else:
            return extension, torch.ops.sparseticket_cpu, "", "installed"
    from sparseticket._kernels.jit import build_kernels

    extension, reason, _ = build_kernels()
    if extension is None:
        return None, None, f"{installed}; {reason}", ""
    return extension, torch.ops.sparseticket_cpu, "", "jit"


_EXTENSION, CPP_KERNELS, CPP_UNAVAILABLE_REASON, CPP_SOURCE = _load()


def cpp_extension() -> ModuleType | None:
    """The extension module itself (its bound classes, e.g. ``NativeTruncationPlan``), or None."""
    return _EXTENSION


def cpp_kernels() -> ModuleType | None:
    """The C++ op namespace (same function names as ``sparseticket.reference``), or None."""
    return CPP_KERNELS


def cpp_source() -> str:
    """Where the active C++ kernels come from: "installed", "jit", or "" when there are none."""
    return CPP_SOURCE
