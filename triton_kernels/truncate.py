"""Triton kernel for ``truncate_grads_``: every gradient of a list in one launch."""

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

BLOCK = 2048


@triton.jit
def truncate_grads_kernel(
    grad_ptrs, keep_ptrs, param_ptrs, numels, inners, block_first, block_tensor,
    scale, l1,
    GRAD_DTYPE: tl.constexpr, PARAM_DTYPE: tl.constexpr, HAS_L1: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):
    """g <- g + l1*sign(p) where kept, else that times scale (exactly 0 when scale is 0)."""
    pid = tl.program_id(0)
    tensor = tl.load(block_tensor + pid)
    start = (pid - tl.load(block_first + tensor)) * BLOCK
    numel = tl.load(numels + tensor)
    inner = tl.load(inners + tensor)
    grad = tl.load(grad_ptrs + tensor).to(tl.pointer_type(GRAD_DTYPE))
    keep = tl.load(keep_ptrs + tensor).to(tl.pointer_type(tl.int8))
    param = tl.load(param_ptrs + tensor).to(tl.pointer_type(PARAM_DTYPE))
    if ALIGNED:
        grad = tl.multiple_of(grad, 16)
        param = tl.multiple_of(param, 16)
    offsets = start + tl.arange(0, BLOCK)
    full = start + BLOCK <= numel
    in_range = offsets < numel
    if full:
        value = to_float32(tl.load(grad + offsets))
    else:
        value = to_float32(tl.load(grad + offsets, mask=in_range, other=0.0))
    if HAS_L1:
        if full:
            weight = to_float32(tl.load(param + offsets))
        else:
            weight = to_float32(tl.load(param + offsets, mask=in_range, other=0.0))
        sign = tl.where(weight > 0, 1.0, tl.where(weight < 0, -1.0, 0.0))
        value = value + l1 * sign
    kept = tl.load(keep + offsets // inner, mask=in_range, other=1) != 0
    # dropped with scale 0 is exactly 0, by a select (inf * 0 would be NaN); else NaN/inf propagate
    dropped = tl.where(scale == 0.0, 0.0, value * scale)
    value = tl.where(kept, value, dropped)
    if full:
        tl.store(grad + offsets, round_to(value, GRAD_DTYPE))
    else:
        tl.store(grad + offsets, round_to(value, GRAD_DTYPE), mask=in_range)


def truncate_grads_(
    grads: list[torch.Tensor],
    keep: list[torch.Tensor],
    params: list[torch.Tensor],
    scale: float,
    l1: float,
) -> None:
    """Launch ``truncate_grads_kernel`` once for the whole list (contract: reference.truncate)."""
    if not grads:
        return
    inners = [grad.numel() // max(mask.numel(), 1) for grad, mask in zip(grads, keep)]
    has_l1 = l1 != 0.0
    table = block_table([grads, keep, params if has_l1 else []], inners, BLOCK, grads[0].device)
    if table.blocks == 0:
        return
    param_dtype = params[0].dtype if has_l1 else grads[0].dtype
    truncate_grads_kernel[(table.blocks,)](
        *table.pointers, table.numels, table.inners, table.block_first, table.block_tensor,
        float(scale), float(l1),
        GRAD_DTYPE=triton_dtype(grads[0].dtype), PARAM_DTYPE=triton_dtype(param_dtype),
        HAS_L1=has_l1, ALIGNED=all_aligned(grads + (params if has_l1 else [])), BLOCK=BLOCK,
    )


_SIGNATURE = {
    "grad_ptrs": "*i64", "keep_ptrs": "*i64", "param_ptrs": "*i64", "numels": "*i64",
    "inners": "*i64", "block_first": "*i64", "block_tensor": "*i64", "scale": "fp32", "l1": "fp32",
    "GRAD_DTYPE": "constexpr", "PARAM_DTYPE": "constexpr", "HAS_L1": "constexpr",
    "ALIGNED": "constexpr", "BLOCK": "constexpr",
}
AOT_SPECS = [
    {
        "name": "truncate_grads_kernel",
        "fn": truncate_grads_kernel,
        "signature": _SIGNATURE,
        "constexprs": {"GRAD_DTYPE": tl.float32, "PARAM_DTYPE": tl.float32, "HAS_L1": True,
                       "ALIGNED": True, "BLOCK": BLOCK},
        "attrs": aot_attrs(list(range(7))),
        "streaming": True,
    },
]
