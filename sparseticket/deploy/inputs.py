"""Example inputs: calling a model on them, cutting them to one example, repeating it to a batch, and
the tensors in a model's output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

Inputs = Any  # a tensor (one argument), a tuple/list (positional arguments) or a mapping (keyword arguments)


def call(model: nn.Module, inputs: Inputs) -> Any:
    """``model`` called on ``inputs``: a tuple/list spread as positional, a mapping as keyword arguments."""
    if isinstance(inputs, Mapping):
        return model(**dict(inputs))
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def as_args(inputs: Inputs) -> tuple[tuple, dict]:
    """``inputs`` as (positional, keyword) arguments, as ``call`` passes them."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def batch_of(inputs: Inputs, size: int) -> Inputs:
    """The first example of ``inputs`` repeated ``size`` times along every tensor's first dimension."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0:
            return inputs
        return inputs[:1].repeat(size, *([1] * (inputs.dim() - 1)))
    if isinstance(inputs, Mapping):
        return {key: batch_of(value, size) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(batch_of(value, size) for value in inputs)
    return inputs


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every floating tensor of a model's output (a tensor, a tuple/list, a mapping such as a ``ModelOutput``)."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, Mapping):
        return [tensor for value in output.values() for tensor in output_tensors(value)]
    if isinstance(output, (tuple, list)):
        return [tensor for value in output for tensor in output_tensors(value)]
    return []


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    """``inputs`` with every tensor moved to ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {key: to_device(value, device) for key, value in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(to_device(value, device) for value in inputs)
    return inputs
