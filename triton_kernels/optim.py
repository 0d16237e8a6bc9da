"""Triton kernels for ``masked_sgd_`` and ``masked_adam_``: one optimizer step over every
parameter of a list in one launch, pruned weights and state stored as exactly 0.

The math is float32 whatever the storage dtype, each value rounded once when stored, in
``torch.optim``'s (for-loop, CPU) order of operations: a multiply-add that torch's CPU kernels fuse
is a ``tl.fma`` here, and the launch turns fp fusion off so that no other product and sum are
fused; division and square root are the correctly rounded ``div_rn``/``sqrt_rn`` (plain ``/`` and
``sqrt`` are approximate on NVIDIA GPUs). The hyper-parameters are float32 scalars (as torch's
float32 ops take them; its float16/bfloat16 ops round some of them, eps and add's alpha, to the
tensors' dtype, this kernel does not: eps = 1e-8 would be 0 in float16). For float32 a step gives
torch's bits on the kept entries, but where torch's CPU sqrt is off by one ulp (it is not correctly
rounded on every build). Per-step switches (maximize, weight decay, Nesterov, the lerp branch) are
uniform runtime selects; what changes the memory traffic (the mask: none, bool bytes or packed
bits; momentum buffer, AMSGrad maxima) and the dtype are constexprs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparseticket.triton_kernels._common import (
    all_aligned,
    aot_attrs,
    block_table,
    round_to,
    to_float32,
    triton_dtype,
)

BLOCK = 1024  # elements per program: 8 per thread (4 warps), two 16-byte vectors per fp32 stream
# MOMENTUM constexpr of masked_sgd_kernel: what happens to the momentum buffer.
NO_MOMENTUM, FIRST_STEP, BLEND = 0, 1, 2
# Only the multiply-adds written as tl.fma are fused (torch's CPU kernels fuse exactly those).
_LAUNCH_OPTIONS = {"enable_fp_fusion": False}


@triton.jit
def _load(pointer, offsets, in_range, full):
    """A block as float32: unmasked (vectorisable) when full, else masked with 0."""
    if full:
        return to_float32(tl.load(pointer + offsets))
    return to_float32(tl.load(pointer + offsets, mask=in_range, other=0.0))


@triton.jit
def _store(pointer, offsets, value, in_range, full, kept, HAS_MASK: tl.constexpr, DTYPE: tl.constexpr):
    """Round float32 ``value`` to ``DTYPE`` and store it; pruned entries as exactly 0 (a select:
    whatever the value held, inf and NaN included)."""
    if HAS_MASK:
        value = tl.where(kept, value, 0.0)
    if full:
        tl.store(pointer + offsets, round_to(value, DTYPE))
    else:
        tl.store(pointer + offsets, round_to(value, DTYPE), mask=in_range)


@triton.jit
def _kept(mask, offsets, in_range, full, PACKED: tl.constexpr):
    """The mask of a block: True where the entry is kept. A bool mask is read as int8, one byte per
    entry; a packed one (uint8, bit j of byte i = entry 8i+j) one byte per 8 entries, the entry's bit
    taken with a shift (the 8 lanes of a byte load the same address)."""
    if PACKED:
        if full:
            byte = tl.load(mask + (offsets >> 3))
        else:
            byte = tl.load(mask + (offsets >> 3), mask=in_range, other=0)
        return ((byte.to(tl.int32) >> (offsets & 7)) & 1) != 0
    if full:
        return tl.load(mask + offsets) != 0
    return tl.load(mask + offsets, mask=in_range, other=1) != 0


@triton.jit
def _mask_pointer(mask_ptrs, tensor, PACKED: tl.constexpr, ALIGNED: tl.constexpr):
    """The mask of ``tensor``: int8 (bool, aligned like the data) or uint8 (packed bits)."""
    if PACKED:
        mask = tl.load(mask_ptrs + tensor).to(tl.pointer_type(tl.uint8))
    else:
        mask = tl.load(mask_ptrs + tensor).to(tl.pointer_type(tl.int8))
        if ALIGNED:
            mask = tl.multiple_of(mask, 16)
    return mask


@triton.jit
def _block(pid, block_first, block_tensor, numels, BLOCK: tl.constexpr):
    """The tensor a program works on, its block's offsets, range mask and whether it is full."""
    tensor = tl.load(block_tensor + pid)
    start = (pid - tl.load(block_first + tensor)) * BLOCK
    numel = tl.load(numels + tensor)
    offsets = start + tl.arange(0, BLOCK)
    return tensor, offsets, offsets < numel, start + BLOCK <= numel


@triton.jit
def _data(pointers, tensor, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    pointer = tl.load(pointers + tensor).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        pointer = tl.multiple_of(pointer, 16)
    return pointer


@triton.jit
def masked_sgd_kernel(
    param_ptrs, grad_ptrs, buffer_ptrs, mask_ptrs, numels, block_first, block_tensor,
    neg_lr, weight_decay, momentum, undampened,
    has_weight_decay, nesterov, maximize,
    DTYPE: tl.constexpr, HAS_MASK: tl.constexpr, MOMENTUM: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK: tl.constexpr, PACKED: tl.constexpr,
):
    """torch.optim.SGD's step: g = -grad if maximize; g = fma(p, wd, g) if wd; buf = g (first
    step) or fma(g, 1 - dampening, buf*momentum); g = fma(buf, momentum, g) if Nesterov else buf;
    p = fma(g, -lr, p). Pruned p and buf stored as 0."""
    tensor, offsets, in_range, full = _block(tl.program_id(0), block_first, block_tensor, numels, BLOCK)
    param = _data(param_ptrs, tensor, DTYPE, ALIGNED)
    grad = _data(grad_ptrs, tensor, DTYPE, ALIGNED)
    p = _load(param, offsets, in_range, full)
    g = _load(grad, offsets, in_range, full)
    g = tl.where(maximize, -g, g)
    g = tl.where(has_weight_decay, tl.fma(p, weight_decay, g), g)
    kept = in_range
    if HAS_MASK:
        kept = _kept(_mask_pointer(mask_ptrs, tensor, PACKED, ALIGNED), offsets, in_range, full, PACKED)
    if MOMENTUM != 0:
        buffer = _data(buffer_ptrs, tensor, DTYPE, ALIGNED)
        if MOMENTUM == 1:
            buf = g
        else:
            buf = tl.fma(g, undampened, _load(buffer, offsets, in_range, full) * momentum)
        g = tl.where(nesterov, tl.fma(buf, momentum, g), buf)
        _store(buffer, offsets, buf, in_range, full, kept, HAS_MASK, DTYPE)
    _store(param, offsets, tl.fma(g, neg_lr, p), in_range, full, kept, HAS_MASK, DTYPE)


@triton.jit
def masked_adam_kernel(
    param_ptrs, grad_ptrs, exp_avg_ptrs, exp_avg_sq_ptrs, max_ptrs, mask_ptrs, numels, block_first, block_tensor,
    neg_step_size, bias_correction2_sqrt, eps, weight_decay, decay, lerp_weight, beta2, one_minus_beta2,
    coupled_decay, decoupled_decay, maximize,
    DTYPE: tl.constexpr, HAS_MASK: tl.constexpr, AMSGRAD: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK: tl.constexpr, PACKED: tl.constexpr,
):
    """torch.optim.Adam/AdamW's step: g = -grad if maximize; p = p*(1 - lr*wd) (AdamW) or
    g = fma(p, wd, g) (Adam); m = lerp(m, g, 1 - beta1); v = fma((1 - beta2)*g, g, v*beta2);
    vmax = max(vmax, v) (AMSGrad); p = p + (-step_size*m) / (sqrt(v or vmax)/sqrt(bc2) + eps).
    Pruned p and moments stored as 0."""
    tensor, offsets, in_range, full = _block(tl.program_id(0), block_first, block_tensor, numels, BLOCK)
    param = _data(param_ptrs, tensor, DTYPE, ALIGNED)
    grad = _data(grad_ptrs, tensor, DTYPE, ALIGNED)
    exp_avg = _data(exp_avg_ptrs, tensor, DTYPE, ALIGNED)
    exp_avg_sq = _data(exp_avg_sq_ptrs, tensor, DTYPE, ALIGNED)
    p = _load(param, offsets, in_range, full)
    g = _load(grad, offsets, in_range, full)
    m = _load(exp_avg, offsets, in_range, full)
    v = _load(exp_avg_sq, offsets, in_range, full)
    kept = in_range
    if HAS_MASK:
        kept = _kept(_mask_pointer(mask_ptrs, tensor, PACKED, ALIGNED), offsets, in_range, full, PACKED)
    g = tl.where(maximize, -g, g)
    p = tl.where(decoupled_decay, p * decay, p)
    g = tl.where(coupled_decay, tl.fma(p, weight_decay, g), g)
    # torch's lerp: start + w*(end - start) for w < 0.5, else end - (1 - w)*(end - start)
    difference = g - m
    m = tl.where(lerp_weight < 0.5, tl.fma(lerp_weight, difference, m), tl.fma(lerp_weight - 1.0, difference, g))
    v = tl.fma(one_minus_beta2 * g, g, v * beta2)
    _store(exp_avg, offsets, m, in_range, full, kept, HAS_MASK, DTYPE)
    _store(exp_avg_sq, offsets, v, in_range, full, kept, HAS_MASK, DTYPE)
    if AMSGRAD:
        maxima = _data(max_ptrs, tensor, DTYPE, ALIGNED)
        # torch.maximum propagates NaN (so does PTX max.NaN; the default max drops it)
        v = tl.maximum(_load(maxima, offsets, in_range, full), v, propagate_nan=tl.PropagateNan.ALL)
        _store(maxima, offsets, v, in_range, full, kept, HAS_MASK, DTYPE)
    denom = tl.div_rn(tl.sqrt_rn(v), bias_correction2_sqrt) + eps
    p = p + tl.div_rn(neg_step_size * m, denom)
    _store(param, offsets, p, in_range, full, kept, HAS_MASK, DTYPE)


def _packed(masks: list[torch.Tensor]) -> bool:
    """Whether the masks are packed bits (uint8; the contract allows no mixed lists)."""
    return bool(masks) and masks[0].dtype == torch.uint8


def _aligned(lists: list[list[torch.Tensor]]) -> bool:
    """Whether every float tensor and bool mask starts on a 16-byte boundary (packed masks are read a
    byte per 8 entries, never as vectors: their alignment does not matter)."""
    return all_aligned([tensor for tensors in lists for tensor in tensors if tensor.dtype != torch.uint8])


def masked_sgd_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor],
    masks: list[torch.Tensor],
    lr: float,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    first_step: bool,
) -> None:
    """Launch ``masked_sgd_kernel`` once for the whole list (contract: reference.optim)."""
    if not params:
        return
    dtype = params[0].dtype
    mode = NO_MOMENTUM if momentum == 0 else (FIRST_STEP if first_step else BLEND)
    buffers = list(momentum_buffers) if mode != NO_MOMENTUM else []
    masks = list(masks)
    lists = [list(params), list(grads), buffers, masks]
    table = block_table(lists, [1] * len(params), BLOCK, params[0].device)
    if table.blocks == 0:
        return
    masked_sgd_kernel[(table.blocks,)](
        *table.pointers, table.numels, table.block_first, table.block_tensor,
        -lr, weight_decay, momentum, 1 - dampening, weight_decay != 0, bool(nesterov), bool(maximize),
        DTYPE=triton_dtype(dtype), HAS_MASK=bool(masks), MOMENTUM=mode, ALIGNED=_aligned(lists), BLOCK=BLOCK,
        PACKED=_packed(masks), **_LAUNCH_OPTIONS,
    )


def masked_adam_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    masks: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: float,
    decoupled: bool,
    maximize: bool,
) -> None:
    """Launch ``masked_adam_kernel`` once for the whole list (contract: reference.optim). The
    bias corrections and step size are computed in float64 here, as torch does on the host."""
    if not params:
        return
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    dtype = params[0].dtype
    maxima, masks = list(max_exp_avg_sqs), list(masks)
    lists = [list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), maxima, masks]
    table = block_table(lists, [1] * len(params), BLOCK, params[0].device)
    if table.blocks == 0:
        return
    masked_adam_kernel[(table.blocks,)](
        *table.pointers, table.numels, table.block_first, table.block_tensor,
        -step_size, bias_correction2_sqrt, eps, weight_decay, 1 - lr * weight_decay,
        1 - beta1, float(beta2), 1 - beta2,
        weight_decay != 0 and not decoupled, weight_decay != 0 and bool(decoupled), bool(maximize),
        DTYPE=triton_dtype(dtype), HAS_MASK=bool(masks), AMSGRAD=bool(maxima), ALIGNED=_aligned(lists), BLOCK=BLOCK,
        PACKED=_packed(masks), **_LAUNCH_OPTIONS,
    )


_TABLE = {"param_ptrs": "*i64", "grad_ptrs": "*i64"}
_SGD_SIGNATURE = {
    **_TABLE, "buffer_ptrs": "*i64", "mask_ptrs": "*i64", "numels": "*i64", "block_first": "*i64",
    "block_tensor": "*i64", "neg_lr": "fp32", "weight_decay": "fp32", "momentum": "fp32", "undampened": "fp32",
    "has_weight_decay": "u1", "nesterov": "u1", "maximize": "u1",
    "DTYPE": "constexpr", "HAS_MASK": "constexpr", "MOMENTUM": "constexpr", "ALIGNED": "constexpr",
    "BLOCK": "constexpr", "PACKED": "constexpr",
}
_ADAM_SIGNATURE = {
    **_TABLE, "exp_avg_ptrs": "*i64", "exp_avg_sq_ptrs": "*i64", "max_ptrs": "*i64", "mask_ptrs": "*i64",
    "numels": "*i64", "block_first": "*i64", "block_tensor": "*i64",
    "neg_step_size": "fp32", "bias_correction2_sqrt": "fp32", "eps": "fp32", "weight_decay": "fp32",
    "decay": "fp32", "lerp_weight": "fp32", "beta2": "fp32", "one_minus_beta2": "fp32",
    "coupled_decay": "u1", "decoupled_decay": "u1", "maximize": "u1",
    "DTYPE": "constexpr", "HAS_MASK": "constexpr", "AMSGRAD": "constexpr", "ALIGNED": "constexpr",
    "BLOCK": "constexpr", "PACKED": "constexpr",
}
AOT_SPECS = [
    {
        "name": "masked_sgd_kernel",
        "fn": masked_sgd_kernel,
        "signature": _SGD_SIGNATURE,
        "constexprs": {"DTYPE": tl.float32, "HAS_MASK": True, "MOMENTUM": BLEND, "ALIGNED": True, "BLOCK": BLOCK,
                       "PACKED": True},
        "attrs": aot_attrs(list(range(7))),
        "options": _LAUNCH_OPTIONS,
        "streaming": True,
    },
    {
        "name": "masked_adam_kernel",
        "fn": masked_adam_kernel,
        "signature": _ADAM_SIGNATURE,
        "constexprs": {"DTYPE": tl.float32, "HAS_MASK": True, "AMSGRAD": False, "ALIGNED": True, "BLOCK": BLOCK,
                       "PACKED": True},
        "attrs": aot_attrs(list(range(9))),
        "options": _LAUNCH_OPTIONS,
        "streaming": True,
    },
]
