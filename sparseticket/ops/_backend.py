"""Which kernels run an op: chosen per device, with a switch for CPU tensors.

CUDA tensors go to the Triton kernels (the reference when triton is missing). CPU tensors go to
the C++ kernels (the reference when the extension is not built), unless the CPU backend is set
to ``"triton"`` (needs Triton's interpreter: ``TRITON_INTERPRET=1`` before triton is imported)
or ``"reference"``, through ``cpu_backend(...)`` or the ``SPARSETICKET_CPU_BACKEND`` variable.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from types import ModuleType

import torch

from sparseticket import reference
from sparseticket._kernels.cpp import CPP_UNAVAILABLE_REASON, cpp_kernels
from sparseticket._kernels.triton import TRITON_UNAVAILABLE_REASON, interpreter_on, triton_kernels

CPU_BACKENDS = ("auto", "cpp", "triton", "reference")
_ENVIRONMENT_VARIABLE = "SPARSETICKET_CPU_BACKEND"


def _checked(name: str, source: str) -> str:
    if name not in CPU_BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(CPU_BACKENDS)}, got {name!r}")
    return name


_cpu_backend = _checked(os.environ.get(_ENVIRONMENT_VARIABLE, "auto"), _ENVIRONMENT_VARIABLE)

if cpp_kernels() is None:
    warnings.warn(
        f"sparseticket: C++ CPU kernels unavailable ({CPP_UNAVAILABLE_REASON}); CPU ops use the "
        "plain-PyTorch reference (slower). Reinstall with `pip install --no-build-isolation .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def _cpu_kernels(name: str) -> ModuleType:
    if name == "reference":
        return reference
    if name == "triton":
        if not interpreter_on():
            reason = TRITON_UNAVAILABLE_REASON or "TRITON_INTERPRET=1 was not set before triton was imported"
            raise RuntimeError(f"the triton CPU backend needs Triton's interpreter: {reason}")
        return triton_kernels()
    if name == "cpp":
        if cpp_kernels() is None:
            raise RuntimeError(f"the cpp CPU backend is unavailable: {CPP_UNAVAILABLE_REASON}")
        return cpp_kernels()
    return cpp_kernels() if cpp_kernels() is not None else reference


def kernels_for(device: torch.device) -> ModuleType:
    """The kernel module (contract of ``sparseticket.reference``) that runs ops on ``device``."""
    if device.type == "cpu":
        return _cpu_kernels(_cpu_backend)
    if device.type == "cuda" and triton_kernels() is not None and not interpreter_on():
        return triton_kernels()
    return reference


def cpp_runs_cpu_ops() -> bool:
    """Whether ops on CPU tensors run on the C++ kernels now (cheap: per-step hooks ask it every call)."""
    return _cpu_backend in ("auto", "cpp") and cpp_kernels() is not None


def active_cpu_backend() -> str:
    """The CPU backend that ``auto`` or the current setting resolves to."""
    kernels = _cpu_kernels(_cpu_backend)
    if kernels is reference:
        return "reference"
    return "triton" if kernels is triton_kernels() else "cpp"


@contextlib.contextmanager
def cpu_backend(name: str) -> Iterator[None]:
    """Route ops on CPU tensors to ``name`` (auto, cpp, triton, reference) inside the block."""
    global _cpu_backend
    _checked(name, "name")
    _cpu_kernels(name)  # fail here, not at the first op, when the backend cannot run
    previous, _cpu_backend = _cpu_backend, name
    try:
        yield
    finally:
        _cpu_backend = previous


def backends() -> dict[str, object]:
    """What is active: C++ kernels, Triton (and its interpreter), a CUDA GPU, the CPU backend."""
    return {
        "cpp": cpp_kernels() is not None,
        "cpp_reason": CPP_UNAVAILABLE_REASON,
        "triton": triton_kernels() is not None,
        "triton_reason": TRITON_UNAVAILABLE_REASON,
        "triton_interpreter": interpreter_on(),
        "cuda": torch.cuda.is_available(),
        "cpu_backend": active_cpu_backend(),
        "cuda_backend": "triton" if triton_kernels() is not None and not interpreter_on() else "reference",
    }
