"""Gem-Miner (Sreenivasan et al., NeurIPS 2022): a sparse mask found at initialization.

Every prunable weight (Conv/Linear, ``nn.MultiheadAttention`` Q/K/V) is frozen at its
initialization and multiplied by ``1[p > 0.5] * q``:
``p`` are scores in [0, 1] trained with straight-through gradients, ``q`` frozen flags. After
epochs T + 1, 2T + 1, ... (T = ``period``; the authors' ``main.py`` freezes after 0-based epoch e
when ``e % T == 0 and e != 0``) the globally lowest-scoring active weights are frozen (``q = 0``)
so that the mask ends at exactly ``density``. Scores and flags live in one flat buffer each::

    gm = GemMiner(model, density=0.05, epochs=E)
    ...  loss.backward(); gm.after_backward()     # = gm.step(): fused SGD+momentum+L2+clamp on all scores
    ...  gm.epoch_end()                           # freezing schedule, cosine learning rate
    ticket = gm.ticket(); gm.finish()             # weights back to their init, pruned ones zero

Each layer's scores are their own ``nn.Parameter`` (``<layer>.parametrizations.weight.0.scores``),
a view into the flat buffer ``gm.scores``, and each layer's gradient is a view into one flat
gradient buffer that autograd accumulates into in place: a step allocates and moves memory in
proportion to the number of scores, whatever the number of layers.

The frozen weights live in one flat buffer too (``gm.flat_weights``; each layer's
``parametrizations.weight.original`` is a Parameter viewing it), and so do the masked weights the
forward uses (``gm.masked``): the score step writes them for the updated scores in its one pass,
and each layer's forward returns its view instead of computing it. In-place edits of the scores,
flags or weights (``clamp_``, ``copy_``, ``&=``, ``load_state_dict``, a ``with torch.no_grad():
gm.scores.mul_(...)``) bump their version counters, and the next forward then recomputes every
masked weight in one flat pass. Edits through ``.data`` are not seen (they bump no version):
after one, call ``gm.refresh_masked()``.

With ``defer_backward=True`` (what the search driver passes: its loop calls ``gm.step()`` right after
each backward), from the second ``gm.step()`` on (single process, weights in one flat buffer), a
layer's backward computes no scores gradient:
it keeps its masked weight's gradient, and the step forms the scores' gradient
(``masked weight's gradient * weight * flag``) inside its own pass
(``gemminer_step_from_masked_grads_``): one pass over the scores a step instead of two. Between
``loss.backward()`` and the step, ``gm.scores.grad`` is then None; ``gm.gradient()`` forms it (the
same numbers), and so does any other optimizer's ``step()`` over ``gm.scores`` (a global optimizer
pre-step hook), so training the scores with your own optimizer and ``gm.project_()`` works as before.
Two gradients of one layer in a step (accumulation, a layer used twice) are summed before the
product, which rounds differently from summing the products.

Under ``torch.distributed``, wrap the model in ``DistributedDataParallel`` after creating the
miner: the per-layer scores are the model's only trainable parameters, so DDP averages their
gradients across ranks and ``gm.step()`` acts on the averaged gradient; the frozen flags are
checksummed across ranks at every freezing round. Nothing is deferred while a process group
exists (DDP must see every layer's scores gradient).
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parametrize
from torch.optim.optimizer import register_optimizer_step_pre_hook

from sparseticket.methods.consistency import assert_same_on_all_ranks
from sparseticket.methods.convention import check_convention
from sparseticket.methods.distributed import unwrap
from sparseticket.methods.ticket import Ticket
from sparseticket.methods.weights import PrunableWeight, check_materialized, prunable_weights
from sparseticket.ops import (
    MaskedWeightSlots,
    gemminer_mask,
    gemminer_masked_weight,
    gemminer_step_,
    gemminer_step_from_masked_grads_,
    kth_value,
    memory_order,
    pack_mask,
    unpack_mask,
)

DEFAULT_SCORE_LR = 10.0  # the paper's 0.1 x its 58,650 steps, spread over the ~600 steps of a short run
PAPER_SCORE_STEPS = 150 * 391  # Gem-Miner mines 150 epochs of 391 CIFAR-10 steps at lr 0.1
STILL_RANDOM = 0.5  # warn when more than this share of the mined mask is the initial scores' top


class MiningWarning(UserWarning):
    """Gem-Miner's mask barely moved from its random initial ranking (the learning rate is too small),
    or the miner finished before its mask reached the density asked."""


def _view_like(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A view of the 1-D ``flat`` with ``like``'s shape and memory order (row-major or channels_last)."""
    order = memory_order(like)
    if order == "channels_last":
        batch, channels, height, width = like.shape
        return flat.view(batch, height, width, channels).permute(0, 3, 1, 2)
    if order == "channels_last_3d":
        batch, channels, depth, height, width = like.shape
        return flat.view(batch, depth, height, width, channels).permute(0, 4, 1, 2, 3)
    return flat.view(like.shape)


def _storage_users(tensor: torch.Tensor) -> int:
    """How many tensors (and storage objects) hold ``tensor``'s memory now."""
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


def _no_masked_weights() -> None:
    """What a copied or unpickled ``_MaskedWeights`` becomes."""
    return None


class _MaskedWeights:
    """Every layer's masked weight ``weight * 1[score > 0.5] * flag`` in one flat buffer
    (``buffer``, one view per layer in the weight's shape and memory order), written by the score
    step and, when stale, recomputed in one flat pass by the first forward that needs it.

    Current: the version counters of the flat scores, flags, weights and of the buffer itself
    equal those recorded when it was last written (in-place ops on any of them or their views bump
    them; ``gemminer_step_`` does not, and the step records them after writing). A buffer that
    something else still holds (a graph kept over the step, a caller's tensor) is never written
    over: it is replaced by a fresh one. A deep copy or a pickle of the model gets None in its place
    (the copied tensors no longer share version counters): the copy computes each forward's.
    """

    def __reduce__(self) -> tuple:
        return _no_masked_weights, ()

    def __init__(self, scores: torch.Tensor, flags: torch.Tensor, weights: torch.Tensor,
                 layers: list[tuple[slice, torch.Tensor]]) -> None:
        self.scores, self.flags, self.weights = scores, flags, weights
        self._layers = layers  # (slice of the flat buffers, a tensor of the layer's shape and memory order)
        self.buffer, self.views, self._own_users = torch.empty(0), [], 0
        self._written: tuple[int, ...] | None = None  # the versions when the buffer was last written
        self.read = False  # whether a forward returned a view since the last step
        self.refresh()

    def _bind(self, buffer: torch.Tensor) -> None:
        """Make ``buffer`` the flat masked weights (and its per-layer views)."""
        self.buffer = buffer
        self.views = [_view_like(buffer[part], like) for part, like in self._layers]
        self._own_users = _storage_users(buffer)  # the buffer and its views: no one else

    def _versions(self) -> tuple[int, ...]:
        return self.scores._version, self.flags._version, self.weights._version, self.buffer._version

    def view(self, index: int) -> torch.Tensor:
        """Layer ``index``'s masked weight, recomputed (all layers, one pass) if stale."""
        if self._written != self._versions():
            self.refresh()
        self.read = True
        return self.views[index]

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute every masked weight from the current scores, flags and weights (one flat pass,
        into fresh memory: a tensor a graph or a caller still holds keeps its values)."""
        self._bind(gemminer_mask(self.weights, self.scores.detach(), self.flags))
        self._written = self._versions()

    def step_outputs(self) -> dict[str, torch.Tensor]:
        """The ``weights``/``masked_out`` arguments of the score step: empty when no forward read
        the buffer since the last step (a compiled forward computes its own; the next eager one
        recomputes), else with a fresh buffer in place of one that something else holds."""
        self._written = None  # stale until written() (a step that fails leaves it stale)
        if not self.read:
            return {}
        self.read = False
        if _storage_users(self.buffer) != self._own_users:
            self._bind(torch.empty_like(self.buffer))
        return {"weights": self.weights, "masked_out": self.buffer}

    def written(self) -> None:
        """Record that the step just wrote the buffer for the updated scores."""
        self._written = self._versions()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class _Deferral:
    """Whether the layers' backward leaves the scores' gradient to the score step (shared by a miner's
    layers): ``on`` once ``gm.step()`` has run, when ``allowed`` (weights in one flat buffer), never
    under ``torch.distributed``."""

    def __init__(self, allowed: bool) -> None:
        self.on, self.allowed = False, allowed

    def __reduce__(self) -> tuple:
        return _Deferral, (False,)  # a deep copy or a pickle of the model has no miner to step it: never defers


def _gradient_before_other_optimizers(miner_ref: weakref.ref) -> Callable[..., None]:
    """A global optimizer pre-step hook: before any optimizer that holds ``gm.scores`` steps, the
    deferred score gradient is formed into ``gm.scores.grad`` (``gm.gradient()``), so that another
    optimizer on the scores (then ``gm.project_()``) works as before, also after ``gm.step()`` ran."""

    def hook(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        miner = miner_ref()
        if miner is None or not miner._deferral.on:
            return
        scores = miner.scores
        if any(param is scores for group in optimizer.param_groups for param in group["params"]) and any(
                score_mask.slots.holds_gradient() for score_mask in miner._score_masks):
            miner.gradient()

    return hook


class _ScoreMask(nn.Module):
    """Parametrization: weight -> gemminer_masked_weight(weight, scores, flags) for one layer.

    ``scores`` is this layer's trainable Parameter, a view into the miner's flat scores; ``flags``
    and ``slots`` (its slice of the flat score gradient, and one uint8 saying whether this step's
    gradient already went there: ``MaskedWeightSlots``) are views into the miner's flat buffers,
    kept as plain attributes (the miner's own state_dict carries the state). ``masked_weights``
    (shared by the miner's layers, None when there is no flat weight buffer) holds the masked
    weight computed ahead; the forward returns it (eager only: a compiled forward computes it).
    """

    def __init__(self, scores: nn.Parameter, flags: torch.Tensor, slots: MaskedWeightSlots,
                 masked_weights: _MaskedWeights | None = None, index: int = 0,
                 deferral: _Deferral | None = None) -> None:
        super().__init__()
        self.scores = scores
        self.flags, self.slots = flags, slots
        self.masked_weights, self.index, self.deferral = masked_weights, index, deferral
        self.offset_bytes = 0  # where in gm.scores' memory this layer's view starts (set by the miner)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        masked = None
        if self.masked_weights is not None and not torch.compiler.is_compiling():
            masked = self.masked_weights.view(self.index)
        # Deferred backward: not under torch.distributed (any process group), where DDP must see and average
        # every layer's scores gradient.
        defer = self.deferral is not None and self.deferral.on and not _distributed()
        return gemminer_masked_weight(weight, self.scores, self.flags, slots=self.slots, masked=masked, defer=defer)


def freezing_steps(epochs: int, period: int) -> int:
    """Number of freezing rounds: floor((epochs - 1) / period)."""
    return (epochs - 1) // period


def freezing_round(epoch: int, period: int) -> int:
    """The freezing round that follows epoch ``epoch`` (1-based), or 0: the authors' code freezes
    after 0-based epoch e when ``e % period == 0 and e != 0``, i.e. after epochs T + 1, 2T + 1, ..."""
    trained = epoch - 1  # the 0-based index of the epoch just trained
    return trained // period if trained > 0 and trained % period == 0 else 0


def original_rate(density: float, rounds: int) -> float:
    """The authors' per-round freezing rate p = 1 - density**(1/rounds) (``1 - exp(log(d)/n)``, in double)."""
    return 1.0 - math.exp(math.log(density) / rounds)


class GemMiner:
    """Scores and frozen flags for every prunable weight, the fused score step and the freezing schedule.

    ``density``: target fraction of weights kept (of every prunable weight, the output layer
    included, as the Gem-Miner repository; ``IMP`` keeps the output layer dense by default:
    ``exclude=("output",)`` here does the same); ``epochs``: mining epochs E; ``period``: freeze
    after epochs T + 1, 2T + 1, ... (floor((E-1)/T) rounds, as the authors' code);
    ``l2``: lambda of lambda*||p||^2; ``lr``/``momentum``: SGD on the scores (cosine schedule
    over ``epochs``). All of the model's own parameters are frozen while mining (BN acts as
    non-affine). ``seed`` seeds the U[0, 1] score draw; None follows ``torch.manual_seed``.

    ``lr`` defaults to 10, the command line's ``--score-lr``, not the paper's 0.1: the paper mines
    150 CIFAR-10 epochs of 391 steps (58,650 steps); runs of a few hundred steps, as in the README
    and on the built-in digits, need about the same lr x steps, and at 0.1 their mask stays the
    random initial ranking (chance accuracy). For a run of S steps, about ``0.1 * 58650 / S``
    (``GemMiner.lr_for(S)``); pass ``lr=0.1`` for the paper's length. When mining ends with a mask
    that is mostly the initial scores' top, a ``MiningWarning`` says so.

    ``convention``: ``"default"`` freezes exactly down to ``round(N * density**(r/n))`` active
    weights in round r of n (ties by position), so mining ends at exactly ``round(N * density)``.
    ``"original"`` is the authors' ``BottomK`` (``utils/net_utils.py``): each round freezes
    ``ceil(p * active)`` weights, p = 1 - density**(1/n), and every active score tied with the
    threshold (``|s| <= threshold``), so it ends at or below N * density.

    ``defer_backward``: from the second ``step()`` on, leave each layer's scores gradient to the
    score step, which forms it in its own pass (one pass over the scores a step instead of two; see
    the module docstring). Off by default because the layers' ``scores.grad`` (``hooked_parameters``)
    then stay None after a backward: a loop that reads or unscales them (Lightning's GradScaler, a
    gradient clip) must keep it off; ``gm.gradient()`` and other optimizers over ``gm.scores`` still
    see the gradient.
    """

    owns_update = True  # after_backward() is the whole update while mining: a driver runs no optimizer

    def __init__(
        self,
        model: nn.Module,
        *,
        density: float,
        epochs: int,
        period: int = 5,
        l2: float = 1e-4,
        lr: float = DEFAULT_SCORE_LR,
        momentum: float = 0.9,
        exclude: Iterable[str] = (),
        seed: int | None = None,
        convention: str = "default",
        defer_backward: bool = False,
    ) -> None:
        self.convention = check_convention(convention)
        if not isinstance(defer_backward, bool):
            raise TypeError(f"defer_backward must be a bool, got {type(defer_backward).__name__}")
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
        check_materialized(model, "GemMiner")
        self.target_density = float(density)
        self.epochs, self.period = epochs, period
        self.l2, self.base_lr, self.lr, self.momentum = float(l2), float(lr), float(lr), float(momentum)
        self.weights: list[PrunableWeight] = prunable_weights(model, exclude)
        self.layers = {weight.module_name: weight.module for weight in self.weights}  # by module name
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.slices: dict[str, slice] = {}  # by parameter name, e.g. "features.0.weight"
        start = 0
        for weight in self.weights:
            self.slices[weight.name] = slice(start, start + weight.tensor.numel())
            start += weight.tensor.numel()
        self.flat_weights = self._flatten_weights()  # None: weights of several dtypes, or parametrized
        device = self.weights[0].tensor.device
        # No seed: torch's global RNG (torch.manual_seed); a seed: its own generator, global RNG untouched.
        generator = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        self.scores = nn.Parameter(torch.rand(start, generator=generator).to(device))  # U[0, 1]
        self.flags = torch.ones(start, dtype=torch.bool, device=device)
        self.momentum_buffer = torch.zeros(start, device=device)
        # One flat gradient: each layer's backward writes its slice (see _ScoreMask), step() reads it.
        self._grad = torch.zeros(start, device=device)
        self.scores.grad = self._grad
        self._claimed = torch.zeros(len(self.weights), dtype=torch.uint8, device="cpu")  # host flags, reset every step
        self._masked: _MaskedWeights | None = None  # the layers' masked weights, kept by the score step
        self._deferral = _Deferral(allowed=False)
        if self.flat_weights is not None:
            self._masked = _MaskedWeights(self.scores, self.flags, self.flat_weights,
                                          [(self.slices[weight.name], weight.tensor) for weight in self.weights])
        self._score_masks: list[_ScoreMask] = []  # per layer: its scores Parameter and gradient slot
        for index, weight in enumerate(self.weights):
            part, tensor = self.slices[weight.name], weight.tensor
            # views of the flat buffers in the weight's memory order (row-major or channels_last):
            # the kernels then read weight, scores and flags flat, with no copy
            layer_scores = nn.Parameter(_view_like(self.scores.detach()[part], tensor))  # shares the flat storage
            slots = MaskedWeightSlots(_view_like(self._grad[part], tensor), self._claimed[index:index + 1])
            score_mask = _ScoreMask(layer_scores, _view_like(self.flags[part], tensor), slots, self._masked, index,
                                    self._deferral)
            score_mask.offset_bytes = part.start * self.scores.element_size()  # where its view must start
            parametrize.register_parametrization(weight.module, weight.attr, score_mask, unsafe=True)
            self._score_masks.append(score_mask)
        if defer_backward and self.flat_weights is not None:  # the deferred backward (on after the first step)
            for score_mask in self._score_masks:
                score_mask.slots.hold_gradients(self.flat_weights.dtype)
            self._deferral.allowed = True
            handle = register_optimizer_step_pre_hook(
                _gradient_before_other_optimizers(weakref.ref(self)))
            weakref.finalize(self, handle.remove)
        self._legacy_hook = model.register_load_state_dict_pre_hook(self._split_legacy_scores)
        self._initial_top = self._top_scores()  # packed: which scores start in the top `density`
        self.freezes_done = 0
        self.epoch = 0  # epoch_end calls so far (or the last epoch passed to it)

    @torch.no_grad()
    def _flatten_weights(self) -> torch.Tensor | None:
        """Move the prunable weights into one flat buffer: each becomes a Parameter viewing it (in
        its memory order, frozen), under the same name. None (weights left as they are) when they
        differ in dtype or device, or are parametrized already: those models compute each masked
        weight in its layer's forward.

        The Parameters replaced are remembered weakly: ``finish()`` puts one that is still alive
        back (an optimizer made before the miner, a module sharing the weight, hold it)."""
        stored = [weight.tensor for weight in self.weights]
        already_parametrized = any(parametrize.is_parametrized(weight.module, weight.attr) for weight in self.weights)
        self._replaced: list[weakref.ref] = []
        if already_parametrized or len({(tensor.dtype, tensor.device) for tensor in stored}) != 1:
            return None
        flat = torch.empty(sum(tensor.numel() for tensor in stored), dtype=stored[0].dtype, device=stored[0].device)
        self._replaced = [weakref.ref(tensor) for tensor in stored]
        for weight, tensor in zip(self.weights, stored):
            view = _view_like(flat[self.slices[weight.name]], tensor)
            view.copy_(tensor)
            setattr(weight.module, weight.attr, nn.Parameter(view, requires_grad=False))
        return flat

    @staticmethod
    def lr_for(steps: int) -> float:
        """The score learning rate that gives ``steps`` the paper's lr x steps (0.1 x 58,650)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        return 0.1 * PAPER_SCORE_STEPS / steps

    @torch.no_grad()
    def _top_scores(self) -> torch.Tensor:
        """The scores in the top ``density`` fraction now, packed (one bit per score)."""
        total = self.scores.numel()
        keep = max(1, min(total, round(total * self.target_density)))
        threshold = kth_value(self.scores.detach(), total - keep)
        return pack_mask(self.scores.detach() >= threshold)

    def still_initial(self) -> float:
        """Share of the live mask (p > 0.5 and not frozen) that was in the initial scores' top
        ``density``: about ``density`` for a mask the gradients chose, near 1 for one that barely
        moved from its random start (0 for an empty mask)."""
        live = (self.scores.detach() > 0.5) & self.flags
        kept = int(live.sum())
        if kept == 0:
            return 0.0
        initial = unpack_mask(self._initial_top, self.scores.numel()).to(live.device)
        return int((live & initial).sum()) / kept

    def _warn_if_still_random(self) -> None:
        share = self.still_initial()
        if share > STILL_RANDOM:
            warnings.warn(f"GemMiner: {share:.0%} of the mined mask is the top {self.target_density:g} of the random "
                          f"initial scores: the scores barely moved (lr {self.base_lr:g}). Raise lr (for a run of S "
                          "steps about 0.1 * 58650 / S: GemMiner.lr_for(S)) or mine longer", MiningWarning,
                          stacklevel=3)

    # ----------------------------------------------------------------- per step
    def after_backward(self) -> torch.Tensor:
        """The hook every method has between backward and ``optimizer.step()``: for Gem-Miner it
        is the score step itself (``step()``); returns what ``step()`` returns."""
        return self.step()

    def after_step(self) -> None:
        """The hook every method has after ``optimizer.step()``: nothing to do for Gem-Miner."""

    def step(self) -> torch.Tensor:
        """Fused SGD step (momentum, L2 on the scores, clamp to [0, 1]) on every score; clears the
        score gradient. The same pass writes the masked weights the next forward returns and, with
        ``defer_backward=True`` from the second step on, forms the scores' gradient from the masked
        weights' (see ``gradient()``). Returns
        the number of weights in the mask (p > 0.5 and not frozen) as a 0-d int64 tensor on the
        scores' device: nothing waits for the GPU here; ``int()`` it when the number is needed
        (that waits)."""
        if self._all_deferred():  # every layer's backward kept its masked weight's gradient: one pass
            masked = self._masked.step_outputs() if self._masked is not None else {}
            kept = gemminer_step_from_masked_grads_(
                self.scores.detach(), [score_mask.slots.held for score_mask in self._score_masks],
                self.momentum_buffer, self.flags, lr=self.lr, momentum=self.momentum, l2=self.l2,
                weights=self.flat_weights, masked_out=masked.get("masked_out"))
            if masked:
                self._masked.written()
            self.zero_grad()
            return kept
        self._deferral.on = self._deferral.allowed  # the miner steps the scores: defer from now on
        grad = self.gradient()
        masked = self._masked.step_outputs() if self._masked is not None else {}
        kept = gemminer_step_(self.scores.detach(), grad, self.momentum_buffer, self.flags,
                              lr=self.lr, momentum=self.momentum, l2=self.l2, as_tensor=True, **masked)
        if masked:
            self._masked.written()
        self.zero_grad()
        return kept

    def refresh_masked(self) -> None:
        """Recompute every layer's masked weight now. Only needed after an edit the version counters
        do not see (through ``.data``); in-place edits of the scores, flags or weights are noticed."""
        if self._masked is not None:
            self._masked.refresh()

    @property
    def masked(self) -> torch.Tensor | None:
        """The flat buffer of the layers' masked weights (in ``gm.flat_weights``' order), as the
        last step or refresh wrote it; None when the weights are not in one flat buffer."""
        return self._masked.buffer if self._masked is not None else None

    def _all_deferred(self) -> bool:
        """Whether this step's gradient is every layer's deferred one (held, no ``scores.grad``), with
        every layer's scores still a view of ``gm.scores``."""
        if self.flat_weights is None or not all(score_mask.slots.holds_gradient() and score_mask.scores.grad is None
                                                for score_mask in self._score_masks):
            return False
        self._check_views()
        return True

    def _check_views(self) -> None:
        base = self.scores.data_ptr()
        for score_mask, weight in zip(self._score_masks, self.weights):
            if score_mask.scores.data_ptr() != base + score_mask.offset_bytes:
                raise RuntimeError(f"GemMiner: the scores of {weight.name} are no longer a view of gm.scores "
                                   "(model moved or converted after the GemMiner was made?): "
                                   "move or convert the model first, then create the GemMiner")

    def zero_grad(self) -> None:
        """Forget this step's score gradient (every layer's ``.grad`` and held gradient)."""
        for score_mask in self._score_masks:
            score_mask.scores.grad = None
            score_mask.slots.release()
        self._claimed.zero_()  # every layer's MaskedWeightSlots.claimed at once
        self.scores.grad = None if self._deferral.on else self._grad

    @torch.no_grad()
    def gradient(self) -> torch.Tensor:
        """The flat score gradient of this step, layer by layer; also ``gm.scores.grad`` from then
        until the step.

        With ``defer_backward=True``, once ``gm.step()`` has run (weights in one flat buffer, no
        process group), a layer's backward only keeps its masked weight's gradient and the next
        ``gm.step()`` forms the scores' gradient inside its own pass (one pass over the scores per
        step instead of two): ``gm.scores.grad`` is then None after ``loss.backward()``, and this
        computes it (``masked weight's gradient * weight * flag``, fp32; the step gets the same
        numbers). Otherwise (the default, before the first step, across ranks, a compiled forward)
        each layer's backward writes its slice of ``gm.scores.grad``, or its gradient is copied in.
        A layer without a gradient counts as zero.
        """
        self._check_views()
        missing = 0
        for index, score_mask in enumerate(self._score_masks):
            current, slots = score_mask.scores.grad, score_mask.slots
            grad_slot = slots.grad_slot
            if slots.holds_gradient():
                part = self.slices[self.weights[index].name]
                weight = _view_like(self.flat_weights[part], grad_slot)
                product = torch.where(score_mask.flags, slots.held.float() * weight.float(), 0.0)
                if current is not None:
                    product += current
                grad_slot.copy_(product)
                slots.release()
                score_mask.scores.grad = grad_slot  # a later backward of this step adds to it, as usual
            elif current is None:
                missing += 1
                grad_slot.zero_()
            elif current.data_ptr() != grad_slot.data_ptr():
                grad_slot.copy_(current)
        if missing == len(self._score_masks):
            raise RuntimeError("no score gradient: call loss.backward() before gm.step()")
        self.scores.grad = self._grad
        return self._grad

    def _split_legacy_scores(self, module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        """Load a model state saved before per-layer scores (one flat ``scores`` Parameter on the
        first layer's parametrization): split it into the layers' keys."""
        key = f"{prefix}{self._scores_key(self.weights[0])}"
        saved = state_dict.get(key)
        if not isinstance(saved, torch.Tensor) or saved.shape == self._score_masks[0].scores.shape:
            return  # the current layout (or nothing to load): the normal checks apply
        if saved.dim() != 1:
            return  # not the flat layout either: load_state_dict reports the size mismatch
        if saved.numel() != self.scores.numel():
            raise ValueError(f"GemMiner: {key} holds {saved.numel()} flat scores (an older checkpoint's "
                             f"layout), this model has {self.scores.numel()}: not the same model")
        for weight, score_mask in zip(self.weights, self._score_masks):
            part = self.slices[weight.name]
            state_dict[f"{prefix}{self._scores_key(weight)}"] = saved[part].view(score_mask.scores.shape)

    @staticmethod
    def _scores_key(weight: PrunableWeight) -> str:
        """The model state key of a layer's scores Parameter."""
        module = f"{weight.module_name}." if weight.module_name else ""
        return f"{module}parametrizations.{weight.attr}.0.scores"

    @torch.no_grad()
    def project_(self) -> None:
        """After a step of another optimizer on ``gm.scores``: clamp the scores to [0, 1] and
        clear the score gradient (as ``step()`` does; that optimizer's own ``zero_grad()`` would
        only detach ``gm.scores.grad`` from the layers' gradients)."""
        self.scores.clamp_(0.0, 1.0)
        self.zero_grad()

    # ----------------------------------------------------------------- per epoch
    def epoch_end(self) -> bool:
        """At the end of every epoch: cosine learning rate; freeze on schedule. True if it froze.

        The epoch is counted inside (``gm.epoch``, restored by ``load_state_dict``)."""
        epoch = self.epoch = self.epoch + 1
        self.lr = 0.5 * self.base_lr * (1 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs))
        froze = self._freeze_on_schedule(epoch)
        if epoch == self.epochs:  # mining ends with this epoch
            self._warn_if_still_random()
        return froze

    def _freeze_on_schedule(self, epoch: int) -> bool:
        """The freezing round that follows epoch ``epoch``, if any; True if it froze."""
        steps = freezing_steps(self.epochs, self.period)
        round_index = freezing_round(epoch, self.period)
        if self.target_density >= 1 or not 0 < round_index <= steps or round_index <= self.freezes_done:
            return False
        active = int(self.flags.sum())
        if self.convention == "original":
            self._freeze_up_to(math.ceil(original_rate(self.target_density, steps) * active))
        else:
            target = round(self.flags.numel() * self.target_density ** (round_index / steps))
            self._freeze_lowest(active - target)
        assert_same_on_all_ranks(self.flags, f"Gem-Miner's frozen flags (epoch {epoch})")
        self.freezes_done = round_index
        return True

    @torch.no_grad()
    def _freeze_up_to(self, count: int) -> None:
        """The authors' round: freeze every active weight whose |score| is at most the ``count``-th
        smallest active |score| (``count`` or more: all ties go)."""
        if count <= 0:
            return
        active_scores = torch.where(self.flags, self.scores.detach().abs(), math.inf)
        threshold = kth_value(active_scores, count - 1)
        self.flags &= ~(active_scores <= threshold)

    @torch.no_grad()
    def _freeze_lowest(self, count: int) -> None:
        """Freeze exactly ``count`` active weights, lowest scores first (ties by position in
        ``gm.scores``: layer order, then each layer's memory order)."""
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
            "convention": self.convention,
            "scores": self.scores.detach().clone(),
            "flags": self.flags.clone(),
            "momentum_buffer": self.momentum_buffer.clone(),
            "lr": self.lr,
            "freezes_done": self.freezes_done,
            "epoch": self.epoch,
            "initial_top": self._initial_top.clone(),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any], *, optimizer: Any = None, scheduler: Any = None) -> None:
        """Restore a ``state_dict()`` in place (``gm.scores`` stays the same Parameter);
        ``optimizer``/``scheduler``: accepted for the ``Method`` protocol, unused."""
        if not isinstance(state, dict) or state.get("method") != "gemminer":
            found = state.get("method") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"GemMiner.load_state_dict: state of method {found!r}, expected 'gemminer'")
        convention = state.get("convention", "default")  # states saved before conventions: the default
        if convention != self.convention:
            raise ValueError(f"GemMiner.load_state_dict: state of convention {convention!r}, this miner "
                             f"follows {self.convention!r}")
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
        if "initial_top" in state:  # states saved before the check: the one computed at construction stays
            if state["initial_top"].shape != self._initial_top.shape:
                raise ValueError(f"GemMiner state mismatch: initial_top has {state['initial_top'].numel()} bytes, "
                                 f"this model needs {self._initial_top.numel()}")
            self._initial_top.copy_(state["initial_top"])
        self.epoch = int(state.get("epoch", 0))  # states saved before the epoch count: 0

    # ----------------------------------------------------------------- results
    @property
    def drawn(self) -> bool:
        """True once mining has run its ``epochs`` (the ticket is final)."""
        return self.epoch >= self.epochs

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
        for weight, score_mask in zip(self.weights, self._score_masks):
            masks[weight.name] = score_mask.flags.cpu().clone(memory_format=torch.contiguous_format)
            scores[weight.name] = score_mask.scores.detach().cpu().clone(memory_format=torch.contiguous_format)
        hyperparameters = {"density": self.target_density, "epochs": self.epochs, "period": self.period,
                           "l2": self.l2, "lr": self.base_lr, "momentum": self.momentum,
                           "convention": self.convention}
        return Ticket(masks, "gemminer", hyperparameters, scores=scores)

    def finish(self) -> Ticket:
        """Remove the score parametrizations: weights back at their initialization with the
        ticket's pruned weights zeroed, every parameter trainable again. Returns the ticket.

        Each weight is its own tensor again, no longer a view of ``gm.flat_weights``: the Parameter
        it replaced when that one is still alive (an optimizer made before the miner holds it), else
        a new Parameter.

        Warns (``MiningWarning``) when the mask is still denser than the density asked (``finish``
        before the freezing schedule ended): the ticket then keeps what the mask keeps now."""
        ticket = self.ticket()
        kept = ticket.density()
        if kept > self.target_density + 1.0 / max(self.scores.numel(), 1):
            rounds = freezing_steps(self.epochs, self.period)
            warnings.warn(f"GemMiner.finish(): the ticket keeps {kept:.4f} of the weights, not the "
                          f"{self.target_density:g} asked: {self.freezes_done} of {rounds} freezing rounds were "
                          f"done (after {self.epoch} of {self.epochs} epochs)", MiningWarning, stacklevel=2)
        self._legacy_hook.remove()
        for weight in self.weights:
            parametrize.remove_parametrizations(weight.module, weight.attr, leave_parametrized=False)
        if self.flat_weights is not None:
            self._unflatten_weights()
        for parameter in self.model.parameters():
            parameter.requires_grad_(True)
        ticket.apply_(self.model)
        return ticket

    @torch.no_grad()
    def _unflatten_weights(self) -> None:
        """Give each weight its own memory again (see ``finish``)."""
        for weight, replaced in zip(self.weights, self._replaced):
            view, previous = getattr(weight.module, weight.attr), replaced()
            if previous is not None and previous.shape == view.shape and previous.dtype == view.dtype:
                previous.copy_(view)
                setattr(weight.module, weight.attr, previous)
            else:
                setattr(weight.module, weight.attr,
                        nn.Parameter(view.clone(memory_format=torch.preserve_format), requires_grad=False))
        self._replaced = []
        self.flat_weights, self._masked = None, None
        for score_mask in self._score_masks:
            score_mask.masked_weights = None

    # ----------------------------------------------------------------- Method protocol
    name = "gemminer"  # its key in sparseticket.METHODS
    kind = "weight"  # weight masks

    def hooked_parameters(self) -> list[torch.Tensor]:
        """The tensors whose gradients ``after_backward`` (the score step) reads and clears: each layer's scores."""
        return [score_mask.scores for score_mask in self._score_masks]

    def check_placement(self) -> None:
        """RuntimeError if a layer's scores no longer share memory with ``gm.scores``, or its weight
        with ``gm.flat_weights`` (model moved or cast)."""
        flat = self.scores.untyped_storage().data_ptr()
        weights = self.flat_weights.untyped_storage().data_ptr() if self.flat_weights is not None else None
        for weight, score_mask in zip(self.weights, self._score_masks):
            for what, tensor, base, where in (("scores", score_mask.scores, flat, "gm.scores"),
                                              ("weight", weight.stored, weights, "gm.flat_weights")):
                if base is not None and tensor.untyped_storage().data_ptr() != base:
                    raise RuntimeError(
                        f"GemMiner: the {what} of {weight.name} ({tensor.device}, {tensor.dtype}) no longer "
                        f"share{'' if what == 'scores' else 's'} memory with {where} ({self.scores.device}): "
                        "the model was moved or cast after "
                        "GemMiner was created. Move the model to its device and dtype first, then create GemMiner")
