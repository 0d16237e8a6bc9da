"""Gem-Miner ops: the score-masked weight (straight-through gradient), the same with its scores
gradient written into a caller's slot (GemMiner's per-layer hot path), and the fused score step
(which can also write the masked weights the next forward returns)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, overload

import torch
from torch import nn

from sparseticket._kernels.cpp import cpp_kernels
from sparseticket.ops import _contracts as contracts
from sparseticket.ops._backend import cpp_runs_cpu_ops
from sparseticket.ops._library import define_op, register_fake
from sparseticket.ops._validate import check_float, in_order_of, require_tensors
from sparseticket.ops.slots import OutputSlot

_mask_op = define_op("gemminer_mask", "(Tensor weight, Tensor scores, Tensor flags) -> Tensor")
_mask_backward_op = define_op(
    "gemminer_mask_backward",
    "(Tensor grad, Tensor weight, Tensor scores, Tensor flags, bool need_weight, bool need_scores)"
    " -> (Tensor, Tensor)",
)
_step_op = define_op(
    "gemminer_step_",
    "(Tensor(a!) scores, Tensor grads, Tensor(b!) momentum_buffer, Tensor flags, float lr, "
    "float momentum, float l2, Tensor? weights=None, Tensor(c!)? masked_out=None) -> Tensor",
)

_step_from_masked_grads_op = define_op(
    "gemminer_step_from_masked_grads_",
    "(Tensor(a!) scores, Tensor[] masked_grads, Tensor(b!) momentum_buffer, Tensor flags, float lr, "
    "float momentum, float l2, Tensor weights, Tensor(c!)? masked_out=None) -> Tensor",
)


@register_fake("gemminer_mask")
def _mask_fake(weight, scores, flags):
    return torch.empty_like(weight)


@register_fake("gemminer_mask_backward")
def _mask_backward_fake(grad, weight, scores, flags, need_weight, need_scores):
    empty = grad.new_empty(0)
    return (torch.empty_like(weight) if need_weight else empty,
            torch.empty_like(scores) if need_scores else empty)


@register_fake("gemminer_step_")
def _step_fake(scores, grads, momentum_buffer, flags, lr, momentum, l2, weights=None, masked_out=None):
    return scores.new_empty((), dtype=torch.int64)


@register_fake("gemminer_step_from_masked_grads_")
def _step_from_masked_grads_fake(scores, masked_grads, momentum_buffer, flags, lr, momentum, l2, weights,
                                 masked_out=None):
    return scores.new_empty((), dtype=torch.int64)


def _setup_context(ctx, inputs, output) -> None:
    weight, scores, flags = inputs
    ctx.save_for_backward(weight, scores, flags)


def _backward(ctx, grad):
    weight, scores, flags = ctx.saved_tensors
    need_weight, need_scores = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_weight, grad_scores = _mask_backward_op(grad, weight, scores, flags, need_weight, need_scores)
    return (grad_weight if need_weight else None, grad_scores if need_scores else None, None)


torch.library.register_autograd("sparseticket::gemminer_mask", _backward, setup_context=_setup_context)


def gemminer_mask(weight: torch.Tensor, scores: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """``weight * (scores > 0.5) * flags`` with Gem-Miner's straight-through gradient.

    Backward: d/dscores = grad * weight * flags; d/dweight = grad * (scores > 0.5) * flags.
    ``flags`` is bool (False: frozen to zero). Output dtype is weight's; math in fp32.
    """
    require_tensors(weight=weight, scores=scores, flags=flags)
    return _mask_op(weight, scores, flags)  # the op checks dtypes, devices and shapes


@overload
def gemminer_step_(scores: torch.Tensor, grads: torch.Tensor, momentum_buffer: torch.Tensor, flags: torch.Tensor,
                   *, lr: float, momentum: float = ..., l2: float = ..., weights: torch.Tensor | None = ...,
                   masked_out: torch.Tensor | None = ..., as_tensor: Literal[False] = ...) -> int: ...


@overload
def gemminer_step_(scores: torch.Tensor, grads: torch.Tensor, momentum_buffer: torch.Tensor, flags: torch.Tensor,
                   *, lr: float, momentum: float = ..., l2: float = ..., weights: torch.Tensor | None = ...,
                   masked_out: torch.Tensor | None = ..., as_tensor: Literal[True]) -> torch.Tensor: ...


def gemminer_step_(
    scores: torch.Tensor,
    grads: torch.Tensor,
    momentum_buffer: torch.Tensor,
    flags: torch.Tensor,
    *,
    lr: float,
    momentum: float = 0.9,
    l2: float = 0.0,
    weights: torch.Tensor | None = None,
    masked_out: torch.Tensor | None = None,
    as_tensor: bool = False,
) -> int | torch.Tensor:
    """One fused SGD-with-momentum step on Gem-Miner scores, clamped to [0, 1], in place.

    Where ``flags``: ``v <- momentum*v + g + 2*l2*p``; ``p <- clamp(p - lr*v, 0, 1)``; entries
    with ``flags`` False stay unchanged. Equals ``torch.optim.SGD(momentum, dampening=0)`` on
    ``task + l2*||p||^2`` followed by a clamp. Returns the number of entries with p > 0.5 and
    flags after the update: a Python int (this waits for the GPU), or with ``as_tensor=True`` a
    0-d int64 tensor on the scores' device (nothing waits: what a per-step hook wants).

    ``weights`` and ``masked_out`` (both or neither; the scores' shape, ``masked_out`` contiguous
    in the weights' dtype): the same pass also writes ``masked_out = weights`` where the updated
    score > 0.5 and ``flags``, else 0 (a select: inf and NaN weights stay out of pruned entries),
    i.e. ``gemminer_mask(weights, scores, flags)`` of the updated scores, bit for bit. No output
    (scores, momentum_buffer, masked_out) may share memory with another argument.
    """
    require_tensors(scores=scores, grads=grads, momentum_buffer=momentum_buffer, flags=flags)
    if weights is not None:
        require_tensors(weights=weights)
        weights = weights.detach()
    if masked_out is not None:
        require_tensors(masked_out=masked_out)
        masked_out = masked_out.detach()
    lr = check_float("lr", lr)
    momentum = check_float("momentum", momentum)
    l2 = check_float("l2", l2)
    if not isinstance(as_tensor, bool):
        raise TypeError(f"as_tensor must be a bool, got {type(as_tensor).__name__}")
    kept = _step_op(scores.detach(), grads.detach(), momentum_buffer.detach(), flags, lr, momentum, l2, weights,
                    masked_out)  # the op checks both or neither, dtypes, shapes and aliasing
    return kept if as_tensor else int(kept.item())


def gemminer_step_from_masked_grads_(
    scores: torch.Tensor,
    masked_grads: Sequence[torch.Tensor],
    momentum_buffer: torch.Tensor,
    flags: torch.Tensor,
    *,
    lr: float,
    momentum: float = 0.9,
    l2: float = 0.0,
    weights: torch.Tensor,
    masked_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``gemminer_step_`` on flat 1-D buffers, with the scores' gradient given as the gradients of
    the masked weights, one tensor per layer: the scores' gradient ``masked_grads * weights`` (an
    fp32 product; ``flags`` False entries are not updated anyway) is formed inside the step's one
    pass, which reads ``weights`` anyway when it writes ``masked_out``. GemMiner's deferred
    backward (``MaskedWeightSlots.held``) hands the step these gradients, so the backward makes no
    pass of its own per layer.

    ``masked_grads[i]`` is read in its memory order (contiguous or channels_last), and the lists'
    concatenation lines up with the flat ``scores``, ``flags``, ``weights`` (all 1-D, contiguous,
    of one length; the gradients in the weights' dtype). ``masked_out`` (optional) as in
    ``gemminer_step_``. Returns the kept count as a 0-d int64 tensor (nothing waits for a GPU).
    """
    require_tensors(scores=scores, momentum_buffer=momentum_buffer, flags=flags, weights=weights)
    grads = [grad.detach() if isinstance(grad, torch.Tensor) else grad for grad in masked_grads]
    arguments = (scores.detach(), grads, momentum_buffer.detach(), flags, check_float("lr", lr),
                 check_float("momentum", momentum), check_float("l2", l2), weights.detach(),
                 None if masked_out is None else masked_out.detach())
    if (scores.device.type == "cpu" and type(scores) in (torch.Tensor, nn.Parameter)
            and not torch.compiler.is_compiling() and cpp_runs_cpu_ops()):
        return cpp_kernels().gemminer_step_from_masked_grads_(*arguments)  # checks its contract itself
    return _step_from_masked_grads_op(*arguments)


# ------------------------------------------------------------------ the masked weight with slots
class MaskedWeightSlots:
    """Per-layer memory that ``gemminer_masked_weight`` reuses from step to step.

    ``grad_slot``: where the first scores gradient of a step is written and then adopted as
    ``scores.grad`` (no temporary, no zero-fill, no accumulation pass); it must have the scores'
    shape, device and memory order (ValueError otherwise); one of another dtype is not used (the
    gradient is then a fresh tensor, as usual). GemMiner passes each layer's slice of its flat
    gradient. ``claimed``: one uint8 on the CPU,
    set to 1 once this step's gradient went into ``grad_slot``; zero it to start the next step
    (views into one buffer let a single ``zero_()`` reset every layer). A second gradient in the
    same step (a layer used twice, gradient accumulation) is a fresh tensor autograd adds.
    ``output``: memory the C++ path writes the masked weight into (see ``OutputSlot``).

    ``held``: where a deferred backward (``gemminer_masked_weight(..., defer=True)``) keeps the
    masked weight's gradient instead of computing the scores' (``held.set_(gradient)``, in the
    scores' memory order, no copy; a second gradient in the step is added): made by
    ``hold_gradients(dtype)``, emptied by ``release()``. ``held_count()`` says whether it holds this
    step's gradient.
    """

    def __init__(self, grad_slot: torch.Tensor, claimed: torch.Tensor) -> None:
        self.grad_slot, self.claimed = contracts.masked_weight_slots(grad_slot, claimed)
        self.output = OutputSlot()
        self.held: torch.Tensor | None = None
        self._claimed_flag = claimed.numpy()  # the same byte, read and set without a tensor op

    def hold_gradients(self, dtype: torch.dtype) -> None:
        """Make ``held``: an empty tensor of the weight's ``dtype`` on the slot's device."""
        self.held = torch.empty(0, dtype=dtype, device=self.grad_slot.device)

    def holds_gradient(self) -> bool:
        """Whether ``held`` holds this step's gradient (a deferred backward claimed the slot)."""
        return self.held is not None and bool(self._claimed_flag[0]) and self.held.numel() == self.grad_slot.numel()

    def release(self) -> None:
        """Let the held gradient go (``held`` becomes empty again)."""
        if self.held is not None and self.held.numel():
            self.held.set_()

    def claim_held(self) -> bool:
        """Take this step's first claim (``held`` for a deferred gradient; ``claim`` uses it for the
        slot): True only for the first claim since ``claimed`` was zeroed (a later gradient adds)."""
        if self._claimed_flag[0]:
            return False
        self._claimed_flag[0] = 1
        return True

    def claim(self, scores: torch.Tensor) -> bool:
        """Take the slot for this step's gradient of ``scores`` (checked to fit it): True only for
        the first claim since ``claimed`` was zeroed, and only when the dtypes agree."""
        return self.grad_slot.dtype == scores.dtype and self.claim_held()


class _MaskedWeight(torch.autograd.Function):
    """``gemminer_mask`` on the Triton or reference kernels whose first scores gradient of a step
    goes into ``slots.grad_slot`` (what ``sparseticket_cpu::gemminer_masked_weight`` does in C++,
    csrc/gemminer_autograd.cpp). With ``masked`` (its value computed ahead) it returns that
    memory instead of computing."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, scores: torch.Tensor, flags: torch.Tensor,
                slots: MaskedWeightSlots, masked: torch.Tensor | None, defer: bool) -> torch.Tensor:
        ctx.save_for_backward(weight, flags)
        ctx.scores, ctx.slots = scores, slots  # the leaf itself: backward reads whether it has a .grad
        ctx.defer = defer
        if masked is not None:
            # a new tensor object (not a view) on masked's memory, sharing its version counter
            return masked.detach()
        return _mask_op(weight, scores, flags)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        weight, flags = ctx.saved_tensors
        scores, slots = ctx.scores, ctx.slots
        need_weight, need_scores = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if need_scores and ctx.defer:  # keep the masked weight's gradient; the score step does the rest
            grad = in_order_of(grad.to(weight.dtype), scores)
            if slots.claim_held() or slots.held.shape != grad.shape:  # first this step (or released since)
                slots.held.set_(grad)
            else:  # a second gradient this step (a layer used twice, gradient accumulation): the sum
                slots.held.set_(slots.held + grad)
            need_scores = False
            if not need_weight:
                return None, None, None, None, None, None
        grad_weight, grad_scores = _mask_backward_op(grad, weight, scores, flags, need_weight, need_scores)
        if need_scores and scores.grad is None and slots.claim(scores):
            slots.grad_slot.copy_(grad_scores)
            grad_scores = slots.grad_slot.view_as(slots.grad_slot)  # adopted as scores.grad
        return (grad_weight if need_weight else None, grad_scores if need_scores else None, None, None, None, None)


def gemminer_masked_weight(
    weight: torch.Tensor,
    scores: torch.Tensor,
    flags: torch.Tensor,
    *,
    slots: MaskedWeightSlots | None = None,
    masked: torch.Tensor | None = None,
    defer: bool = False,
) -> torch.Tensor:
    """``gemminer_mask(weight, scores, flags)`` (same values, same straight-through gradients in
    ``weight`` and ``scores``) whose scores gradient lands in ``slots.grad_slot`` (see
    ``MaskedWeightSlots``): GemMiner's per-layer hot path.

    CPU tensors with the C++ kernels active: one C++ autograd op (no Python per layer, forward or
    backward; the masked weight reuses ``slots.output``). Otherwise (CUDA, the Triton or reference
    CPU backends) an autograd.Function over the ``gemminer_mask`` kernels. Without ``slots``, or
    while ``torch.compile`` traces, it is ``gemminer_mask`` (the gradient goes to ``scores.grad``).

    ``masked`` (with ``slots``): ``gemminer_mask(weight, scores, flags)`` computed ahead, e.g. by
    ``gemminer_step_(..., masked_out=...)``, of weight's shape and dtype in the scores' memory
    order. It is returned (a new tensor on its memory that shares its version counter: an in-place
    edit of the result shows in ``masked._version``) and nothing is computed; the gradients are
    the same. The caller vouches that it is current. While ``torch.compile`` traces (and on the
    C++ kernels under ``torch.inference_mode``) the value is computed instead (the same numbers).

    ``defer=True`` (needs ``slots.held``: ``slots.hold_gradients(weight.dtype)``): the backward
    computes no scores gradient; it keeps the masked weight's gradient in ``slots.held`` and
    ``scores.grad`` is left alone, for ``gemminer_step_from_masked_grads_`` to finish in its pass.
    Ignored while ``torch.compile`` traces (the gradient then goes to ``scores.grad``).
    """
    require_tensors(weight=weight, scores=scores, flags=flags)
    if slots is not None and not isinstance(slots, MaskedWeightSlots):
        raise TypeError(f"slots must be a MaskedWeightSlots or None, got {type(slots).__name__}")
    if masked is not None:
        require_tensors(masked=masked)
        if slots is None:
            raise ValueError("masked needs slots (the precomputed weight is returned on the slot path)")
    if not isinstance(defer, bool):
        raise TypeError(f"defer must be a bool, got {type(defer).__name__}")
    if slots is None or torch.compiler.is_compiling():
        return _mask_op(weight, scores, flags)  # the op checks dtypes, devices and shapes
    if defer and slots.held is None:
        raise ValueError("defer=True needs slots.held: call slots.hold_gradients(weight.dtype) first")
    held = slots.held if defer else None
    if weight.device.type == "cpu" and cpp_runs_cpu_ops():  # the C++ op checks its arguments itself
        if masked is not None:
            return cpp_kernels().gemminer_masked_weight(weight, scores, flags, slots.grad_slot, slots.claimed,
                                                        masked, True, held)
        return cpp_kernels().gemminer_masked_weight(weight, scores, flags, slots.grad_slot, slots.claimed,
                                                    slots.output.like(scores, weight.dtype), False, held)
    contracts.gemminer_mask(weight, scores, flags)  # the C++ op's checks, in its order: the arguments,
    contracts.slots_fit_scores(slots.grad_slot, scores)  # then the slot
    if masked is not None:
        contracts.precomputed_fits(masked, weight, scores)
    if held is not None and (held.dtype != weight.dtype or held.device != weight.device or held.requires_grad):
        raise TypeError(f"held must be {str(weight.dtype).removeprefix('torch.')} on {weight.device} without "
                        f"requires_grad, got {str(held.dtype).removeprefix('torch.')} on {held.device}")
    return _MaskedWeight.apply(weight, scores, flags, slots, masked, defer)
