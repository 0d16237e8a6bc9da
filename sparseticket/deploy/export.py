"""Export a deployed model through ``torch.export`` or ONNX and check the result against the masked
dense model.

Both exports take a dynamic batch dimension where the exporter accepts one (traced at batch 2) and
fall back to the example's fixed shapes otherwise. A ``SparseLinear`` that an exporter cannot take is
exported as its dense equivalent (``SparseLinear.to_dense_linear``: the same weights, zeros stored):
the export is tried as it is first, then with every sparse layer dense, and the report names the
layers that went dense. The exported model must give the masked dense model's outputs to
``TOLERANCE`` (``sparseticket.deploy.check``) or the export raises ``DeployMismatch``.
ONNX needs the ``onnx`` extra (``pip install sparseticket[onnx]``: onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparseticket.deploy.check import TOLERANCE, check_outputs
from sparseticket.deploy.inputs import Inputs, as_args, batch_of, call
from sparseticket.deploy.sparse_linear import SparseLinear
from sparseticket.files import atomic_write, atomic_write_bytes

FORMATS = ("torch", "onnx")


@dataclass
class ExportReport:
    """Where an export went, how far its outputs are from the masked dense model's, what was made dense."""

    format: str
    path: Path | None
    error: float
    dynamic_batch: bool
    densified: list[str] = field(default_factory=list)  # SparseLinear layers exported as dense Linear
    note: str = ""

    def summary(self) -> str:
        """One line."""
        dense = (f"; exported dense (the exporter does not take torch.sparse layouts): {', '.join(self.densified)}"
                 if self.densified else "")
        where = f" -> {self.path}" if self.path else ""
        return (f"{self.format} export{where}: max |difference| / max(1, max |output|) = {self.error:.2g} "
                f"(batch {'dynamic' if self.dynamic_batch else 'fixed'}){dense}{self.note}")


def densified(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with every ``SparseLinear`` replaced by its dense ``nn.Linear``; their names."""
    model = copy.deepcopy(model)
    names = [name for name, module in model.named_modules() if isinstance(module, SparseLinear)]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, getattr(owner, child).to_dense_linear())
    return model, names


def _dynamic_shapes(inputs: Inputs, dynamic: bool) -> Any:
    """torch.export's ``dynamic_shapes`` for ``inputs``: dimension 0 of every tensor is the batch."""
    if not dynamic:
        return None
    batch = torch.export.Dim("batch", min=1, max=4096)
    args, kwargs = as_args(inputs)
    spec = lambda value: {0: batch} if isinstance(value, torch.Tensor) and value.dim() > 0 else None  # noqa: E731
    if kwargs:
        return {key: spec(value) for key, value in kwargs.items()}
    return tuple(spec(value) for value in args)


def _attempts(model: nn.Module, inputs: Inputs, export) -> tuple[Any, bool, list[str]]:
    """``export(model, inputs, dynamic)`` tried as is, then with sparse layers dense, each dynamic then fixed;
    (result, dynamic, densified names). Re-raises the last error if every attempt fails."""
    sparse = any(isinstance(module, SparseLinear) for module in model.modules())
    variants = [(model, [])] + ([densified(model)] if sparse else [])
    last: Exception | None = None
    for candidate, names in variants:
        for dynamic in (True, False):
            try:
                return export(candidate, inputs, dynamic), dynamic, names
            except Exception as error:  # noqa: BLE001 - the exporters raise many kinds; the next attempt decides
                last = error
    assert last is not None
    raise last


def _trace_inputs(inputs: Inputs) -> Inputs:
    """The inputs traced: batch 2 (batch 1 would be specialised to a constant)."""
    return batch_of(inputs, 2)


def export_program(model: nn.Module, example_inputs: Inputs, reference: nn.Module | None = None, *,
                   path: str | os.PathLike | None = None, tolerance: float = TOLERANCE
                   ) -> tuple[torch.export.ExportedProgram, ExportReport]:
    """``torch.export`` of ``model`` (eval mode); its ``.module()`` checked on ``example_inputs`` against
    ``reference`` (default: ``model`` itself); saved atomically to ``path`` (``torch.export.save``) if given."""
    model = model.eval()
    reference = (reference if reference is not None else model).eval()

    def export(candidate: nn.Module, inputs: Inputs, dynamic: bool) -> torch.export.ExportedProgram:
        args, kwargs = as_args(_trace_inputs(inputs))
        program = torch.export.export(candidate, args, kwargs, dynamic_shapes=_dynamic_shapes(inputs, dynamic))
        with torch.no_grad():
            check_outputs(call(program.module(), example_inputs if dynamic else _trace_inputs(example_inputs)),
                          call(reference, example_inputs if dynamic else _trace_inputs(example_inputs)),
                          "the torch.export program", tolerance)
        return program

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program, dynamic, names = _attempts(model, example_inputs, export)
    checked = example_inputs if dynamic else _trace_inputs(example_inputs)
    with torch.no_grad():
        error = check_outputs(call(program.module(), checked), call(reference, checked),
                              "the torch.export program", tolerance)
    if path is not None:
        path = Path(path)
        buffer = io.BytesIO()  # torch.export.save wants a name ending in .pt2, or a buffer
        torch.export.save(program, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return program, ExportReport("torch", path, error, dynamic, names)


@contextlib.contextmanager
def _quiet(logger: str):
    """``logger`` at ERROR level inside (the ONNX exporter logs a warning per op library it skips)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _onnx_feed(session: Any, inputs: Inputs) -> dict[str, Any]:
    """ONNX Runtime's feed: the session's inputs in order, from the positional then keyword tensors."""
    args, kwargs = as_args(inputs)
    tensors = [value for value in (*args, *kwargs.values()) if isinstance(value, torch.Tensor)]
    names = [item.name for item in session.get_inputs()]
    if isinstance(inputs, Mapping) and set(names) <= set(kwargs):
        return {name: kwargs[name].cpu().numpy() for name in names}
    return {name: tensor.cpu().numpy() for name, tensor in zip(names, tensors)}


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of the file at ``path``."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("ONNX export needs onnxruntime: pip install 'sparseticket[onnx]'") from error
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, inputs: Inputs) -> list[torch.Tensor]:
    """The session's outputs on ``inputs`` as tensors."""
    return [torch.from_numpy(output) for output in session.run(None, _onnx_feed(session, inputs))]


def export_onnx(model: nn.Module, example_inputs: Inputs, path: str | os.PathLike,
                reference: nn.Module | None = None, *, tolerance: float = TOLERANCE) -> ExportReport:
    """``torch.onnx.export`` of ``model`` to ``path`` (written atomically), then run with ONNX Runtime on
    ``example_inputs`` and checked against ``reference`` (default: ``model``)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError("ONNX export needs the onnx extra: pip install 'sparseticket[onnx]' "
                          "(onnx, onnxruntime, onnxscript)") from error
    model = model.eval()
    reference = (reference if reference is not None else model).eval()
    path = Path(path)

    def export(candidate: nn.Module, inputs: Inputs, dynamic: bool) -> float:
        args, kwargs = as_args(_trace_inputs(inputs))
        program = torch.onnx.export(candidate, args, kwargs=kwargs or None, dynamic_shapes=_dynamic_shapes(inputs,
                                    dynamic), verbose=False)
        atomic_write(path, lambda temporary: program.save(temporary))
        checked = inputs if dynamic else _trace_inputs(inputs)
        with torch.no_grad():
            return check_outputs(run_onnx(onnx_session(path), checked), call(reference, checked),
                                 "the ONNX model (ONNX Runtime)", tolerance)

    with warnings.catch_warnings(), _quiet("torch.onnx"), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        error, dynamic, names = _attempts(model, example_inputs, export)
    return ExportReport("onnx", path, error, dynamic, names)
