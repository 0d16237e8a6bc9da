"""WORM (Vasudev, NeurIPS 2024 ENLSP): EarlyBird plus gradient truncation of static pruned channels.

Once the mean distance of a full mask queue falls below ``trigger``, the gradients of gamma and
beta (and optionally the producing conv filters) of every static channel are scaled by ``chi``
on each step: ``g <- g * (m + chi * (1 - m))``. The ticket is drawn by EarlyBird's rule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparseticket.methods.bn_channels import ChannelLayer
from sparseticket.methods.convention import check_convention
from sparseticket.methods.earlybird import DEFAULT_L1, EarlyBird, RatioTracker
from sparseticket.ops import TruncationPlan

STATIC_DEFINITIONS = ("newest", "queue")


def producing_layer(model: nn.Module, layer: ChannelLayer) -> nn.Module:
    """The Conv/Linear right before a BN in module order whose outputs it normalises."""
    previous = None
    for module in model.modules():
        if module is layer.module:
            break
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            previous = module
    channels = getattr(previous, "out_channels", getattr(previous, "out_features", None))
    if previous is None or channels != layer.module.num_features:
        raise ValueError(f"truncate_filters: no Conv/Linear with {layer.module.num_features} outputs "
                         f"precedes BN layer {layer.name!r}")
    return previous


class WORM(EarlyBird):
    """EarlyBird with WORM's trigger and gradient truncation of static pruned channels.

    ``static="newest"``: channels pruned in the newest mask; ``"queue"``: pruned in every mask
    of the queue. ``chi=0`` truncates hard. ``worm.truncating`` says whether it has triggered.

    ``l1``: L1 on gamma, as EarlyBird's (default 1e-4; the WORM authors' code has none: 0 under
    ``convention="original"``). ``convention="original"`` (the WORM repository's ``agents.py`` and
    ``earlyBird.py``): no L1 unless ``l1`` is given, and the untrained model's mask in the queue
    (its distance enters the trigger's mean), as EarlyBird's ``convention="original"``.
    """

    METHOD = "worm"
    name = METHOD  # its key in sparseticket.METHODS

    def __init__(
        self,
        model: nn.Module,
        *,
        ratio: float = 0.5,
        l1: float | None = None,
        queue: int = 5,
        eps: float = 0.1,
        trigger: float = 0.15,
        chi: float = 0.003,
        static: str = "newest",
        truncate_filters: bool = False,
        convention: str = "default",
    ) -> None:
        if not isinstance(ratio, (int, float)):
            raise ValueError("WORM tracks one ratio (its truncation follows that mask); got a list")
        if static not in STATIC_DEFINITIONS:
            raise ValueError(f"static must be one of {STATIC_DEFINITIONS}, got {static!r}")
        if not 0 <= chi <= 1:
            raise ValueError(f"chi must be in [0, 1], got {chi!r}")
        if l1 is None:
            l1 = 0.0 if check_convention(convention) == "original" else DEFAULT_L1
        super().__init__(model, ratio=ratio, l1=l1, queue=queue, eps=eps, convention=convention)
        self.trigger = float(trigger)
        self.chi = float(chi)
        self.static = static
        self.truncating = False
        self.trigger_epoch: int | None = None
        self.filters = [producing_layer(model, layer) for layer in self.layers] if truncate_filters else []
        self._keep: list[torch.Tensor] = []  # per layer: True where the channel is not static
        self._plans: list[TruncationPlan] = []  # made from _keep: scales and shifts, then filters

    @classmethod
    def for_transformers(cls, model: nn.Module, **overrides) -> WORM:
        """WORM with the paper's transformer settings: queue 3, stop at 0.01, trigger 0.015, chi 0.01."""
        settings = {"queue": 3, "eps": 0.01, "trigger": 0.015, "chi": 0.01, **overrides}
        return cls(model, **settings)

    def static_channels(self) -> dict[str, torch.Tensor]:
        """Per-layer bool masks of the channels whose gradients are truncated (True = static)."""
        flat = self._static_flat(self.trackers[0])
        return {layer.name: flat[layer.start:layer.stop].clone() for layer in self.layers}

    def _static_flat(self, tracker: RatioTracker) -> torch.Tensor:
        static = ~self._newest_mask(tracker)
        if self.static == "queue":
            static &= tracker.static_runs >= self.queue - 1
        return static

    def epoch_end(self) -> bool:
        """EarlyBird's epoch end, then the trigger check and a refresh of the static channels."""
        found = super().epoch_end()
        tracker = self.trackers[0]
        distances = tracker.distances
        if not self.truncating and self._queue_full(tracker) and sum(distances) / len(distances) < self.trigger:
            self.truncating = True
            self.trigger_epoch = self.epoch
        if self.truncating:
            self._refresh_keep()
        return found

    def _refresh_keep(self) -> None:
        """Per-layer keep masks (True = not static) from the newest mask of the queue."""
        keep = ~self._static_flat(self.trackers[0])
        self._keep = [keep[layer.start:layer.stop].contiguous() for layer in self.layers]
        self._plans = self._truncation_plans()

    def _truncation_plans(self) -> list[TruncationPlan]:
        """Gamma (with EarlyBird's L1) and beta of every layer, then the producing filters, scaled
        by chi where the channel is static: two launches a step at most."""
        params, keep, signs = [], [], []
        for layer, mask in zip(self.layers, self._keep):
            for tensor, sign_source in ((layer.gamma, layer.gamma), (layer.beta, None)):
                if tensor is not None:
                    params.append(tensor)
                    keep.append(mask)
                    # zeros stand in for beta's sign: sign(0) = 0, so beta gets no L1 term
                    signs.append(sign_source if sign_source is not None else torch.zeros_like(tensor))
        plans = [TruncationPlan(params, keep, scale=self.chi, l1=self.l1, l1_params=signs)]
        if self.filters:
            plans.append(TruncationPlan([f.weight for f in self.filters], self._keep, scale=self.chi))
        return plans

    def state_dict(self) -> dict[str, Any]:
        """EarlyBird's state plus the trigger state (the keep masks are rebuilt from the queue)."""
        return {**super().state_dict(), "truncating": self.truncating, "trigger_epoch": self.trigger_epoch}

    def load_state_dict(self, state: dict[str, Any], *, optimizer: Any = None, scheduler: Any = None) -> None:
        """Restore a WORM ``state_dict()``, then rebuild the keep masks of a triggered run
        (``optimizer``/``scheduler``: accepted for the ``Method`` protocol, unused)."""
        super().load_state_dict(state)
        self.truncating = state["truncating"]
        self.trigger_epoch = state["trigger_epoch"]
        self._keep, self._plans = [], []
        if self.truncating:
            self._refresh_keep()

    def hooked_parameters(self) -> list[torch.Tensor]:
        """EarlyBird's scales, then the shifts (BN beta) and producing filters it truncates once triggered."""
        shifts = [layer.beta for layer in self.layers if layer.beta is not None]
        return super().hooked_parameters() + shifts + [module.weight for module in self.filters]

    def _hyperparameters(self) -> dict[str, Any]:
        return {**super()._hyperparameters(), "trigger": self.trigger, "chi": self.chi, "static": self.static,
                "truncate_filters": bool(self.filters), "trigger_epoch": self.trigger_epoch}

    def after_backward(self) -> None:
        """EarlyBird's L1 on gamma; once triggered, also scale static channels' gradients by chi."""
        if not self.truncating:
            super().after_backward()
            return
        device, plan = self.layers[0].gamma.device, self._plans[0]
        if plan.device != device or plan.scale != self.chi or plan.l1 != self.l1:  # moved, or chi/l1 edited
            self._keep = [mask.to(device) for mask in self._keep]
            self._plans = self._truncation_plans()
        for plan in self._plans:
            plan()
