"""``Ticket``: the common result of every method, saved as safetensors (no pickle, atomic writes).

Masks are keyed by parameter name (``"features.0.weight"``), True = kept. Gem-Miner tickets also
carry scores and frozen flags; EarlyBird tickets carry channel masks keyed by BN module name.

The file's safetensors metadata is one entry, ``"sparseticket"``: a JSON object with sorted keys
(format, method, hyper-parameters, the layer order and every tensor's shape and dtype). Equal
tickets are therefore equal bytes, so a file's hash identifies its ticket, and ``load`` checks
every tensor against the shapes the ticket itself recorded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import prune

from sparseticket.files import atomic_write
from sparseticket.methods.distributed import unwrap
from sparseticket.methods.masked_optimizer import mask_optimizer_state, masked_optimizer
from sparseticket.ops import TruncationPlan

FORMAT = "sparseticket-ticket/1"
METADATA_KEY = "sparseticket"  # the one metadata entry (safetensors writes several in hash order)
_SECTIONS = {"mask": "masks", "score": "scores", "channel": "channel_masks"}
_DTYPES = {"mask": (torch.bool,), "channel": (torch.bool,), "score": (torch.float16, torch.bfloat16, torch.float32,
                                                                      torch.float64)}


@dataclass
class Ticket:
    """Per-layer masks plus how they were found (method and hyper-parameters)."""

    masks: dict[str, torch.Tensor]
    method: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    channel_masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for section in ("masks", "channel_masks"):
            for name, mask in getattr(self, section).items():
                if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                    raise ValueError(f"{section}[{name!r}] must be a bool tensor")

    def _counted(self) -> dict[str, torch.Tensor]:
        """The masks densities count: the weight masks, or a channel ticket's channel masks."""
        return self.masks or self.channel_masks

    def density_per_layer(self) -> dict[str, float]:
        """Fraction kept of each masked parameter (a channel ticket: of each layer's channels)."""
        return {name: mask.float().mean().item() for name, mask in self._counted().items()}

    def density(self) -> float:
        """Fraction of kept weights over all masked parameters; for a channel ticket (EarlyBird,
        WORM), the fraction of channels kept. What a channel ticket keeps of the weights, once the
        channels are removed, is in the method's ``prune_report``."""
        masks = self._counted()
        total = sum(mask.numel() for mask in masks.values())
        return sum(int(mask.sum()) for mask in masks.values()) / max(total, 1)

    # ----------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` as safetensors, atomically and flushed to disk (``sparseticket.files.atomic_write``);
        equal tickets give equal bytes."""
        tensors = {}
        for prefix, section in _SECTIONS.items():
            for name, tensor in getattr(self, section).items():
                tensors[f"{prefix}/{name}"] = tensor.detach().cpu().contiguous()
        record = {"format": FORMAT, "method": self.method, "order": list(tensors),
                  "hyperparameters": self.hyperparameters,
                  "tensors": {key: {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
                              for key, tensor in tensors.items()}}
        metadata = {METADATA_KEY: json.dumps(record, sort_keys=True)}
        atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Ticket:
        """Read a ticket written by ``save``; ValueError naming the file and the entry if it is not a
        complete, consistent ticket (truncated, corrupted, or a tensor whose shape or dtype differs
        from what the ticket recorded)."""
        try:
            tensors = load_file(os.fspath(path))
            from safetensors import safe_open

            with safe_open(os.fspath(path), "pt") as handle:
                record = _record(handle.metadata() or {})
        except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise ValueError(f"{path} is not a valid ticket file (truncated or corrupted?): {error}") from error
        if record.get("format") != FORMAT:
            raise ValueError(f"{path} is not a sparseticket ticket (format {record.get('format')!r})")
        _check_entries(path, tensors, record.get("tensors"))
        sections: dict[str, dict[str, torch.Tensor]] = {section: {} for section in _SECTIONS.values()}
        order = record.get("order", [])  # layer order (safetensors sorts its keys)
        keys = [key for key in order if key in tensors] + [key for key in tensors if key not in order]
        for key in keys:
            prefix, _, name = key.partition("/")
            sections[_SECTIONS[prefix]][name] = tensors[key]
        for name, scores in sections["scores"].items():
            mask = sections["masks"].get(name)
            if mask is not None and mask.shape != scores.shape:
                raise ValueError(f"{path}: score/{name} has shape {tuple(scores.shape)} but mask/{name} "
                                 f"{tuple(mask.shape)}")
        return cls(method=record.get("method", ""), hyperparameters=record.get("hyperparameters", {}), **sections)

    # ----------------------------------------------------------------- models
    def _parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        parameters = dict(unwrap(model).named_parameters())  # bare names, also under DDP
        for name, mask in self.masks.items():
            if name not in parameters:
                raise ValueError(f"masks[{name!r}]: the model has no such parameter")
            if parameters[name].shape != mask.shape:
                raise ValueError(f"masks[{name!r}]: shape {tuple(mask.shape)} does not match the "
                                 f"parameter's {tuple(parameters[name].shape)}")
        return parameters

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> nn.Module:
        """Zero the pruned weights of ``model`` in place (and gamma/beta of pruned channels); returns it."""
        parameters = self._parameters(model)
        for name, mask in self.masks.items():
            parameters[name].mul_(mask.to(parameters[name].device))
        modules = dict(unwrap(model).named_modules())
        for name, mask in self.channel_masks.items():
            module = modules.get(name)
            if module is None or getattr(module, "weight", None) is None or module.weight.shape != mask.shape:
                raise ValueError(f"channel_masks[{name!r}]: no module with {mask.numel()} channel scales")
            module.weight.mul_(mask.to(module.weight.device))
            if getattr(module, "bias", None) is not None:
                module.bias.mul_(mask.to(module.bias.device))
        return model

    def apply(self, model: nn.Module) -> nn.Module:
        """The former name of ``apply_`` (acts in place, returns ``model``)."""
        return self.apply_(model)

    def to_torch_prune(self, model: nn.Module) -> nn.Module:
        """Register the masks as ``torch.nn.utils.prune`` masks (``weight_orig`` + ``weight_mask``)."""
        self._parameters(model)
        for name, mask in self.masks.items():
            module_name, _, parameter_name = name.rpartition(".")
            module = unwrap(model).get_submodule(module_name)
            prune.custom_from_mask(module, parameter_name, mask.to(getattr(module, parameter_name).device))
        return model

    def gradient_mask(self, model: nn.Module) -> Callable[[], None]:
        """A hook for fine-tuning: call it between backward and ``optimizer.step()`` to zero the
        gradients of pruned weights (one fused call, lists checked once). With weights zeroed by
        ``apply``, SGD with momentum and weight decay then keeps them exactly zero."""
        parameters = self._parameters(model)
        return TruncationPlan([parameters[name] for name in self.masks],
                              [torch.empty_like(parameters[name], dtype=torch.bool).copy_(mask)  # its memory format
                               for name, mask in self.masks.items()])

    def optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Fine-tune the ticket with your own ``torch.optim.SGD``/``Adam``/``AdamW`` at no extra pass:
        ``optimizer = ticket.optimizer(model, optimizer)`` returns the drop-in fused masked optimizer
        (``sparseticket.methods.masked_optimizer``), whose ``step()`` keeps every pruned weight (and
        the scales and shifts of pruned channels) and its state at exactly 0: no ``gradient_mask``
        hook and no ``apply_`` after each step. The pruned weights of ``model`` are zeroed now, and so
        is their entry in any state the optimizer already holds."""
        parameters = self._parameters(model)
        masks: dict[torch.Tensor, torch.Tensor] = {}
        for name, mask in self.masks.items():
            parameter = parameters[name]
            masks[parameter] = torch.empty_like(parameter, dtype=torch.bool).copy_(mask)  # its memory format
        modules = dict(unwrap(model).named_modules())
        for name, mask in self.channel_masks.items():
            module = modules.get(name)
            for tensor in (getattr(module, "weight", None), getattr(module, "bias", None)):
                if isinstance(tensor, nn.Parameter) and tensor.shape == mask.shape:
                    masks[tensor] = mask.to(tensor.device)
        self.apply_(model)
        mask_optimizer_state(optimizer, masks)
        return masked_optimizer(optimizer, masks)


def _record(metadata: dict[str, str]) -> dict[str, Any]:
    """The ticket's record from a file's metadata: the one ``"sparseticket"`` entry, or the separate
    entries of files written before it (JSON strings for the order and hyper-parameters)."""
    if METADATA_KEY in metadata:
        record = json.loads(metadata[METADATA_KEY])
        if not isinstance(record, dict):
            raise ValueError(f"metadata {METADATA_KEY!r} is not a JSON object")
        return record
    record: dict[str, Any] = {key: metadata[key] for key in ("format", "method") if key in metadata}
    record["order"] = json.loads(metadata.get("order", "[]"))
    record["hyperparameters"] = json.loads(metadata.get("hyperparameters", "{}"))
    return record


def _check_entries(path: str | os.PathLike, tensors: dict[str, torch.Tensor], recorded: Any) -> None:
    """ValueError unless every entry is a known section with its dtype and, when the ticket recorded
    them (files written since shapes were recorded), exactly the recorded entries and shapes."""
    for key, tensor in tensors.items():
        prefix, _, name = key.partition("/")
        if prefix not in _SECTIONS or not name:
            raise ValueError(f"{path}: unexpected entry {key!r}")
        if tensor.dtype not in _DTYPES[prefix]:
            raise ValueError(f"{path}: {key} must be {' or '.join(map(str, _DTYPES[prefix]))}, got {tensor.dtype}")
        if prefix == "channel" and tensor.dim() != 1:
            raise ValueError(f"{path}: {key} must be 1-D (one entry per channel), got shape {tuple(tensor.shape)}")
    if recorded is None:
        return
    if not isinstance(recorded, dict) or set(recorded) != set(tensors):
        names = sorted(recorded) if isinstance(recorded, dict) else recorded
        raise ValueError(f"{path}: the file holds entries {sorted(tensors)} but the ticket recorded {names}")
    for key, tensor in tensors.items():
        entry = recorded[key] if isinstance(recorded[key], dict) else {}
        if entry.get("shape") != list(tensor.shape):
            raise ValueError(f"{path}: {key} has shape {tuple(tensor.shape)} but the ticket recorded "
                             f"{entry.get('shape')}")
        if entry.get("dtype") != str(tensor.dtype).removeprefix("torch."):
            raise ValueError(f"{path}: {key} is {tensor.dtype} but the ticket recorded {entry.get('dtype')}")
