"""The weights that weight-mask methods prune: every Conv/Linear weight, in module order."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from sparseticket.methods.distributed import unwrap

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
OUTPUT = "output"


def prunable_layers(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Conv/Linear modules by name, in forward (module) order, without ``exclude``.

    ``exclude`` holds module names; ``"output"`` names the last Conv/Linear (the classifier).
    ValueError for a name that is not a prunable module of the model.
    """
    model = unwrap(model)  # names as in the bare module, also under DistributedDataParallel
    layers = {name: module for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)}
    if not layers:
        raise ValueError("model has no Conv/Linear layer: no weights to prune")
    excluded = set()
    for name in exclude:
        if name == OUTPUT:
            excluded.add(next(reversed(layers)))
        elif name in layers:
            excluded.add(name)
        else:
            raise ValueError(f"exclude: {name!r} is not a Conv/Linear module of the model "
                             f"(known: {', '.join(layers)} or {OUTPUT!r})")
    kept = {name: module for name, module in layers.items() if name not in excluded}
    if not kept:
        raise ValueError("exclude removes every Conv/Linear layer: no weights to prune")
    return kept


def weight_name(module_name: str) -> str:
    """Parameter name of a module's weight, as in ``model.named_parameters()``."""
    return f"{module_name}.weight" if module_name else "weight"
