"""The per-step hooks never ask the host for a tensor's value: no .item(), .tolist(), bool/int/float
of a tensor, .numpy() or copy to the CPU. On a GPU each of those waits for the stream (a sync every
step). Here those Tensor methods are replaced by ones that raise while the hooks run, on every CPU
backend (the Triton one runs the GPU code path's launchers through the interpreter). A
TorchFunctionMode would not do: it is switched off inside the ops it intercepts, and the launchers
run inside the ops."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import pytest
import torch
from torch import nn

from sparseticket.builtin.models import vgg_small
from sparseticket.methods import METHODS, WORM, Method
from sparseticket.ops import cpu_backend

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")


@contextlib.contextmanager
def host_reads_forbidden() -> Iterator[None]:
    """Every Tensor method that reads values on the host raises AssertionError inside the block;
    so does ``to``/``copy_`` from a non-CPU tensor to the CPU, and a host-to-device ``to`` that
    is not ``non_blocking`` from pinned memory (both wait for the stream)."""
    originals = {name: getattr(torch.Tensor, name) for name in READS + ("to",)}

    def forbidden(name: str):
        def read(*args, **kwargs):
            raise AssertionError(f"host sync in a per-step hook: Tensor.{name}")
        return read

    def checked_to(self, *args, **kwargs):
        out = originals["to"](self, *args, **kwargs)
        if out.device != self.device and (out.device.type == "cpu" or not (
                kwargs.get("non_blocking") and self.is_pinned())):
            raise AssertionError(f"host sync in a per-step hook: Tensor.to {self.device} -> {out.device}")
        return out

    with contextlib.ExitStack() as stack:
        for name in READS:
            stack.enter_context(mock.patch.object(torch.Tensor, name, forbidden(name)))
        stack.enter_context(mock.patch.object(torch.Tensor, "to", checked_to))
        yield


def _step(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    nn.functional.cross_entropy(model(images), labels).backward()


def _start_truncating(worm: WORM) -> None:
    worm.epoch_end()
    worm.epoch_end()
    assert worm.truncating


# keywords and preparation that make every registered method's hooks do their steady-state work
SETTINGS = {"worm": {"queue": 2, "trigger": 1.0}, "gemminer": {"density": 0.5, "epochs": 6, "seed": 0}}
PREPARE = {"worm": _start_truncating, "imp": lambda imp: imp.prune_round()}


def _hooks(name: str):
    """(model, the method's per-step work after backward: after_backward and after_step)."""
    model = vgg_small(width=4)
    method: Method = METHODS[name](model, **SETTINGS.get(name, {}))
    if name in PREPARE:
        PREPARE[name](method)

    def hooks() -> None:
        method.after_backward()
        method.after_step()

    return model, hooks


@pytest.mark.parametrize("name", list(METHODS))
def test_per_step_hooks_never_read_tensors_on_the_host(backend, name):
    with cpu_backend(backend):
        model, hooks = _hooks(name)
        for _ in range(2):  # the first call builds plans; the second is the steady state
            _step(model)
            with host_reads_forbidden():
                hooks()


def test_the_guard_catches_what_it_should():
    """The guard is not vacuous: each forbidden read raises inside it, also inside an op's kernel
    (the public gemminer_step_ returns a Python int, which reads the count)."""
    from sparseticket.ops import gemminer_step_

    tensor = torch.ones(2)
    reads = [lambda: tensor.sum().item(), lambda: tensor.tolist(), lambda: bool(tensor[0]), lambda: int(tensor[0]),
             lambda: float(tensor[0]), lambda: tensor.numpy(), lambda: tensor.cpu(),
             lambda: gemminer_step_(torch.rand(4), torch.rand(4), torch.zeros(4), torch.ones(4, dtype=torch.bool),
                                    lr=0.1)]
    for read in reads:
        with pytest.raises(AssertionError, match="host sync"), host_reads_forbidden():
            read()
    with host_reads_forbidden():  # what stays allowed: on-device work, copies that do not leave the CPU
        torch.ones(3).to(torch.float64).add_(1).copy_(torch.zeros(3))


def test_pointer_tables_reach_the_gpu_without_a_sync():
    """The Triton launchers' tables go through pinned memory with non_blocking=True (checked with
    the calls recorded, since this machine has no GPU)."""
    from sparseticket.triton_kernels._common import to_device_without_sync

    host = torch.arange(4)
    pinned = mock.MagicMock(name="pinned")
    with mock.patch.object(torch.Tensor, "pin_memory", return_value=pinned) as pin:
        to_device_without_sync(host, torch.device("cuda", 0))
    pin.assert_called_once()
    pinned.to.assert_called_once_with(torch.device("cuda", 0), non_blocking=True)
    assert torch.equal(to_device_without_sync(host, torch.device("cpu")), host)


def test_block_tables_are_reused_while_addresses_stay():
    """A launcher's pointer table is built (one host-to-device copy) once per set of addresses and
    sizes, then reused: in a steady training loop or a CUDA graph's replay no copy happens."""
    from sparseticket.triton_kernels._common import block_table

    grads = [torch.randn(10), torch.randn(300)]
    keep = [torch.ones(10, dtype=torch.bool), torch.ones(300, dtype=torch.bool)]
    first = block_table([grads, keep], [1, 1], 128, torch.device("cpu"))
    assert block_table([grads, keep], [1, 1], 128, torch.device("cpu")) is first
    assert first.blocks == 1 + 3 and first.numels.tolist() == [10, 300]
    moved = [torch.randn(10), grads[1]]  # a new gradient at another address: a new table
    second = block_table([moved, keep], [1, 1], 128, torch.device("cpu"))
    assert second is not first and second.pointers[0][0].item() == moved[0].data_ptr()
    assert block_table([grads, keep], [1, 4], 128, torch.device("cpu")) is not first  # inners are part of it
