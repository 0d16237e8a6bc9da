"""IMP with rewinding (Frankle et al., ICML 2020): global magnitude pruning, rewound to step k.

Each round: train, prune the smallest ``rate`` of the surviving weights, rewind the survivors
(and the optimizer and LR schedule) to their values at step k, and train again from step k, as
open_lth does: the first round trains steps 0..T-1, every later round steps k..T-1::

    imp = IMP(model, rate=0.2, rewind_step=k)
    for round in range(rounds):
        for step in range(0 if round == 0 else k, steps):  # after a rewind, training goes on at step k
            if round == 0 and step == k:
                imp.capture(optimizer, scheduler)
            inputs, labels = batch(step)  # step s sees the same batch in every round
            optimizer.zero_grad()
            loss_fn(model(inputs), labels).backward()
            imp.after_backward()
            optimizer.step()
            imp.after_step()
            scheduler.step()  # a per-step schedule
        imp.prune_round()
        imp.rewind()
    ticket = imp.ticket()  # the masks; the model holds the rewound, pruned weights

Distributed: under ``DistributedDataParallel`` wrap the model as usual; ``IMP(ddp_model)`` works
on ``ddp_model.module``, so names and masks are a single-process run's. Under FSDP2, create IMP
*after* ``fully_shard`` (on every Linear/Conv block and on the root): masks then hold each rank's
dim-0 shard, thresholds come from ``sharded_kth_value`` (no rank gathers the weights) with ties
broken as in a single process, and the masks equal a single-process run's. ``prune_round``,
``load_state_dict`` and ``ticket`` are then collective (every rank calls them; ``density`` is not);
``ticket()`` gathers the full masks, the same on every rank. ``state_dict`` holds this rank's
shards: save and load one per rank.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sparseticket.methods.consistency import assert_same_on_all_ranks
from sparseticket.methods.convention import check_convention
from sparseticket.methods.distributed import (
    all_reduce_int,
    check_sharded,
    fsdp_modules,
    gather_full_masks,
    is_dtensor,
    local_grads,
    local_shard,
    reshard,
    sharded_tie_quotas,
    unwrap,
)
from sparseticket.methods.masked_optimizer import mask_optimizer_state, masked_optimizer, safe_with_masked_state
from sparseticket.methods.ticket import Ticket
from sparseticket.methods.weights import check_materialized, prunable_weights
from sparseticket.ops import TruncationPlan, kth_value, memory_order, sharded_kth_value, truncate_grads_

WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_rate(rate: object) -> float:
    """``rate`` must be a number strictly between 0 and 1."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"rate must be a float in (0, 1), got {type(rate).__name__}")
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1) (fraction of survivors pruned per round), got {rate!r}")
    return float(rate)


def rewind_step_parts(rewind_step: object) -> tuple[int, int]:
    """(epochs, iterations) of a rewind step, written as open_lth writes steps: ``"500it"``,
    ``"2ep"``, ``"2ep100it"``, or a bare number of iterations (an int, or digits like ``"12"``)."""
    if isinstance(rewind_step, bool) or not isinstance(rewind_step, (int, str)):
        raise TypeError(f"rewind_step must be an int or a string like '500it' / '2ep', "
                        f"got {type(rewind_step).__name__}")
    if isinstance(rewind_step, int):
        if rewind_step < 0:
            raise ValueError(f"rewind_step must be >= 0 (training step the weights rewind to), got {rewind_step}")
        return 0, rewind_step
    text = rewind_step.strip()
    if re.fullmatch(r"[0-9]+", text):
        return 0, int(text)
    match = re.fullmatch(r"(?:([0-9]+)ep)?(?:([0-9]+)it)?", text)
    if match is None or not text:
        raise ValueError(f"rewind_step must be a step >= 0 written '500it' (iterations), '2ep' (epochs), "
                         f"'2ep100it' or a bare number of iterations, got {rewind_step!r}")
    return int(match.group(1) or 0), int(match.group(2) or 0)


def _check_rewind_step(rewind_step: object) -> int | str:
    """``rewind_step`` must be an int >= 0 or a step string (see ``rewind_step_parts``)."""
    rewind_step_parts(rewind_step)
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


def _restore_learning_rates(scheduler: Any, state: dict[str, Any]) -> None:
    """Set the LR of each of the scheduler's optimizer groups to what the scheduler had set at the capture."""
    for group, rate in zip(scheduler.optimizer.param_groups, state["_last_lr"]):
        group["lr"] = rate


def _check_threshold(threshold: torch.Tensor) -> None:
    """A NaN threshold means NaN weights: no magnitude order to prune by."""
    if torch.isnan(threshold):
        raise ValueError("prune_round: the model's prunable weights contain NaN")


class IMP:
    """Iterative magnitude pruning with rewinding: one bool mask per Conv/Linear weight.

    ``rate``: fraction of the surviving weights pruned per round (global over all layers);
    ``rewind_step``: the step k at which you call ``capture`` (only recorded, in the ticket: the
    rewind point is wherever ``capture(optimizer, scheduler)`` is called; 0 = before training): an
    int (iterations) or open_lth's ``"500it"`` / ``"2ep"`` (``rewind_step_parts`` reads it);
    ``exclude``: module names left dense (``"output"`` = the last Conv/Linear layer, kept dense by
    default, while ``GemMiner`` prunes it by default; open_lth leaves it dense for LeNet and VGG and
    prunes it for ResNets: pass ``exclude=()`` for those).
    ``model`` may be wrapped in ``DistributedDataParallel`` or sharded with FSDP2's
    ``fully_shard`` (see the module docstring).

    ``convention``: ``"default"`` prunes exactly ``ceil(rate * survivors)`` weights a round (ties by
    index) and ``rewind`` restores the optimizer state captured at step k. ``"original"`` is
    open_lth's ``sparse_global`` and ``lottery/runner.py``: ``n = ceil(rate * remaining)`` where
    ``remaining`` also counts the excluded layers' weights, the threshold is the (n+1)-th smallest
    surviving |w| (in float32) and every weight up to it is pruned (n + 1 plus the ties); ``capture``
    and every ``rewind`` start a fresh optimizer state at step k (the weights, buffers, learning
    rates and the schedule's position are restored). Single process or DDP (not FSDP2).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        rate: float = 0.2,
        rewind_step: int | str = 0,
        exclude: Iterable[str] = ("output",),
        convention: str = "default",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.convention = check_convention(convention)
        self.model = unwrap(model)
        check_materialized(self.model, "IMP")
        self.rate = _check_rate(rate)
        self.rewind_step = _check_rewind_step(rewind_step)
        self.exclude = _check_exclude(exclude)
        self._layers = prunable_weights(self.model, self.exclude)
        self.names = [layer.name for layer in self._layers]
        self.weights = [layer.tensor for layer in self._layers]
        for name, weight in zip(self.names, self.weights):
            if weight.dtype not in WEIGHT_DTYPES:
                raise TypeError(f"model: {name} must be float32/float16/bfloat16, got {weight.dtype}")
        self.sharded = check_sharded(self.names, self.weights, "IMP")  # FSDP2: masks hold this rank's shards
        self._fsdp_modules = fsdp_modules(self.model) if self.sharded else []
        self.masks = [torch.ones_like(local_shard(weight), dtype=torch.bool) for weight in self.weights]
        self._total = sum(weight.numel() for weight in self.weights)  # full (unsharded) sizes
        if self.sharded and self.convention == "original":
            raise ValueError("IMP: convention='original' runs in one process or under DDP, not on FSDP2 shards")
        # open_lth counts the excluded layers' weights as remaining (they stay in its mask as ones)
        self._excluded = sum(layer.tensor.numel() for layer in prunable_weights(self.model)) - self._total
        self._global_survivors = self._total
        self._grad_plan: TruncationPlan | None = None
        self._weight_plan: TruncationPlan | None = None
        self.round = 0
        self.epoch = 0  # epoch_end calls so far
        self._saved: dict[str, Any] | None = None
        self._optimizer: torch.optim.Optimizer | None = None  # known from capture() or optimizer()
        self._fused = False  # optimizer() handed out a fused masked optimizer: no per-step passes

    def _check_weights_current(self) -> None:
        """The weights must still be the model's: ``fully_shard`` after IMP replaces them."""
        for name, layer, weight in zip(self.names, self._layers, self.weights):
            current = getattr(layer.module, layer.attr, None)
            if current is not weight and (self.sharded or is_dtensor(current)):
                raise RuntimeError(f"IMP: {name} is no longer the model's parameter (the model was "
                                   "sharded after IMP was created?): create IMP after fully_shard")

    @property
    def density(self) -> float:
        """Fraction of kept weights over all masked weights (all ranks' shards when sharded)."""
        return self.survivors() / self._total

    def survivors(self) -> int:
        """Number of kept weights over all masked weights. When sharded, the global count kept
        since the last ``prune_round``/``load_state_dict``: no collective, so one rank may log it."""
        if self.sharded:
            return self._global_survivors
        return sum(int(mask.sum()) for mask in self.masks)

    def _count_survivors(self) -> int:
        """Survivors over all ranks' shards (collective)."""
        return all_reduce_int(sum(int(mask.sum()) for mask in self.masks), self.masks[0].device)

    # ------------------------------------------------------------ rewinding
    def capture(self, optimizer: torch.optim.Optimizer | None = None, scheduler: Any | None = None) -> None:
        """Store the model (all parameters and buffers) and optimizer/scheduler states to rewind to
        (``convention="original"``: the optimizer's state is cleared first, so training goes on from
        here with a fresh one, and every rewind restores that fresh state).

        ``scheduler``: the LR scheduler, whose position ``rewind`` restores together with the learning
        rates it set (also when its optimizer is not passed: the rates come from its ``_last_lr``)."""
        if self.convention == "original":
            if optimizer is None:
                raise ValueError("capture: convention='original' starts a fresh optimizer state at the rewind "
                                 "step (open_lth makes a new optimizer there): pass the optimizer")
            optimizer.state.clear()  # round 1 goes on from step k with a fresh optimizer, as every later round
        if scheduler is not None and optimizer is None and "_last_lr" not in scheduler.state_dict():
            raise ValueError(f"capture: {type(scheduler).__name__} does not record the learning rates it set "
                             "(_last_lr): pass its optimizer too, so that rewind() restores them")
        if optimizer is not None:
            self._know_optimizer(optimizer)
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
        if self._saved["scheduler"] is not None and self._saved["optimizer"] is None:
            _restore_learning_rates(*self._saved["scheduler"])
        self.apply_masks()
        self._mask_optimizer_state()

    # ------------------------------------------------------------ pruning
    @torch.no_grad()
    def prune_round(self, *, min_density: float | None = None) -> float:
        """Prune exactly ceil(rate * survivors) surviving weights of smallest |w| (ties by index);
        ``convention="original"``: open_lth's count and ties (see the class docstring).

        ``min_density``: never go below ``round(min_density * total)`` survivors, so that the last
        round of a schedule lands on the target density instead of overshooting it (a round with
        nothing left to prune changes nothing; under ``"original"`` a round that would go below it
        prunes exactly down to it instead). Returns the new density; the pruned weights are zeroed
        at once. Collective when sharded.
        """
        reshard(self._fsdp_modules)
        self._check_weights_current()
        survivors = self._count_survivors() if self.sharded else self.survivors()
        if survivors == 0:
            raise ValueError("prune_round: no surviving weights left to prune")
        prunes = self._original_prunes(survivors, min_density) if self.convention == "original" else None
        if prunes is None:
            count = math.ceil(self.rate * survivors)
            if min_density is not None:
                count = min(count, survivors - self._floor_count(min_density))
                if count <= 0:
                    return survivors / self._total
            if self.sharded:
                return self._prune_sharded(survivors, count)
            prunes = self._exact_prunes(count)
        for prune, mask in zip(prunes, self.masks):
            mask &= ~prune
        self.round += 1
        assert_same_on_all_ranks(torch.cat([mask.reshape(-1) for mask in self.masks]),
                                 f"IMP's masks (round {self.round})")
        self.apply_masks()
        self._mask_optimizer_state()
        return self.density

    def _exact_prunes(self, count: int) -> list[torch.Tensor]:
        """Per layer, the surviving entries among the ``count`` of smallest |w| (ties by index)."""
        scores = [torch.where(mask, weight.detach().abs(), math.inf)
                  for weight, mask in zip(self.weights, self.masks)]
        threshold = kth_value(scores, count - 1)
        _check_threshold(threshold)
        ties_left = count - sum(int((score < threshold).sum()) for score in scores)
        prunes = []
        for score, mask in zip(scores, self.masks):
            prune, ties_left = _layer_pruned(score, threshold, mask, ties_left)
            prunes.append(prune)
        return prunes

    def _original_prunes(self, survivors: int, min_density: float | None) -> list[torch.Tensor] | None:
        """open_lth's round: every surviving weight with |w| <= the (n+1)-th smallest, where
        n = ceil(rate * (survivors + excluded weights)). None when that would go below ``min_density``
        (the caller then prunes exactly down to it)."""
        count = math.ceil(self.rate * (survivors + self._excluded))
        if count >= survivors:
            raise ValueError(f"prune_round: open_lth's count n = ceil({self.rate} * {survivors + self._excluded}) = "
                             f"{count} leaves no threshold among the {survivors} surviving weights")
        scores = [torch.where(mask, weight.detach().abs().float(), math.inf)
                  for weight, mask in zip(self.weights, self.masks)]
        threshold = kth_value(scores, count)  # 0-based: the (n+1)-th smallest, open_lth's sort(|w|)[n]
        _check_threshold(threshold)
        prunes = [mask & (score <= threshold) for score, mask in zip(scores, self.masks)]
        if min_density is not None and survivors - sum(int(p.sum()) for p in prunes) < self._floor_count(min_density):
            return None
        return prunes

    def _floor_count(self, min_density: object) -> int:
        """Survivors that ``min_density`` keeps: round(min_density * total), as the baselines do."""
        if isinstance(min_density, bool) or not isinstance(min_density, (int, float)):
            raise TypeError(f"min_density must be a float in (0, 1], got {type(min_density).__name__}")
        if not 0 < min_density <= 1:
            raise ValueError(f"min_density must be in (0, 1], got {min_density!r}")
        return round(min_density * self._total)

    def _prune_sharded(self, survivors: int, count: int) -> float:
        """``prune_round`` on FSDP2 shards: the global threshold from ``sharded_kth_value``, then
        each rank prunes its entries below it and its quota of ties (global index order)."""
        scores = [torch.where(mask, local_shard(weight).detach().abs(), math.inf)
                  for weight, mask in zip(self.weights, self.masks)]
        threshold = sharded_kth_value(scores, count - 1)
        _check_threshold(threshold)
        self.round += 1
        assert_same_on_all_ranks(torch.tensor([count, threshold.item()], dtype=torch.float64),
                                 f"IMP's pruning threshold (round {self.round})")
        threshold = threshold.to(scores[0].device)
        quotas = sharded_tie_quotas(scores, self.masks, threshold, count)
        for score, mask, quota in zip(scores, self.masks, quotas):
            mask &= ~_layer_pruned(score, threshold, mask, quota)[0]
        self.apply_masks()
        self._mask_optimizer_state()
        left = self._global_survivors = self._count_survivors()
        if left != survivors - count:
            raise RuntimeError(f"IMP (sharded): pruned {survivors - left} weights instead of {count}; "
                               "are the FSDP2 shards in rank order along dim 0?")
        return left / self._total

    # ------------------------------------------------------------ optimizer
    def optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The drop-in fused masked optimizer of your ``torch.optim.SGD``/``Adam``/``AdamW``:
        ``optimizer = imp.optimizer(optimizer)``. Its ``step()`` is one pass that also keeps the pruned
        weights and their state at 0, so ``after_backward`` and ``after_step`` do nothing from then on
        (call them or not). It shares param groups, state and hooks with ``optimizer``: a scheduler made
        for either drives both; use the returned one. Single process or DDP (not FSDP2 shards).
        Gradients of pruned weights stay in ``.grad`` (the step never reads them): if you clip
        gradients by norm, call ``zero_pruned_gradients()`` before clipping to clip as before."""
        if self.sharded:
            raise ValueError("IMP.optimizer: the fused masked step works on whole weights, not FSDP2 shards; "
                             "keep the optimizer and IMP's after_backward/after_step hooks")
        self._check_layouts()
        fused = masked_optimizer(optimizer, dict(zip(self.weights, self.masks)))
        self._know_optimizer(fused)
        self._fused = True
        return fused

    def _know_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Remember the optimizer whose state ``prune_round``/``rewind`` mask (and mask it now)."""
        self._optimizer = optimizer
        self._mask_optimizer_state()

    def _mask_optimizer_state(self) -> None:
        if self._optimizer is not None and not self.sharded:
            mask_optimizer_state(self._optimizer, dict(zip(self.weights, self.masks)))

    # ------------------------------------------------------------ training hooks
    def after_backward(self) -> None:
        """Zero the gradients of pruned weights (one fused call); between backward and step.
        Nothing to do under ``imp.optimizer(...)``'s fused step, which never reads them."""
        if self._fused:
            return
        self.zero_pruned_gradients()

    def zero_pruned_gradients(self) -> None:
        """Zero the gradients of pruned weights now (one fused call), whatever optimizer steps.
        RuntimeError when no prunable weight has a gradient (called before ``loss.backward()``):
        nothing would be masked."""
        if self.weights and self.weights[0].grad is None and all(weight.grad is None for weight in self.weights):
            raise RuntimeError("IMP.after_backward: no prunable weight has a gradient, so nothing would be masked: "
                               "call it after loss.backward() and before optimizer.step()")
        if not self.sharded:
            if self._grad_plan is None:  # the masks are edited in place: one plan serves every round
                self._check_layouts()
                self._grad_plan = TruncationPlan(self.weights, self.masks, scale=0.0)
            self._grad_plan()
            return
        grads, masks = local_grads(self.weights, self.masks)
        if grads:
            truncate_grads_(grads, masks, scale=0.0)

    @torch.no_grad()
    def after_step(self) -> None:
        """Zero the pruned weights again after ``optimizer.step()``, when that is needed.

        Not needed (nothing is done) under ``imp.optimizer(...)``'s fused step, nor when IMP knows the
        optimizer (passed to ``capture``) and it is ``torch.optim.SGD``/``Adam``/``AdamW``: their state
        is masked at every ``prune_round``/``rewind``, and then masked gradients alone keep pruned
        weights at 0. Otherwise a momentum buffer restored by ``rewind`` (or another optimizer's state)
        could still move a pruned weight, and this pass pins it.
        """
        if self._fused or (self._optimizer is not None and safe_with_masked_state(self._optimizer)):
            return
        self.apply_masks()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned weights of the model in place (one fused call)."""
        if self.sharded:
            reshard(self._fsdp_modules)
            truncate_grads_([local_shard(weight).detach() for weight in self.weights], self.masks, scale=0.0)
            return
        if self._weight_plan is None:  # the masks are edited in place: one plan serves every round
            self._check_layouts()
            self._weight_plan = TruncationPlan(self.weights, self.masks, scale=0.0, of="data")
        self._weight_plan()

    def epoch_end(self) -> bool:
        """The hook every method has at the end of an epoch: IMP only counts epochs (``imp.epoch``);
        its rounds are ``prune_round()`` and ``rewind()``. Always False (nothing is drawn here)."""
        self.epoch += 1
        return False

    @property
    def drawn(self) -> bool:
        """Always False: IMP's ticket is whatever ``prune_round`` left, never drawn by a hook."""
        return False

    def _check_layouts(self) -> None:
        """Each mask must still be in its weight's memory format (it was made in it)."""
        for name, weight, mask in zip(self.names, self.weights, self.masks):
            if memory_order(weight) != memory_order(mask):
                raise ValueError(f"IMP: {name} changed memory format (contiguous <-> channels_last) after IMP "
                                 "was made: convert the model (model.to(memory_format=...)) before creating IMP")

    # ------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """A snapshot of the masks, the round and the captured model/optimizer/scheduler states
        (when sharded: this rank's mask shards and DTensor states; save one file per rank)."""
        saved = self._saved
        return {
            "method": "imp",
            "convention": self.convention,
            "names": list(self.names),
            "masks": [mask.clone() for mask in self.masks],
            "round": self.round,
            "epoch": self.epoch,
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
        convention = state.get("convention", "default")  # states saved before conventions: the default
        if convention != self.convention:
            raise ValueError(f"IMP.load_state_dict: state of convention {convention!r}, this IMP follows "
                             f"{self.convention!r}")
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
        if self.sharded:
            self._global_survivors = self._count_survivors()
        if optimizer is not None:
            self._know_optimizer(optimizer)  # as capture() would have: its state is masked from now on
        self.round = int(state["round"])
        self.epoch = int(state.get("epoch", 0))  # states saved before the epoch count: 0

    # ------------------------------------------------------------ result
    def ticket(self) -> Ticket:
        """The current masks as a ``Ticket`` (method ``"imp"``), keyed by parameter name.

        When sharded, a collective: every rank gets the full masks (gathered from the shards).
        """
        hyperparameters = {"rate": self.rate, "rewind_step": self.rewind_step, "rounds": self.round,
                           "exclude": list(self.exclude), "convention": self.convention}
        full = gather_full_masks(self.names, self.masks, self.weights, "IMP") if self.sharded \
            else [mask.clone() for mask in self.masks]
        masks = dict(zip(self.names, full))
        return Ticket(masks=masks, method="imp", hyperparameters=hyperparameters)

    # ------------------------------------------------------------ Method protocol
    name = "imp"  # its key in sparseticket.METHODS
    kind = "weight"  # weight masks

    def hooked_parameters(self) -> list[torch.Tensor]:
        """The tensors whose gradients ``after_backward`` zeroes where pruned: every masked weight."""
        return list(self.weights)

    def check_placement(self) -> None:
        """RuntimeError if a weight is no longer the tensor IMP masks, left its mask's device, or was cast
        to a dtype IMP does not mask (model moved or cast after IMP was created). Skipped when sharded."""
        if self.sharded:
            return
        for name, layer, mask, weight in zip(self.names, self._layers, self.masks, self.weights):
            current = layer.tensor
            if mask.device != current.device:
                raise RuntimeError(f"IMP: the mask of {name} is on {mask.device}, the weight on {current.device}: "
                                   "create IMP after moving the model to its device")
            if current is not weight and not nn.utils.parametrize.is_parametrized(layer.module, layer.attr):
                raise RuntimeError(f"IMP: {name} is no longer the tensor IMP masks (replaced after IMP was created): "
                                   "create IMP after moving or converting the model")
            if current.dtype not in WEIGHT_DTYPES:
                raise RuntimeError(f"IMP: {name} was cast to {current.dtype} after IMP was created; IMP masks "
                                   "float32/float16/bfloat16 weights: create IMP after converting the model")
