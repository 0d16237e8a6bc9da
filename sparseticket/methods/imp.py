"""IMP with rewinding (Frankle et al., ICML 2020): global magnitude pruning, rewound to step k.

Each round: train, prune the smallest ``rate`` of the surviving weights, rewind the survivors
(and the optimizer and LR schedule) to their values at step k, train again::

    imp = IMP(model, rate=0.2, rewind_step=k)
    for round in range(rounds):
        for step, batch in enumerate(batches):   # the data order is your loop's: seed your
            if round == 0 and step == k:         # sampler by epoch so every round sees the same
                imp.capture(optimizer, scheduler)  # order after the rewind
            loss.backward(); imp.after_backward(); optimizer.step(); imp.after_step()
        imp.prune_round()
        imp.rewind()
    ticket = imp.ticket()
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sparseticket.methods.consistency import assert_same_on_all_ranks
from sparseticket.methods.ticket import Ticket
from sparseticket.methods.weights import prunable_layers, weight_name
from sparseticket.ops import kth_value, truncate_grads_

WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_rate(rate: object) -> float:
    """``rate`` must be a number strictly between 0 and 1."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"rate must be a float in (0, 1), got {type(rate).__name__}")
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1) (fraction of survivors pruned per round), got {rate!r}")
    return float(rate)


def _check_rewind_step(rewind_step: object) -> int:
    """``rewind_step`` must be an int >= 0."""
    if isinstance(rewind_step, bool) or not isinstance(rewind_step, int):
        raise TypeError(f"rewind_step must be an int, got {type(rewind_step).__name__}")
    if rewind_step < 0:
        raise ValueError(f"rewind_step must be >= 0 (training step the weights rewind to), got {rewind_step}")
    return rewind_step


def _check_exclude(exclude: object) -> tuple[str, ...]:
    """``exclude`` must be an iterable of module names (not one bare string)."""
    if isinstance(exclude, str) or not isinstance(exclude, Iterable):
        raise TypeError(f"exclude must be a tuple of module names (e.g. ('output',)), got {exclude!r}")
    return tuple(exclude)


def _layer_pruned(scores: torch.Tensor, threshold: torch.Tensor, mask: torch.Tensor, ties_left: int
                 ) -> tuple[torch.Tensor, int]:
    """Entries of one layer to prune: survivors below ``threshold`` plus its first ``ties_left`` ties."""
    prune = scores < threshold
    ties = (scores == threshold) & mask
    tie_count = int(ties.sum())
    if tie_count > ties_left:
        flat = ties.reshape(-1)
        ties = (flat & (flat.cumsum(0) <= ties_left)).view_as(mask)
        tie_count = ties_left
    return prune | ties, ties_left - tie_count


class IMP:
    """Iterative magnitude pruning with rewinding: one bool mask per Conv/Linear weight.

    ``rate``: fraction of the surviving weights pruned per round (global over all layers);
    ``rewind_step``: the step k at which ``capture`` is called (metadata; 0 = before training);
    ``exclude``: module names left dense (``"output"`` = the last Conv/Linear layer).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        rate: float = 0.2,
        rewind_step: int = 0,
        exclude: Iterable[str] = ("output",),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.rate = _check_rate(rate)
        self.rewind_step = _check_rewind_step(rewind_step)
        self.exclude = _check_exclude(exclude)
        layers = prunable_layers(model, self.exclude)
        self.names = [weight_name(name) for name in layers]
        self.weights = [module.weight for module in layers.values()]
        for name, weight in zip(self.names, self.weights):
            if weight.dtype not in WEIGHT_DTYPES:
                raise TypeError(f"model: {name} must be float32/float16/bfloat16, got {weight.dtype}")
        self.masks = [torch.ones_like(weight, dtype=torch.bool) for weight in self.weights]
        self.round = 0
        self._saved: dict[str, Any] | None = None

    @property
    def density(self) -> float:
        """Fraction of kept weights over all masked weights."""
        return self.survivors() / sum(mask.numel() for mask in self.masks)

    def survivors(self) -> int:
        """Number of kept weights over all masked weights."""
        return sum(int(mask.sum()) for mask in self.masks)

    # ------------------------------------------------------------ rewinding
    def capture(self, optimizer: torch.optim.Optimizer | None = None, scheduler: Any | None = None) -> None:
        """Store the model (all parameters and buffers) and optimizer/scheduler states to rewind to."""
        self._saved = {
            "model": {key: value.detach().clone() for key, value in self.model.state_dict().items()},
            "optimizer": (optimizer, copy.deepcopy(optimizer.state_dict())) if optimizer is not None else None,
            "scheduler": (scheduler, copy.deepcopy(scheduler.state_dict())) if scheduler is not None else None,
        }

    def rewind(self) -> None:
        """Restore the captured model, optimizer and scheduler states, then zero the pruned weights."""
        if self._saved is None:
            raise ValueError("rewind() needs a captured state: call capture() at the rewind step first")
        self.model.load_state_dict(self._saved["model"])
        for entry in (self._saved["optimizer"], self._saved["scheduler"]):
            if entry is not None:
                owner, state = entry
                owner.load_state_dict(copy.deepcopy(state))  # a copy: later steps must not edit it
        self.apply_masks()

    # ------------------------------------------------------------ pruning
    @torch.no_grad()
    def prune_round(self) -> float:
        """Prune exactly ceil(rate * survivors) surviving weights of smallest |w| (ties by index).

        Returns the new density; the pruned weights are zeroed at once.
        """
        survivors = self.survivors()
        if survivors == 0:
            raise ValueError("prune_round: no surviving weights left to prune")
        count = math.ceil(self.rate * survivors)
        scores = [torch.where(mask, weight.detach().abs(), math.inf)
                  for weight, mask in zip(self.weights, self.masks)]
        threshold = kth_value(scores, count - 1)
        if torch.isnan(threshold):
            raise ValueError("prune_round: the model's prunable weights contain NaN")
        ties_left = count - sum(int((score < threshold).sum()) for score in scores)
        for score, mask in zip(scores, self.masks):
            prune, ties_left = _layer_pruned(score, threshold, mask, ties_left)
            mask &= ~prune
        self.round += 1
        assert_same_on_all_ranks(torch.cat([mask.reshape(-1) for mask in self.masks]),
                                 f"IMP's masks (round {self.round})")
        self.apply_masks()
        return self.density

    # ------------------------------------------------------------ training hooks
    def after_backward(self) -> None:
        """Zero the gradients of pruned weights (one fused call); between backward and step."""
        pairs = [(weight.grad, mask) for weight, mask in zip(self.weights, self.masks) if weight.grad is not None]
        if pairs:
            grads, masks = zip(*pairs)
            truncate_grads_(grads, masks, scale=0.0)

    @torch.no_grad()
    def after_step(self) -> None:
        """Zero the pruned weights again after ``optimizer.step()``.

        Needed: zero gradients alone do not pin a weight, because a momentum buffer restored by
        ``rewind`` (or Adam's moments) still moves it.
        """
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned weights of the model in place (one fused call)."""
        truncate_grads_([weight.detach() for weight in self.weights], self.masks, scale=0.0)

    # ------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """A snapshot of the masks, the round and the captured model/optimizer/scheduler states."""
        saved = self._saved
        return {
            "method": "imp",
            "names": list(self.names),
            "masks": [mask.clone() for mask in self.masks],
            "round": self.round,
            "captured": None if saved is None else {
                "model": {key: value.clone() for key, value in saved["model"].items()},
                "optimizer": None if saved["optimizer"] is None else copy.deepcopy(saved["optimizer"][1]),
                "scheduler": None if saved["scheduler"] is None else copy.deepcopy(saved["scheduler"][1]),
            },
        }

    def load_state_dict(self, state: dict[str, Any], optimizer: torch.optim.Optimizer | None = None,
                        scheduler: Any | None = None) -> None:
        """Restore a copy of a ``state_dict()``; captured optimizer/scheduler states rewind the ones passed."""
        if not isinstance(state, dict) or state.get("method") != "imp":
            found = state.get("method") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"IMP.load_state_dict: state of method {found!r}, expected 'imp'")
        shapes = [(name, tuple(mask.shape), mask.dtype) for name, mask in zip(state["names"], state["masks"])]
        expected = [(name, tuple(mask.shape), mask.dtype) for name, mask in zip(self.names, self.masks)]
        if shapes != expected:
            raise ValueError(f"IMP state mismatch: masks {shapes} != this model's {expected}")
        captured = state["captured"]
        if captured is not None:
            model_state = self.model.state_dict()
            if ({key: tuple(value.shape) for key, value in captured["model"].items()}
                    != {key: tuple(value.shape) for key, value in model_state.items()}):
                raise ValueError("IMP state mismatch: the captured model state does not fit this model")
            owners = {"optimizer": optimizer, "scheduler": scheduler}
            for name, owner in owners.items():
                if captured[name] is not None and owner is None:
                    raise ValueError(f"IMP state holds a captured {name} state: pass the {name} to rewind")
            self._saved = {
                "model": {key: value.to(model_state[key].device, copy=True)
                          for key, value in captured["model"].items()},
                **{name: None if captured[name] is None else (owner, copy.deepcopy(captured[name]))
                   for name, owner in owners.items()},
            }
        else:
            self._saved = None
        with torch.no_grad():
            for mask, saved in zip(self.masks, state["masks"]):
                mask.copy_(saved)
        self.round = int(state["round"])

    # ------------------------------------------------------------ result
    def ticket(self) -> Ticket:
        """The current masks as a ``Ticket`` (method ``"imp"``), keyed by parameter name."""
        hyperparameters = {"rate": self.rate, "rewind_step": self.rewind_step, "rounds": self.round,
                           "exclude": list(self.exclude)}
        masks = {name: mask.clone() for name, mask in zip(self.names, self.masks)}
        return Ticket(masks=masks, method="imp", hyperparameters=hyperparameters)
