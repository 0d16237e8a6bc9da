"""The equality check: two models' outputs on the same inputs, compared to a tolerance.

The error is the largest absolute difference over every output tensor divided by
``max(1, largest |reference output|)``: absolute for outputs of magnitude up to 1, relative to the
output's scale above that (float32 sums of thousands of terms differ in their last bits when the
summation order changes, as it does once channels are removed or a weight is stored sparse).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparseticket.deploy.inputs import Inputs, call, output_tensors

TOLERANCE = 1e-5


class DeployMismatch(RuntimeError):
    """A deployed (or exported) model does not give the masked dense model's outputs."""


def scaled_error(actual: Any, expected: Any) -> float:
    """max |actual - expected| / max(1, max |expected|) over the outputs' floating tensors."""
    got, want = output_tensors(actual), output_tensors(expected)
    if len(got) != len(want) or any(a.shape != b.shape for a, b in zip(got, want)):
        raise DeployMismatch(f"outputs differ in structure: {[tuple(t.shape) for t in got]} vs "
                             f"{[tuple(t.shape) for t in want]}")
    if not want:
        raise DeployMismatch("the model's output holds no floating tensor to compare")
    difference = max(float((a.double() - b.double()).abs().max()) for a, b in zip(got, want))
    scale = max(float(b.abs().max()) for b in want)
    return difference / max(1.0, scale)


@torch.no_grad()
def check_outputs(actual: Any, expected: Any, what: str, tolerance: float = TOLERANCE) -> float:
    """The scaled error of ``actual`` against ``expected``; ``DeployMismatch`` naming ``what`` above ``tolerance``."""
    error = scaled_error(actual, expected)
    if not error <= tolerance:
        raise DeployMismatch(f"{what} differs from the masked dense model: max |difference| / max(1, max |output|) "
                             f"= {error:.3g} > {tolerance:g}")
    return error


@torch.no_grad()
def check_models(model: nn.Module, reference: nn.Module, inputs: Inputs, what: str,
                 tolerance: float = TOLERANCE) -> float:
    """Both models in eval mode on ``inputs``; ``check_outputs`` of their outputs."""
    return check_outputs(call(model.eval(), inputs), call(reference.eval(), inputs), what, tolerance)
