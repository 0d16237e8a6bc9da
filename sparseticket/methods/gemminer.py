"""Gem-Miner (Sreenivasan et al., NeurIPS 2022): a sparse mask found at initialization.

Every Conv/Linear weight is frozen at its initialization and multiplied by ``1[p > 0.5] * q``:
``p`` are scores in [0, 1] trained with straight-through gradients, ``q`` frozen flags. Every
``period`` epochs the globally lowest-scoring active weights are frozen (``q = 0``) so that the
mask ends at exactly ``density``. Scores and flags live in one flat buffer each::

    gm = GemMiner(model, density=0.05, epochs=E)
    ...  loss.backward(); gm.step()               # fused SGD+momentum+L2+clamp on all scores
    ...  gm.epoch_end(epoch)                      # freezing schedule, cosine learning rate
    ticket = gm.ticket(); gm.finish()             # weights back to their init, pruned ones zero

Under ``torch.distributed``, wrap the model in ``DistributedDataParallel`` after creating the
miner: the scores are registered as the model's one trainable parameter (on the first layer's
parametrization), so DDP averages their gradient across ranks and ``gm.step()`` acts on the
averaged gradient; the frozen flags are checksummed across ranks at every freezing round.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparseticket.methods.consistency import assert_same_on_all_ranks
from sparseticket.methods.distributed import unwrap
from sparseticket.methods.ticket import Ticket
from sparseticket.methods.weights import prunable_layers, weight_name
from sparseticket.ops import gemminer_mask, gemminer_step_, kth_value


class _ScoreMask(nn.Module):
    """Parametrization: weight -> gemminer_mask(weight, scores view, flags view)."""

    def __init__(self, miner: GemMiner, start: int, stop: int) -> None:
        super().__init__()
        self._miner = [miner]  # a list: keep the miner out of the module tree
        self.start, self.stop = start, stop

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        miner = self._miner[0]
        scores = miner.scores[self.start:self.stop].view(weight.shape)
        flags = miner.flags[self.start:self.stop].view(weight.shape)
        return gemminer_mask(weight, scores, flags)


def freezing_steps(epochs: int, period: int) -> int:
    """Number of freezing rounds: floor((epochs - 1) / period)."""
    return (epochs - 1) // period


class GemMiner:
    """Scores and frozen flags for every prunable weight, the fused score step and the freezing schedule.

    ``density``: target fraction of weights kept; ``epochs``: mining epochs E; ``period``: freeze
    every T epochs (rate 1 - density**(1/floor((E-1)/T)) of the active weights each time);
    ``l2``: lambda of lambda*||p||^2; ``lr``/``momentum``: SGD on the scores (cosine schedule
    over ``epochs``). All of the model's own parameters are frozen while mining (BN acts as
    non-affine). ``seed`` seeds the U[0, 1] score draw; None follows ``torch.manual_seed``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        density: float,
        epochs: int,
        period: int = 5,
        l2: float = 1e-4,
        lr: float = 0.1,
        momentum: float = 0.9,
        exclude: Iterable[str] = (),
        seed: int | None = None,
    ) -> None:
        if not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"period must be a positive int, got {period!r}")
        if density < 1 and freezing_steps(epochs, period) < 1:
            raise ValueError(f"epochs={epochs} with period={period} leaves no freezing round: "
                             f"need epochs > period to reach density {density}")
        for name, value in (("l2", l2), ("lr", lr), ("momentum", momentum)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.model = model = unwrap(model)  # DDP-wrapped or bare: names are the bare module's
        self.target_density = float(density)
        self.epochs, self.period = epochs, period
        self.l2, self.base_lr, self.lr, self.momentum = float(l2), float(lr), float(lr), float(momentum)
        self.layers = prunable_layers(model, exclude)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.slices: dict[str, slice] = {}
        start = 0
        for name, module in self.layers.items():
            self.slices[weight_name(name)] = slice(start, start + module.weight.numel())
            start += module.weight.numel()
        device = next(iter(self.layers.values())).weight.device
        # No seed: torch's global RNG (torch.manual_seed); a seed: its own generator, global RNG untouched.
        generator = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        self.scores = nn.Parameter(torch.rand(start, generator=generator).to(device))  # U[0, 1]
        self.flags = torch.ones(start, dtype=torch.bool, device=device)
        self.momentum_buffer = torch.zeros(start, device=device)
        for index, (name, module) in enumerate(self.layers.items()):
            part = self.slices[weight_name(name)]
            score_mask = _ScoreMask(self, part.start, part.stop)
            if index == 0:
                # The scores are the model's only trainable parameter while mining, so that
                # DistributedDataParallel can wrap the model and average their gradient.
                score_mask.scores = self.scores
            parametrize.register_parametrization(module, "weight", score_mask, unsafe=True)
        self.freezes_done = 0

    # ----------------------------------------------------------------- per step
    def step(self) -> int:
        """Fused SGD step (momentum, L2 on the scores, clamp to [0, 1]) on every score; returns
        the number of weights in the mask (p > 0.5 and not frozen). Zeroes the score gradient."""
        if self.scores.grad is None:
            raise RuntimeError("no score gradient: call loss.backward() before gm.step()")
        kept = gemminer_step_(self.scores.data, self.scores.grad, self.momentum_buffer, self.flags,
                              lr=self.lr, momentum=self.momentum, l2=self.l2)
        self.scores.grad = None
        return kept

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the scores to [0, 1] (after a step of another optimizer on ``gm.scores``)."""
        self.scores.clamp_(0.0, 1.0)

    # ----------------------------------------------------------------- per epoch
    def epoch_end(self, epoch: int) -> bool:
        """After epoch ``epoch`` (1-based): cosine learning rate; freeze on schedule. True if it froze."""
        self.lr = 0.5 * self.base_lr * (1 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs))
        steps = freezing_steps(self.epochs, self.period)
        if self.target_density >= 1 or epoch % self.period or not 0 < epoch // self.period <= steps:
            return False
        round_index = epoch // self.period
        if round_index <= self.freezes_done:
            return False
        target = round(self.flags.numel() * self.target_density ** (round_index / steps))
        self._freeze_lowest(int(self.flags.sum()) - target)
        assert_same_on_all_ranks(self.flags, f"Gem-Miner's frozen flags (epoch {epoch})")
        self.freezes_done = round_index
        return True

    @torch.no_grad()
    def _freeze_lowest(self, count: int) -> None:
        """Freeze exactly ``count`` active weights, lowest scores first (ties by position)."""
        if count <= 0:
            return
        active_scores = torch.where(self.flags, self.scores.detach(), torch.tensor(2.0, device=self.flags.device))
        threshold = kth_value(active_scores, count - 1)
        below = self.flags & (active_scores < threshold)
        ties = (self.flags & (active_scores == threshold)).nonzero().squeeze(1)
        freeze = below.clone()
        freeze[ties[: count - int(below.sum())]] = True
        self.flags &= ~freeze

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """A snapshot of the scores, flags, momentum, learning rate and freezing progress.

        The frozen weights are not in it: they are the model's own state
        (``<layer>.parametrizations.weight.original``).
        """
        return {
            "method": "gemminer",
            "scores": self.scores.detach().clone(),
            "flags": self.flags.clone(),
            "momentum_buffer": self.momentum_buffer.clone(),
            "lr": self.lr,
            "freezes_done": self.freezes_done,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` in place (``gm.scores`` stays the same Parameter)."""
        if not isinstance(state, dict) or state.get("method") != "gemminer":
            found = state.get("method") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"GemMiner.load_state_dict: state of method {found!r}, expected 'gemminer'")
        for name, target in (("scores", self.scores), ("flags", self.flags),
                             ("momentum_buffer", self.momentum_buffer)):
            if state[name].shape != target.shape or state[name].dtype != target.dtype:
                raise ValueError(f"GemMiner state mismatch: {name} is {tuple(state[name].shape)} "
                                 f"{state[name].dtype}, this model needs {tuple(target.shape)} {target.dtype}")
        self.scores.copy_(state["scores"])
        self.flags.copy_(state["flags"])
        self.momentum_buffer.copy_(state["momentum_buffer"])
        self.lr = float(state["lr"])
        self.freezes_done = int(state["freezes_done"])

    # ----------------------------------------------------------------- results
    @property
    def density(self) -> float:
        """Fraction of weights not frozen (q = 1): what the schedule drives to ``density``."""
        return int(self.flags.sum()) / self.flags.numel()

    @property
    def mask_density(self) -> float:
        """Fraction of weights in the live mask (p > 0.5 and q = 1)."""
        return int(((self.scores.detach() > 0.5) & self.flags).sum()) / self.flags.numel()

    def ticket(self) -> Ticket:
        """The mask to fine-tune: the flags q (at exactly ``density`` once mining ended), with scores."""
        masks, scores = {}, {}
        for name, module in self.layers.items():
            key = weight_name(name)
            shape = module.parametrizations.weight.original.shape
            masks[key] = self.flags[self.slices[key]].view(shape).cpu().clone()
            scores[key] = self.scores.detach()[self.slices[key]].view(shape).cpu().clone()
        hyperparameters = {"density": self.target_density, "epochs": self.epochs, "period": self.period,
                           "l2": self.l2, "lr": self.base_lr, "momentum": self.momentum}
        return Ticket(masks, "gemminer", hyperparameters, scores=scores)

    def finish(self) -> Ticket:
        """Remove the score parametrizations: weights back at their initialization with the
        ticket's pruned weights zeroed, every parameter trainable again. Returns the ticket."""
        ticket = self.ticket()
        for module in self.layers.values():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for parameter in self.model.parameters():
            parameter.requires_grad_(True)
        ticket.apply(self.model)
        return ticket
