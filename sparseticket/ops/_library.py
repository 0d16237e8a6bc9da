"""The ``sparseticket`` torch.library namespace: one definition per op, a kernel per device.

Every op gets the same implementation for the CPU and CUDA dispatch keys: it looks up the kernel
module for the device of its first tensor argument (``_backend.kernels_for``) and calls the
function of the op's name. Fake (meta) kernels are registered by each op module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sparseticket.ops._backend import kernels_for

LIBRARY = torch.library.Library("sparseticket", "DEF")


def _first_device(args: tuple) -> torch.device:
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device
        if isinstance(arg, (list, tuple)) and arg and isinstance(arg[0], torch.Tensor):
            return arg[0].device
    return torch.device("cpu")


def define_op(name: str, schema: str) -> Callable:
    """Define ``sparseticket::name`` with ``schema`` and its CPU and CUDA kernels; return the op."""
    LIBRARY.define(f"{name}{schema}")

    def run_kernel(*args):
        return getattr(kernels_for(_first_device(args)), name)(*args)

    run_kernel.__name__ = f"{name}_kernel"
    LIBRARY.impl(name, run_kernel, "CPU")
    LIBRARY.impl(name, run_kernel, "CUDA")
    return getattr(torch.ops.sparseticket, name)
