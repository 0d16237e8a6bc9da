"""What each op's kernels may assume, checked where every entry point passes.

``torch.ops.sparseticket.<op>`` (what the public functions call, what ``torch.compile`` traces,
and what users may call directly) runs ``CONTRACTS[op](*args)`` before any backend (C++,
Triton, reference) sees the arguments. Each contract raises ``TypeError``/``ValueError`` naming
the argument, or returns the arguments the kernels may trust:

- every tensor on one device (cpu or cuda), of the dtype the op takes;
- shapes and list lengths that agree (no kernel can read or write out of bounds);
- read-only inputs laid out in their in-place target's (or weight's) memory order, row-major or
  channels_last (a copy when they are not: a strided view is never read as if it were flat);
  in-place targets must already be contiguous or channels_last (a copy would drop the update);
- scalars finite, counts and ranks in range;
- in-place outputs that share no memory with each other or with the inputs (where an op says so).

The contracts only read metadata, so they also run on fake tensors (``torch.compile`` tracing).
``masked_weight_slots``, ``slots_fit_scores``, ``precomputed_fits`` and ``scale_columns`` are the
contracts of the eager ops that are not ``torch.library`` ops (their C++ paths check the same in C++).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sparseticket.ops._validate import (
    FLOAT_DTYPES,
    check_contiguous,
    check_flat_dense,
    check_float,
    check_int,
    check_same_shape,
    check_tensor,
    check_tensor_list,
    in_order_of,
    memory_order,
)

TRUNCATE_NAMES = ("grads", "keep", "params")
SCALE_DTYPES = (*FLOAT_DTYPES, torch.float64)
MASK_DTYPES = (torch.bool, torch.uint8)  # the optimizer steps' masks: one bool per entry, or packed bits
DIGIT_SHIFTS = (24, 16, 8, 0)


def packed_size(count: int) -> int:
    """Bytes needed to pack ``count`` bits."""
    return (count + 7) // 8


def _as_list(name: str, values: object) -> list:
    if isinstance(values, torch.Tensor) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(values).__name__}")
    return list(values)


def _readable(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.is_contiguous() else tensor.contiguous()


def _keep_shape_error(index: int, mask: torch.Tensor, grad: torch.Tensor, names: tuple[str, str, str]
                      ) -> ValueError:
    expected = f"({grad.shape[0]},) or " if grad.dim() >= 2 else ""
    return ValueError(f"{names[1]}[{index}] must have shape {expected}{tuple(grad.shape)} (per channel or "
                      f"per element of {names[0]}[{index}]), got {tuple(mask.shape)}")


def truncate_grads_(grads: object, keep: object, params: object, scale: object, l1: object,
                    names: tuple[str, str, str] = TRUNCATE_NAMES) -> tuple:
    """``grads`` float, one dtype, contiguous; ``keep`` bool per channel (``(C,)``) or per element
    (the gradient's shape, or flat); ``params``
    (needed when ``l1 != 0``, else may be empty) float, one dtype, shaped like ``grads``.

    One pass over the lists (this runs every training step): the fast test compares dtypes,
    devices and shapes with the first tensor; any mismatch reruns the full check for the message.
    ``names``: the arguments as the caller calls them.
    """
    grads_name, keep_name, params_name = names
    scale = check_float("scale", scale)
    l1 = check_float("l1", l1)
    grads = _as_list(grads_name, grads)
    keep = _as_list(keep_name, keep)
    params = _as_list(params_name, params) if params is not None else []
    if names == TRUNCATE_NAMES:  # the op writes grads; a TruncationPlan checks parameters whose .grad it writes later
        check_no_aliasing({grads_name: grads}, {keep_name: keep, params_name: params})
    count = len(grads)
    if len(keep) != count:
        raise ValueError(f"{keep_name} must have one mask per gradient: got {len(keep)} masks for "
                         f"{count} {grads_name}")
    if l1 != 0.0 and not params and count:
        raise ValueError(f"l1 != 0 requires {params_name} (the tensors whose sign is added to {grads_name})")
    if params and len(params) != count:
        raise ValueError(f"{params_name} must have one tensor per gradient: got {len(params)} for "
                         f"{count} {grads_name}")
    if not count:
        return grads, keep, params, scale, l1
    first = check_tensor(f"{grads_name}[0]", grads[0], FLOAT_DTYPES)
    grad_dtype, device = first.dtype, first.device
    masks = []
    for index in range(count):
        grad, mask = grads[index], keep[index]
        try:
            fast = grad.dtype is grad_dtype and mask.dtype is torch.bool and grad.device == device \
                and mask.device == device
        except AttributeError:
            fast = False
        if not fast:
            check_tensor_list(grads_name, grads, FLOAT_DTYPES, device)
            check_tensor(f"{keep_name}[{index}]", mask, (torch.bool,), device)
        if not grad.is_contiguous():
            check_flat_dense(f"{grads_name}[{index}]", grad)
        shape, mask_shape = grad.shape, mask.shape
        per_element = mask_shape == shape or (len(mask_shape) == 1 and mask_shape[0] == grad.numel())
        if not per_element and not (len(mask_shape) == 1 and len(shape) >= 1 and mask_shape[0] == shape[0]):
            raise _keep_shape_error(index, mask, grad, names)
        masks.append(in_order_of(mask, grad) if per_element else _readable(mask))  # read in grad's order
    if params:
        param_dtype = check_tensor(f"{params_name}[0]", params[0], FLOAT_DTYPES, device).dtype
        for index in range(count):
            param, grad = params[index], grads[index]
            try:
                fast = param.dtype is param_dtype and param.device == device
            except AttributeError:
                fast = False
            if not fast:
                check_tensor_list(params_name, params, FLOAT_DTYPES, device)
            if param.shape != grad.shape:
                check_same_shape(f"{params_name}[{index}]", param, f"{grads_name}[{index}]", grad)
            params[index] = in_order_of(param, grad)
    return grads, masks, params, scale, l1


def pack_mask(mask: object) -> tuple:
    """``mask`` bool, any shape (read flat, in row-major order)."""
    return (_readable(check_tensor("mask", mask, (torch.bool,))),)


def unpack_mask(packed: object, count: object) -> tuple:
    """``packed`` uint8, 1-D, ``ceil(count/8)`` bytes; ``count`` >= 0."""
    check_tensor("packed", packed, (torch.uint8,))
    count = check_int("count", count, 0)
    if packed.dim() != 1 or packed.numel() != packed_size(count):
        raise ValueError(f"packed must be 1-D with ceil(n/8) = {packed_size(count)} bytes for n = {count}, "
                         f"got shape {tuple(packed.shape)}")
    return _readable(packed), count


def mask_distances(importance: object, threshold: object, history: object, static_runs: object) -> tuple:
    """``importance`` float (N values); ``threshold`` a one-element float tensor; ``history`` uint8
    ``[K, ceil(N/8)]``; ``static_runs`` None or int32 ``[N]``, contiguous (updated in place)."""
    check_tensor("importance", importance, FLOAT_DTYPES)
    device = importance.device
    count = importance.numel()
    check_tensor("threshold", threshold, FLOAT_DTYPES, device)
    if threshold.numel() != 1:
        raise ValueError(f"threshold must be a number or a one-element tensor, got shape {tuple(threshold.shape)}")
    check_tensor("history", history, (torch.uint8,), device)
    if static_runs is not None:
        check_tensor("static_runs", static_runs, (torch.int32,), device)
        check_no_aliasing({"static_runs": static_runs},
                          {"importance": importance, "threshold": threshold, "history": history})
    if history.dim() != 2 or history.shape[1] != packed_size(count):
        raise ValueError(f"history must have shape [K, ceil(N/8) = {packed_size(count)}] for "
                         f"N = {count} importance values, got {tuple(history.shape)}")
    if static_runs is not None:
        check_tensor("static_runs", static_runs, (torch.int32,), device)
        if static_runs.dim() != 1 or static_runs.numel() != count:
            raise ValueError(f"static_runs must have shape ({count},), got {tuple(static_runs.shape)}")
        check_contiguous("static_runs", static_runs)
    return _readable(importance), _readable(threshold), _readable(history), static_runs


def _value_list(values: object) -> list[torch.Tensor]:
    tensors = check_tensor_list("values", _as_list("values", values), FLOAT_DTYPES)
    if not tensors:
        raise ValueError("values must hold at least one tensor")
    return [_readable(tensor) for tensor in tensors]


def kth_value(values: object, k: object) -> tuple:
    """``values`` float tensors, one dtype and device, at least one element; ``0 <= k < total``."""
    tensors = _value_list(values)
    total = sum(tensor.numel() for tensor in tensors)
    if total == 0:
        raise ValueError("values must hold at least one element")
    return tensors, check_int("k", k, 0, total)


def digit_histogram(values: object, shift: object, prefix: object) -> tuple:
    """``values`` as for ``kth_value`` (may be all empty); ``shift`` in 24/16/8/0;
    ``0 <= prefix < 2**(24 - shift)``."""
    tensors = _value_list(values)
    if isinstance(shift, bool) or shift not in DIGIT_SHIFTS:
        raise ValueError(f"shift must be one of {DIGIT_SHIFTS}, got {shift!r}")
    return tensors, shift, check_int("prefix", prefix, 0, 1 << (24 - shift))


def _check_like(name: str, tensor: object, dtypes: tuple[torch.dtype, ...], like_name: str,
                like: torch.Tensor) -> torch.Tensor:
    check_tensor(name, tensor, dtypes, like.device)
    check_same_shape(name, tensor, like_name, like)
    return tensor


def gemminer_mask(weight: object, scores: object, flags: object) -> tuple:
    """``weight``, ``scores`` float and ``flags`` bool of one shape."""
    check_tensor("weight", weight, FLOAT_DTYPES)
    _check_like("scores", scores, FLOAT_DTYPES, "weight", weight)
    _check_like("flags", flags, (torch.bool,), "weight", weight)
    weight = weight if memory_order(weight) is not None else weight.contiguous()
    return weight, in_order_of(scores, weight), in_order_of(flags, weight)


def gemminer_mask_backward(grad: object, weight: object, scores: object, flags: object, need_weight: object,
                           need_scores: object) -> tuple:
    """``grad``, ``weight``, ``scores`` float and ``flags`` bool of one shape; two bools."""
    check_tensor("grad", grad, FLOAT_DTYPES)
    for name, tensor, dtypes in (("weight", weight, FLOAT_DTYPES), ("scores", scores, FLOAT_DTYPES),
                                 ("flags", flags, (torch.bool,))):
        _check_like(name, tensor, dtypes, "grad", grad)
    for name, value in (("need_weight", need_weight), ("need_scores", need_scores)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    weight = weight if memory_order(weight) is not None else weight.contiguous()
    return (in_order_of(grad, weight), weight, in_order_of(scores, weight), in_order_of(flags, weight),
            need_weight, need_scores)


def _byte_span(tensor: torch.Tensor) -> tuple[int, int]:
    """The bytes of its storage from a (non-empty) tensor's first element to its last, end excluded."""
    last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    start = tensor.storage_offset() * tensor.element_size()
    return start, start + (last + 1) * tensor.element_size()


def _memory(tensor: torch.Tensor) -> tuple[int, int, int] | None:
    """(storage, first byte, end byte) a non-empty tensor reaches, from its first element to its
    last (strided views that interleave count as overlapping); None when empty. Reads metadata
    only, so it also answers for fake and meta tensors."""
    if not tensor.numel():
        return None
    return (tensor.untyped_storage()._cdata, *_byte_span(tensor))


def check_no_aliasing(outputs: dict[str, object], inputs: dict[str, object]) -> None:
    """ValueError naming the arguments when an in-place output shares memory with another output
    or with an input (a kernel would read values it already overwrote). A value is a tensor or a
    list of tensors (named ``name[i]``); None and empty tensors are skipped. Of two outputs, the one
    given later is named first. The byte spans are sorted and swept once, so lists of hundreds of
    tensors cost O(n log n)."""
    spans = []  # (storage, first byte, end byte, written, argument order, name)
    for written, group in ((True, outputs), (False, inputs)):
        for name, value in group.items():
            tensors = [value] if isinstance(value, torch.Tensor) else list(value or ())
            for index, tensor in enumerate(tensors):
                memory = _memory(tensor) if isinstance(tensor, torch.Tensor) else None
                if memory is not None:
                    label = name if isinstance(value, torch.Tensor) else f"{name}[{index}]"
                    spans.append((*memory, written, len(spans), label))
    spans.sort(key=lambda span: span[:3])
    storage, furthest, furthest_written = None, None, None  # the span reaching furthest so far on this storage
    for span in spans:
        if span[0] != storage:
            storage, furthest, furthest_written = span[0], span, span if span[3] else None
            continue
        if furthest_written is not None and span[1] < furthest_written[2]:
            _aliased(furthest_written, span)
        if span[3] and span[1] < furthest[2]:
            _aliased(span, furthest)
        if span[2] > furthest[2]:
            furthest = span
        if span[3] and (furthest_written is None or span[2] > furthest_written[2]):
            furthest_written = span


def _aliased(written: tuple, other: tuple) -> None:
    """Raise for two overlapping spans, ``written`` an output (of two outputs: the one given later first)."""
    if other[3] and other[4] > written[4]:
        written, other = other, written
    raise ValueError(f"{written[5]} must not share memory with {other[5]} ({written[5]} is written in place): "
                     "pass separate tensors")


def gemminer_step_(scores: object, grads: object, momentum_buffer: object, flags: object, lr: object,
                   momentum: object, l2: object, weights: object = None, masked_out: object = None) -> tuple:
    """``scores`` and ``momentum_buffer`` float, contiguous (updated in place); ``grads`` float and
    ``flags`` bool, all of one shape; ``lr``, ``momentum``, ``l2`` finite. ``weights`` (float) and
    ``masked_out`` (weights' dtype, contiguous, written) come both or neither, in that shape. The
    outputs (scores, momentum_buffer, masked_out) share no memory with each other or an input."""
    check_tensor("scores", scores, FLOAT_DTYPES)
    for name, tensor, dtypes in (("grads", grads, FLOAT_DTYPES), ("momentum_buffer", momentum_buffer, FLOAT_DTYPES),
                                 ("flags", flags, (torch.bool,))):
        _check_like(name, tensor, dtypes, "scores", scores)
    check_contiguous("scores", scores)
    check_contiguous("momentum_buffer", momentum_buffer)
    if (weights is None) != (masked_out is None):
        given, missing = ("weights", "masked_out") if masked_out is None else ("masked_out", "weights")
        raise ValueError(f"{given} needs {missing}: pass both (the masked weights are written) or neither")
    outputs = {"scores": scores, "momentum_buffer": momentum_buffer}
    inputs = {"grads": grads, "flags": flags}
    if weights is not None:
        _check_like("weights", weights, FLOAT_DTYPES, "scores", scores)
        _check_like("masked_out", masked_out, FLOAT_DTYPES, "scores", scores)
        if masked_out.dtype != weights.dtype:
            raise TypeError(f"masked_out must have the dtype of weights ({str(weights.dtype).removeprefix('torch.')}), "
                            f"got {str(masked_out.dtype).removeprefix('torch.')}")
        check_contiguous("masked_out", masked_out)
        outputs["masked_out"] = masked_out
        inputs["weights"] = weights
        weights = _readable(weights)
    check_no_aliasing(outputs, inputs)
    return (scores, _readable(grads), momentum_buffer, _readable(flags), check_float("lr", lr),
            check_float("momentum", momentum), check_float("l2", l2), weights, masked_out)


def gemminer_step_from_masked_grads_(scores: object, masked_grads: object, momentum_buffer: object, flags: object,
                                     lr: object, momentum: object, l2: object, weights: object,
                                     masked_out: object = None) -> tuple:
    """``gemminer_step_``'s contract with the gradient given per layer: ``scores``, ``momentum_buffer``
    (its dtype), ``flags`` (bool), ``weights`` (float) and ``masked_out`` (optional, weights' dtype)
    1-D, contiguous, one length; ``masked_grads`` a list of tensors in weights' dtype and device,
    each contiguous or channels_last (read in its memory order), whose entries add up to that
    length. The outputs share no memory with each other or an input."""
    check_tensor("scores", scores, FLOAT_DTYPES)
    check_tensor("weights", weights, FLOAT_DTYPES, scores.device)
    check_tensor("momentum_buffer", momentum_buffer, (scores.dtype,), scores.device)
    check_tensor("flags", flags, (torch.bool,), scores.device)
    named = {"scores": scores, "momentum_buffer": momentum_buffer, "flags": flags, "weights": weights}
    if masked_out is not None:
        check_tensor("masked_out", masked_out, (weights.dtype,), scores.device)
        named["masked_out"] = masked_out
    for name, tensor in named.items():
        if tensor.dim() != 1 or not tensor.is_contiguous() or tensor.numel() != scores.numel():
            raise ValueError(f"{name} must be 1-D and contiguous with the {scores.numel()} entries of scores, "
                             f"got shape {tuple(tensor.shape)}")
    grads = _as_list("masked_grads", masked_grads)
    for index, grad in enumerate(grads):
        check_tensor(f"masked_grads[{index}]", grad, (weights.dtype,), scores.device)
        check_flat_dense(f"masked_grads[{index}]", grad)
    total = sum(grad.numel() for grad in grads)
    if total != scores.numel():
        raise ValueError(f"masked_grads must hold one gradient per entry of scores: {total} entries for "
                         f"{scores.numel()} scores")
    check_no_aliasing({"scores": scores, "momentum_buffer": momentum_buffer, "masked_out": masked_out},
                      {"masked_grads": grads, "flags": flags, "weights": weights})
    return (scores, grads, momentum_buffer, flags, check_float("lr", lr), check_float("momentum", momentum),
            check_float("l2", l2), weights, masked_out)


def masked_weight_slots(grad_slot: object, claimed: object) -> tuple:
    """``grad_slot`` float, contiguous or channels_last (written in place); ``claimed`` one uint8
    on the CPU (read and set on the host, never a device sync)."""
    check_tensor("grad_slot", grad_slot, FLOAT_DTYPES)
    check_flat_dense("grad_slot", grad_slot)
    check_tensor("claimed", claimed, (torch.uint8,), torch.device("cpu"))
    if claimed.numel() != 1:
        raise ValueError(f"claimed must hold one element, got shape {tuple(claimed.shape)}")
    return grad_slot, claimed


def slots_fit_scores(grad_slot: torch.Tensor, scores: torch.Tensor) -> None:
    """A scores gradient slot (``MaskedWeightSlots.grad_slot``) must have the scores' shape,
    device and memory order, contiguous or channels_last: it is written in place and adopted as
    ``scores.grad`` (what the C++ op checks too; a dtype mismatch only skips the slot)."""
    if grad_slot.shape != scores.shape:
        raise ValueError(f"slots.grad_slot must have the shape of scores {tuple(scores.shape)}, "
                         f"got {tuple(grad_slot.shape)}")
    if grad_slot.device != scores.device:
        raise ValueError(f"slots.grad_slot must be on the device of scores ({scores.device}), got {grad_slot.device}")
    if memory_order(scores) is None or memory_order(grad_slot) != memory_order(scores):
        raise ValueError("scores and slots.grad_slot must be contiguous or channels_last, in one memory order "
                         "(grad_slot is written in place): was the model moved or converted "
                         "(model.to(memory_format=...)) after the GemMiner was made? Convert the model first, "
                         "then create the GemMiner")


def precomputed_fits(masked: torch.Tensor, weight: torch.Tensor, scores: torch.Tensor) -> None:
    """A precomputed masked weight (``gemminer_masked_weight(..., masked=)``) must have weight's
    shape, dtype and device, in the scores' memory order (it is returned as the result)."""
    check_tensor("masked", masked, (weight.dtype,), weight.device)
    check_same_shape("masked", masked, "weight", weight)
    if memory_order(masked) is None or memory_order(masked) != memory_order(scores):
        raise ValueError("masked must be laid out like scores (contiguous or channels_last, one memory order): "
                         "was the model moved or converted (model.to(memory_format=...)) after the GemMiner was "
                         "made? Convert the model first, then create the GemMiner")


def scale_columns(weight: object, coefficients: object, width: object) -> tuple:
    """``weight`` float (float64 too: the reference serves it), 2-D; ``coefficients`` float, 1-D,
    on weight's device, with ``weight.shape[1] / width`` entries; ``width >= 1``. Nothing is copied
    (the inputs are differentiable: the kernels make them contiguous themselves)."""
    check_tensor("weight", weight, SCALE_DTYPES)
    check_tensor("coefficients", coefficients, SCALE_DTYPES, weight.device)
    width = check_int("width", width, 1)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (a Linear weight), got shape {tuple(weight.shape)}")
    if coefficients.dim() != 1 or coefficients.shape[0] * width != weight.shape[1]:
        raise ValueError(f"coefficients must have weight.shape[1] / width = {weight.shape[1]} / {width} entries, "
                         f"got shape {tuple(coefficients.shape)}")
    return weight, coefficients, width


def _same_as_params(name: str, tensors: list, params: list, dtype: torch.dtype, device: torch.device,
                    *, writable: bool) -> list[torch.Tensor]:
    """One tensor per parameter, of its shape, dtype and device; in-place targets (``writable``)
    must be in the parameter's memory order, read-only ones are read through a copy when not."""
    if len(tensors) != len(params):
        raise ValueError(f"{name} must have one tensor per parameter: got {len(tensors)} for {len(params)} params")
    checked = []
    for index, (tensor, param) in enumerate(zip(tensors, params)):
        check_tensor(f"{name}[{index}]", tensor, (dtype,), device)
        if tensor.shape != param.shape:
            check_same_shape(f"{name}[{index}]", tensor, f"params[{index}]", param)
        if writable:
            if memory_order(tensor) is None or memory_order(tensor) != memory_order(param):
                raise ValueError(f"{name}[{index}] must be laid out like params[{index}] (contiguous or "
                                 "channels_last; it is updated in place): make it with torch.zeros_like(param)")
            checked.append(tensor)
        else:
            checked.append(in_order_of(tensor, param))
    return checked


def _optimizer_masks(masks: list, params: list, device: torch.device) -> list[torch.Tensor]:
    """``masks`` empty, or one per parameter, all of one kind: bool of the parameter's shape (or
    flat), returned in its memory order; or packed, uint8 1-D of ``ceil(numel / 8)`` bytes (bit j
    of byte i = entry 8i+j, entries in the parameter's memory order), returned contiguous."""
    if not masks:
        return masks
    if len(masks) != len(params):
        raise ValueError(f"masks must be empty or have one mask per parameter: got {len(masks)} for "
                         f"{len(params)} params")
    packed = isinstance(masks[0], torch.Tensor) and masks[0].dtype == torch.uint8
    checked = []
    for index, (mask, param) in enumerate(zip(masks, params)):
        check_tensor(f"masks[{index}]", mask, MASK_DTYPES, device)
        if (mask.dtype == torch.uint8) != packed:
            raise ValueError(f"masks[{index}] is {str(mask.dtype).removeprefix('torch.')} but masks[0] is "
                             f"{str(masks[0].dtype).removeprefix('torch.')}: the masks must be all bool or all "
                             "packed (uint8)")
        if packed:
            expected = packed_size(param.numel())
            if mask.dim() != 1 or mask.numel() != expected:
                raise ValueError(f"masks[{index}] (packed) must be 1-D with ceil(numel / 8) = {expected} bytes for "
                                 f"params[{index}] ({param.numel()} entries), got shape {tuple(mask.shape)}")
            checked.append(_readable(mask))
            continue
        if mask.shape != param.shape and not (mask.dim() == 1 and mask.numel() == param.numel()):
            raise ValueError(f"masks[{index}] must have the shape of params[{index}] {tuple(param.shape)}, "
                             f"got {tuple(mask.shape)}")
        checked.append(in_order_of(mask, param))
    return checked


def _optimizer_lists(params: object, grads: object, masks: object) -> tuple:
    """``params`` float, one dtype and device, contiguous or channels_last; ``grads`` one per
    parameter (its shape and dtype); ``masks`` as ``_optimizer_masks``."""
    params = _as_list("params", params)
    grads = _as_list("grads", grads)
    masks = _as_list("masks", masks)
    if not params:
        if grads or masks:
            raise ValueError("grads and masks must be empty when params is")
        return params, grads, masks, None, None
    check_tensor_list("params", params, FLOAT_DTYPES)
    dtype, device = params[0].dtype, params[0].device
    for index, param in enumerate(params):
        check_flat_dense(f"params[{index}]", param)
    grads = _same_as_params("grads", grads, params, dtype, device, writable=False)
    masks = _optimizer_masks(masks, params, device)
    return params, grads, masks, dtype, device


def _optimizer_scalars(**values: object) -> dict[str, float]:
    return {name: check_float(name, value) for name, value in values.items()}


def masked_sgd_(params: object, grads: object, momentum_buffers: object, masks: object, lr: object,
                weight_decay: object, momentum: object, dampening: object, nesterov: object, maximize: object,
                first_step: object) -> tuple:
    """``params``/``grads``/``masks`` as ``_optimizer_lists``; ``momentum_buffers`` one per parameter
    (laid out like it) when ``momentum != 0``, else empty; scalars finite, ``momentum`` and
    ``weight_decay`` >= 0; Nesterov needs momentum > 0 and dampening 0 (as torch.optim.SGD)."""
    scalars = _optimizer_scalars(lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening)
    if scalars["momentum"] < 0 or scalars["weight_decay"] < 0:
        raise ValueError(f"momentum and weight_decay must be >= 0, got {momentum} and {weight_decay}")
    if nesterov and (scalars["momentum"] <= 0 or scalars["dampening"] != 0):
        raise ValueError("nesterov needs momentum > 0 and dampening 0 (as torch.optim.SGD)")
    given = {"grads": _as_list("grads", grads), "masks": _as_list("masks", masks)}
    params, grads, masks, dtype, device = _optimizer_lists(params, grads, masks)
    buffers = _as_list("momentum_buffers", momentum_buffers)
    check_no_aliasing({"params": params, "momentum_buffers": buffers}, given)
    if scalars["momentum"] == 0:
        if buffers:
            raise ValueError("momentum_buffers must be empty when momentum is 0")
    elif params:
        buffers = _same_as_params("momentum_buffers", buffers, params, dtype, device, writable=True)
    elif buffers:
        raise ValueError("momentum_buffers must be empty when params is")
    return (params, grads, buffers, masks, scalars["lr"], scalars["weight_decay"], scalars["momentum"],
            scalars["dampening"], bool(nesterov), bool(maximize), bool(first_step))


def masked_adam_(params: object, grads: object, exp_avgs: object, exp_avg_sqs: object, max_exp_avg_sqs: object,
                 masks: object, lr: object, beta1: object, beta2: object, eps: object, weight_decay: object,
                 step: object, decoupled: object, maximize: object) -> tuple:
    """``params``/``grads``/``masks`` as ``_optimizer_lists``; ``exp_avgs``, ``exp_avg_sqs`` (and
    ``max_exp_avg_sqs`` for AMSGrad, else empty) one per parameter, laid out like it; betas in
    [0, 1), ``eps`` and ``weight_decay`` >= 0, ``step`` >= 1 (the count after this step)."""
    scalars = _optimizer_scalars(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step)
    for name in ("beta1", "beta2"):
        if not 0 <= scalars[name] < 1:
            raise ValueError(f"{name} must be in [0, 1), got {scalars[name]}")
    if scalars["eps"] < 0 or scalars["weight_decay"] < 0:
        raise ValueError(f"eps and weight_decay must be >= 0, got {eps} and {weight_decay}")
    if scalars["step"] < 1:
        raise ValueError(f"step must be >= 1 (the step count after this step), got {step}")
    given = {"grads": _as_list("grads", grads), "masks": _as_list("masks", masks)}
    params, grads, masks, dtype, device = _optimizer_lists(params, grads, masks)
    check_no_aliasing({"params": params, "exp_avgs": _as_list("exp_avgs", exp_avgs),
                       "exp_avg_sqs": _as_list("exp_avg_sqs", exp_avg_sqs),
                       "max_exp_avg_sqs": _as_list("max_exp_avg_sqs", max_exp_avg_sqs)}, given)
    moments = []
    for name, tensors in (("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        moments.append(_same_as_params(name, _as_list(name, tensors), params, dtype, device, writable=True)
                       if params else _as_list(name, tensors))
    maxima = _as_list("max_exp_avg_sqs", max_exp_avg_sqs)
    if maxima:
        maxima = _same_as_params("max_exp_avg_sqs", maxima, params, dtype, device, writable=True)
    return (params, grads, moments[0], moments[1], maxima, masks, scalars["lr"], scalars["beta1"],
            scalars["beta2"], scalars["eps"], scalars["weight_decay"], scalars["step"], bool(decoupled),
            bool(maximize))


CONTRACTS: dict[str, Callable[..., tuple]] = {
    "truncate_grads_": truncate_grads_,
    "pack_mask": pack_mask,
    "unpack_mask": unpack_mask,
    "mask_distances": mask_distances,
    "kth_value": kth_value,
    "digit_histogram": digit_histogram,
    "gemminer_mask": gemminer_mask,
    "gemminer_mask_backward": gemminer_mask_backward,
    "gemminer_step_": gemminer_step_,
    "gemminer_step_from_masked_grads_": gemminer_step_from_masked_grads_,
    "masked_sgd_": masked_sgd_,
    "masked_adam_": masked_adam_,
}
