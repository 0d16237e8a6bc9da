"""The weights that weight-mask methods prune: every Conv/Linear weight and every
``nn.MultiheadAttention`` input projection, in module order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparseticket.methods.distributed import unwrap

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
OUTPUT = "output"
# nn.MultiheadAttention keeps Q/K/V in one packed weight, or in three when kdim/vdim differ
_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


@dataclass(frozen=True)
class PrunableWeight:
    """One prunable weight: the module holding it and the attribute it lives under."""

    module_name: str
    module: nn.Module
    attr: str

    @property
    def name(self) -> str:
        """Parameter name, as in ``model.named_parameters()`` of the un-parametrized model."""
        return f"{self.module_name}.{self.attr}" if self.module_name else self.attr

    @property
    def tensor(self) -> torch.Tensor:
        """The weight as the module's forward sees it (a parametrization's output, if any)."""
        return getattr(self.module, self.attr)

    @property
    def stored(self) -> torch.Tensor:
        """The stored Parameter (the ``original`` of a parametrized weight)."""
        if parametrize.is_parametrized(self.module, self.attr):
            return getattr(self.module.parametrizations, self.attr).original
        return getattr(self.module, self.attr)


def _module_weights(name: str, module: nn.Module) -> list[PrunableWeight]:
    if isinstance(module, PRUNABLE_TYPES):
        return [PrunableWeight(name, module, "weight")]
    if isinstance(module, nn.MultiheadAttention):  # its out_proj is an nn.Linear child, found on its own
        return [PrunableWeight(name, module, attr) for attr in _ATTENTION_WEIGHTS
                if isinstance(getattr(module, attr, None), torch.Tensor)
                or parametrize.is_parametrized(module, attr)]
    return []


def prunable_weights(model: nn.Module, exclude: Iterable[str] = ()) -> list[PrunableWeight]:
    """Every Conv/Linear weight and ``nn.MultiheadAttention`` Q/K/V projection, in module order.

    ``exclude`` holds module names (all of that module's weights) or parameter names;
    ``"output"`` names the last Conv/Linear (the classifier). ValueError for a name that is
    neither, or when nothing is left to prune.
    """
    model = unwrap(model)  # names as in the bare module, also under DistributedDataParallel
    weights = [weight for name, module in model.named_modules() for weight in _module_weights(name, module)]
    if not weights:
        raise ValueError("model has no Conv/Linear layer or nn.MultiheadAttention: no weights to prune")
    module_names = {weight.module_name for weight in weights}
    parameter_names = {weight.name for weight in weights}
    excluded = set()
    for name in exclude:
        if name == OUTPUT:
            linear_like = [weight for weight in weights if isinstance(weight.module, PRUNABLE_TYPES)]
            if linear_like:
                excluded.add(linear_like[-1].name)
        elif name in module_names:
            excluded |= {weight.name for weight in weights if weight.module_name == name}
        elif name in parameter_names:
            excluded.add(name)
        else:
            raise ValueError(f"exclude: {name!r} is not a prunable module or weight of the model "
                             f"(known modules: {', '.join(sorted(module_names))}, or {OUTPUT!r})")
    kept = [weight for weight in weights if weight.name not in excluded]
    if not kept:
        raise ValueError("exclude removes every prunable weight: no weights to prune")
    return kept


def prunable_layers(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """The modules of ``prunable_weights`` by name (a MultiheadAttention once), in module order."""
    return {weight.module_name: weight.module for weight in prunable_weights(model, exclude)}


def weight_name(module_name: str) -> str:
    """Parameter name of a module's weight, as in ``model.named_parameters()``."""
    return f"{module_name}.weight" if module_name else "weight"


def check_materialized(model: nn.Module, owner: str) -> None:
    """ValueError naming the first parameter or buffer that lives on the meta device (no data: a
    method would fail later, copying out of it); ``owner`` names the method in the message."""
    for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, tensor in tensors:
            if tensor.is_meta:
                raise ValueError(f"{owner}: the model's {kind} {name!r} is on the meta device (it holds no data): "
                                 "materialize the model first, e.g. model.to_empty(device='cpu') and initialize "
                                 "its weights, or load a state dict with assign=True")

