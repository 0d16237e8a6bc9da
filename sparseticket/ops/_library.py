"""The ``sparseticket`` torch.library namespace: one definition per op, a kernel per device.

Every op gets one implementation for every device (``CompositeExplicitAutograd``): it checks the
arguments against the op's contract (``_contracts.CONTRACTS``: the one place every entry point
passes, ``torch.ops.sparseticket.<op>`` called directly included), looks up the kernel module for
the arguments' device (``_backend.kernels_for``; the C++ kernels of ``CHECKED_IN_CPP`` check the
same contract themselves) and calls the function of the op's name there,
with that device current (a CUDA tensor on ``cuda:1`` launches on ``cuda:1``). Fake (meta)
kernels are registered by each op module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sparseticket._kernels.cpp import cpp_kernels
from sparseticket.ops._backend import kernels_for
from sparseticket.ops._contracts import CONTRACTS

LIBRARY = torch.library.Library("sparseticket", "DEF")
# Ops whose C++ kernel checks the whole contract itself (csrc/truncate.cpp, csrc/optim.cpp): they run
# on every training step over every layer, where the Python checks would cost more than the kernel.
CHECKED_IN_CPP = frozenset({"truncate_grads_", "masked_sgd_", "masked_adam_", "gemminer_step_from_masked_grads_"})


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
    contract = CONTRACTS[name]

    def run_kernel(*args):
        kernels = kernels_for(_first_device(args))
        if not (name in CHECKED_IN_CPP and kernels is cpp_kernels()):
            args = contract(*args)
        device = _first_device(args)
        kernel = getattr(kernels, name)
        if device.type == "cuda":
            with torch.cuda.device(device):
                return kernel(*args)
        return kernel(*args)

    run_kernel.__name__ = f"{name}_kernel"
    # One kernel for every backend key (CPU, CUDA; others meet the contract's device check), and for
    # calls whose tensor lists are all empty, which carry no device to dispatch on.
    LIBRARY.impl(name, run_kernel, "CompositeExplicitAutograd")
    return getattr(torch.ops.sparseticket, name)


def register_fake(name: str) -> Callable[[Callable], Callable]:
    """Register ``fake`` as the op's fake (meta) kernel, behind the op's contract: a tracer or a
    meta/mixed-device call sees the same errors as a real call."""
    contract = CONTRACTS[name]

    def decorate(fake: Callable) -> Callable:
        def checked(*args):
            return fake(*contract(*args))

        torch.library.register_fake(f"sparseticket::{name}", checked, lib=LIBRARY)
        return fake

    return decorate
