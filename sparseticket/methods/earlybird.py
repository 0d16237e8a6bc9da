"""EarlyBird (You et al., ICLR 2020): a channel ticket drawn once the BN-gamma masks stop moving.

Add three lines to any training loop::

    eb = EarlyBird(model)
    ...  loss.backward(); eb.after_backward(); optimizer.step(); eb.after_step()
    ...  if eb.epoch_end(): break   # at the end of every epoch; True when the ticket is drawn
    eb.ticket().save("ticket.safetensors")

``after_backward`` must see unscaled gradients: under a ``GradScaler`` call
``scaler.unscale_(optimizer)`` before it (the trainer callbacks in ``sparseticket.integrations``
do this themselves).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sparseticket.methods.bn_channels import (
    GLOBAL_GROUP,
    ChannelLayer,
    channel_groups,
    channel_importance,
    channel_layers,
    relative_importance,
)
from sparseticket.methods.consistency import assert_same_on_all_ranks
from sparseticket.methods.convention import check_convention
from sparseticket.methods.distributed import unwrap
from sparseticket.methods.ticket import Ticket
from sparseticket.methods.weights import check_materialized
from sparseticket.ops import TruncationPlan, mask_distances, unpack_mask

LOW_PRECISION = (torch.float16, torch.bfloat16)


class TiedScalesWarning(UserWarning):
    """Every tracked scale of a threshold group is equal: EarlyBird's mask is then chosen by index."""


@dataclass
class RatioTracker:
    """The mask queue and stop state of one pruning ratio."""

    ratio: float
    masks: list[torch.Tensor] = field(default_factory=list)  # last queue-1 packed masks, oldest first
    static_runs: torch.Tensor | None = None  # per channel: epochs its bit stayed unchanged
    distances: list[float] = field(default_factory=list)  # newest vs each older mask, oldest first
    history: list[list[float]] = field(default_factory=list)  # distances of every epoch
    found_epoch: int | None = None


DEFAULT_L1 = 1e-4  # L1 on BN gamma: Early-Bird-Tickets' --s with -sr (its search script's setting)


def hamming_distances(distances: torch.Tensor, channels: int) -> list[float]:
    """Distances as the original EarlyBird and WORM code computes them: ``1 - equal / N`` in double.

    ``distances`` are the op's float32 ``differing / N``; for ``N < 2**23`` rounding ``d * N``
    recovers the differing count exactly, so 4 of 40 channels give 0.09999999999999998 (which
    ``eps = 0.1`` accepts), not float32's 0.10000000149."""
    if channels >= 2**23:
        raise ValueError(f"mask distances over {channels} channels: counts are exact below 2**23 only")
    return [1.0 - (channels - round(value * channels)) / channels for value in distances.tolist()]


def _check_ratios(ratio: float | Sequence[float]) -> list[float]:
    ratios = [ratio] if isinstance(ratio, (int, float)) else list(ratio)
    if not ratios or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1
                         for r in ratios):
        raise ValueError(f"ratio must be a number in [0, 1) or a non-empty list of them, got {ratio!r}")
    return [float(r) for r in ratios]


class EarlyBird:
    """Tracks the global BN-gamma channel mask each epoch and draws the ticket when it stabilises.

    Tracks every affine BatchNorm (and ``ChannelCoefficients``, see ``attach_slimming``).
    ``ratio``: fraction of channels pruned (a list tracks several at once, each with its own
    queue and found epoch); ``l1``: L1 sparsity on gamma (subgradient added by
    ``after_backward``); ``queue``: masks kept; ``eps``: the ticket is drawn when the newest mask
    is within ``eps`` (normalised Hamming distance, ``1 - equal/N`` in double as the original
    code computes it) of every older mask of a full queue.

    ``convention="original"`` (Early-Bird-Tickets' ``main.py``): the queue also holds the untrained
    model's mask, taken here at construction (the original takes a mask at the start of every
    epoch, epoch 0 included), so the first full queue comes one epoch earlier. Create the method
    after moving the model to its device. The default queue holds the masks of trained epochs only.
    """

    METHOD = "earlybird"  # the tag of state_dict(): a state loads only into the same method
    name = METHOD  # its key in sparseticket.METHODS
    kind = "channel"  # channel masks: physically prunable

    def __init__(
        self,
        model: nn.Module,
        *,
        ratio: float | Sequence[float] = 0.5,
        l1: float = DEFAULT_L1,
        queue: int = 5,
        eps: float = 0.1,
        convention: str = "default",
    ) -> None:
        self.convention = check_convention(convention)
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 2:
            raise ValueError(f"queue must be an int >= 2 (masks compared), got {queue!r}")
        if not 0 <= eps <= 1:
            raise ValueError(f"eps must be in [0, 1], got {eps!r}")
        if l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {l1!r}")
        self.model = model = unwrap(model)  # DDP-wrapped or bare: names are the bare module's
        check_materialized(model, type(self).__name__)
        self.layers: list[ChannelLayer] = channel_layers(model)
        self.channels = self.layers[-1].stop
        self.l1 = float(l1)
        self.queue = queue
        self.eps = float(eps)
        self.single_ratio = isinstance(ratio, (int, float))
        self.trackers = [RatioTracker(r) for r in _check_ratios(ratio)]
        self.epoch = 0
        self.prune_report = None
        self._l1_plan: TruncationPlan | None = None  # made on the first step, on the model's device
        if self.convention == "original":  # the untrained model's mask opens every queue
            self._record_all(channel_importance(self.layers), initial=True)

    # ----------------------------------------------------------------- per step
    def after_backward(self) -> None:
        """Add l1*sign(gamma) to every tracked scale's gradient (one fused call); before optimizer.step().
        RuntimeError when no tracked scale has a gradient (called before ``loss.backward()``)."""
        if self.l1 == 0.0:
            return
        layers = self.layers
        if layers[0].gamma.grad is None and all(layer.gamma.grad is None for layer in layers):
            raise RuntimeError(f"{type(self).__name__}.after_backward: no tracked scale (BatchNorm gamma or slimming "
                               "coefficient) has a gradient, so no L1 term would be added: call it after "
                               "loss.backward() and before optimizer.step()")
        plan = self._l1_plan
        if plan is None or plan.device != self.layers[0].gamma.device or plan.l1 != self.l1:  # first, moved, edited
            self._l1_plan = TruncationPlan([layer.gamma for layer in self.layers], self._keep_everything(),
                                           scale=1.0, l1=self.l1)
        self._l1_plan()

    def after_step(self) -> None:
        """The hook every method has after ``optimizer.step()``: nothing to do for EarlyBird."""

    def _keep_everything(self) -> list[torch.Tensor]:
        return [torch.ones(layer.stop - layer.start, dtype=torch.bool, device=layer.gamma.device)
                for layer in self.layers]

    # ----------------------------------------------------------------- per epoch
    def epoch_end(self) -> bool:
        """Record this epoch's mask for every ratio; True the first time any ratio's ticket is drawn."""
        self.epoch += 1
        return self._record_all(channel_importance(self.layers))

    def _record_all(self, importance: torch.Tensor, initial: bool = False) -> bool:
        newly_found = False
        for tracker in self.trackers:
            newly_found |= self._record(tracker, importance, initial)
        return newly_found

    def _record(self, tracker: RatioTracker, importance: torch.Tensor, initial: bool = False) -> bool:
        if not initial:
            self._check_importance(importance)
        relative = relative_importance(self.layers, importance, tracker.ratio,
                                       break_ties=self.convention != "original")
        history = (torch.stack(tracker.masks) if tracker.masks else
                   torch.empty(0, (self.channels + 7) // 8, dtype=torch.uint8, device=importance.device))
        if tracker.static_runs is None:
            tracker.static_runs = torch.zeros(self.channels, dtype=torch.int32, device=importance.device)
        packed, distances = mask_distances(relative, 0.0, history, static_runs=tracker.static_runs)
        assert_same_on_all_ranks(packed, f"EarlyBird's channel mask (ratio {tracker.ratio}, epoch {self.epoch})")
        tracker.distances = hamming_distances(distances, self.channels)
        if not initial:  # the untrained model's mask has no distances to plot
            tracker.history.append(tracker.distances)
        tracker.masks = (tracker.masks + [packed])[-(self.queue - 1):]
        if tracker.found_epoch is None and self._queue_full(tracker) and max(tracker.distances) <= self.eps:
            tracker.found_epoch = self.epoch
            return True
        return False

    def _check_importance(self, importance: torch.Tensor) -> None:
        """ValueError when a tracked scale is NaN or infinite (training diverged: a mask drawn from
        it would be garbage); TiedScalesWarning when every scale of a group is equal (the mask is
        then chosen by index, not by importance)."""
        finite = torch.isfinite(importance)
        if not bool(finite.all()):
            layer = next(layer for layer in self.layers if not bool(finite[layer.start:layer.stop].all()))
            raise ValueError(f"{type(self).__name__}.epoch_end: the scales of {layer.name!r} contain NaN or inf "
                             f"at epoch {self.epoch}: training diverged (a learning rate too large?); no mask is "
                             "drawn from them")
        for group, members in channel_groups(self.layers).items():
            values = torch.cat([importance[layer.start:layer.stop] for layer in members])
            if values.numel() > 1 and bool(values.max() == values.min()):
                dtype = members[0].gamma.dtype
                why = ("the model has not trained yet, or l1 and the learning rate are 0" if dtype not in LOW_PRECISION
                       else f"gamma is {str(dtype).removeprefix('torch.')}: updates below its resolution are lost; "
                            "keep BatchNorm (and slimming coefficients) in float32")
                where = "the global group" if group == GLOBAL_GROUP else f"group {group!r}"
                rule = ("the authors' rule (convention='original') prunes every one of them"
                        if self.convention == "original" else "the channel mask is chosen by index, not by importance")
                warnings.warn(f"{type(self).__name__}: all {values.numel()} scales of {where} are equal "
                              f"({float(values[0]):g}), so {rule} ({why})", TiedScalesWarning, stacklevel=5)

    def _queue_full(self, tracker: RatioTracker) -> bool:
        return len(tracker.distances) == self.queue - 1

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """A snapshot of everything ``epoch_end`` changes (tensors and plain values only)."""
        return {
            "method": self.METHOD,
            "convention": self.convention,
            "channels": self.channels,
            "queue": self.queue,
            "epoch": self.epoch,
            "trackers": [{
                "ratio": tracker.ratio,
                "masks": [mask.clone() for mask in tracker.masks],
                "static_runs": None if tracker.static_runs is None else tracker.static_runs.clone(),
                "distances": list(tracker.distances),
                "history": [list(distances) for distances in tracker.history],
                "found_epoch": tracker.found_epoch,
            } for tracker in self.trackers],
        }

    def load_state_dict(self, state: dict[str, Any], *, optimizer: Any = None, scheduler: Any = None) -> None:
        """Restore a copy of a ``state_dict()`` of the same method, ratios, queue and channel count
        (``optimizer``/``scheduler``: accepted for the ``Method`` protocol, unused)."""
        if not isinstance(state, dict) or state.get("method") != self.METHOD:
            found = state.get("method") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{type(self).__name__}.load_state_dict: state of method {found!r}, "
                             f"expected {self.METHOD!r}")
        convention = state.get("convention", "default")  # states saved before conventions: the default
        if convention != self.convention:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state of convention {convention!r}, "
                             f"this method follows {self.convention!r}")
        ratios = [tracker["ratio"] for tracker in state["trackers"]]
        expected = (self.channels, self.queue, [tracker.ratio for tracker in self.trackers])
        if (state["channels"], state["queue"], ratios) != expected:
            raise ValueError(f"{type(self).__name__} state mismatch: (channels, queue, ratios) "
                             f"{(state['channels'], state['queue'], ratios)} != {expected}")
        device = self.layers[0].gamma.device
        packed_shape = ((self.channels + 7) // 8,)
        trackers = []
        for saved in state["trackers"]:
            static_runs = saved["static_runs"]
            if (len(saved["masks"]) > self.queue - 1 or any(m.shape != packed_shape for m in saved["masks"])
                    or (static_runs is not None and static_runs.shape != (self.channels,))):
                raise ValueError(f"{type(self).__name__} state mismatch: masks or static_runs of ratio "
                                 f"{saved['ratio']} do not fit {self.channels} channels and queue {self.queue}")
            trackers.append(RatioTracker(
                saved["ratio"],
                masks=[mask.to(device, copy=True) for mask in saved["masks"]],
                static_runs=None if static_runs is None else static_runs.to(device, copy=True),
                distances=list(saved["distances"]),
                history=[list(distances) for distances in saved["history"]],
                found_epoch=saved["found_epoch"],
            ))
        self.trackers = trackers
        self.epoch = state["epoch"]

    # ----------------------------------------------------------------- protocol
    def hooked_parameters(self) -> list[torch.Tensor]:
        """The tensors whose gradients ``after_backward`` edits: every tracked scale (BN gamma)."""
        return [layer.gamma for layer in self.layers]

    def check_placement(self) -> None:
        """RuntimeError if the mask queue is on another device than the scales (model moved after epochs)."""
        device = self.layers[0].gamma.device
        for tracker in self.trackers:
            state = tracker.masks + ([] if tracker.static_runs is None else [tracker.static_runs])
            if any(tensor.device != device for tensor in state):
                raise RuntimeError(f"{type(self).__name__}: the mask queue of ratio {tracker.ratio} is on "
                                   f"{state[0].device}, the BN scales on {device}: the model was moved after "
                                   "epoch_end; call load_state_dict(state_dict()) to bring the queue along")

    # ----------------------------------------------------------------- results
    def _single(self, values: list):
        return values[0] if self.single_ratio else {t.ratio: v for t, v in zip(self.trackers, values)}

    @property
    def found_epoch(self) -> int | None | dict[float, int | None]:
        """Epoch (1-based count of epoch_end calls) the ticket was drawn; per ratio for a list."""
        return self._single([tracker.found_epoch for tracker in self.trackers])

    @property
    def distances(self) -> list[float] | dict[float, list[float]]:
        """Distances of the newest mask to each older mask in the queue (oldest first)."""
        return self._single([tracker.distances for tracker in self.trackers])

    @property
    def history(self) -> list[list[float]] | dict[float, list[list[float]]]:
        """The distances of every epoch so far, for plots."""
        return self._single([tracker.history for tracker in self.trackers])

    @property
    def drawn(self) -> bool:
        """True once the ticket of any tracked ratio has been drawn."""
        return any(tracker.found_epoch is not None for tracker in self.trackers)

    def ticket(self, ratio: float | None = None) -> Ticket:
        """The newest channel mask of ``ratio`` (default: the first) as a ``Ticket``: channel masks
        keyed by BN (or coefficient) module name, the settings and the found epoch."""
        tracker = self._tracker(ratio)
        return Ticket({}, self.METHOD, {**self._hyperparameters(), "ratio": tracker.ratio,
                                        "found_epoch": tracker.found_epoch, "epochs": self.epoch},
                      channel_masks=self.channel_mask(tracker.ratio))

    def _hyperparameters(self) -> dict[str, Any]:
        return {"l1": self.l1, "queue": self.queue, "eps": self.eps, "convention": self.convention}

    def channel_mask(self, ratio: float | None = None) -> dict[str, torch.Tensor]:
        """Per-layer bool masks (True = keep) of the newest mask for ``ratio`` (default: the first)."""
        flat = self._newest_mask(self._tracker(ratio))
        return {layer.name: flat[layer.start:layer.stop].clone() for layer in self.layers}

    def prune(
        self,
        model: nn.Module | None = None,
        *,
        example_inputs: torch.Tensor,
        ratio: float | None = None,
        measure_latency: bool = True,
    ) -> nn.Module:
        """A physically smaller copy of ``model`` (default: the tracked one) without the pruned
        channels of the newest mask; params, MACs and CPU latency before/after go to ``prune_report``.

        BatchNorm channels are removed through Torch-Pruning's dependency graph; slimming
        coefficients (transformers) remove attention heads and FFN neurons.
        """
        from sparseticket.methods.structured import prune_model

        target = self.model if model is None else model
        pruned, self.prune_report = prune_model(target, self.channel_mask(ratio), example_inputs,
                                                measure_latency=measure_latency)
        return pruned

    def _newest_mask(self, tracker: RatioTracker) -> torch.Tensor:
        if not tracker.masks:
            raise RuntimeError("no mask yet: call epoch_end() at least once")
        return unpack_mask(tracker.masks[-1], self.channels)

    def _tracker(self, ratio: float | None) -> RatioTracker:
        if ratio is None:
            return self.trackers[0]
        for tracker in self.trackers:
            if tracker.ratio == ratio:
                return tracker
        raise ValueError(f"ratio {ratio} is not tracked; tracked: {[t.ratio for t in self.trackers]}")
