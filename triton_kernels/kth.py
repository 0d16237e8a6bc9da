"""Triton kernels for ``kth_value`` (exact radix select over a list of tensors) and
``digit_histogram`` (one histogram pass of it, for selections across ranks).

Each value maps to an order-preserving 32-bit key. Four passes, one 8-bit digit each (most
significant first): a histogram pass counts the digit among elements whose higher digits match
the prefix chosen so far, and a one-program select pass picks the digit holding the k-th element.
Eight launches in all, no host synchronisation, no concatenated copy of the input.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparseticket.triton_kernels._common import (
    all_aligned,
    aot_attrs,
    block_table,
    to_device_without_sync,
    to_float32,
    triton_dtype,
)

BLOCK = 4096
DIGIT_BITS = 8
BINS = 1 << DIGIT_BITS


@triton.jit
def order_key(value):
    """uint32 key whose unsigned order is the float order of ``value`` (NaN largest)."""
    wide = to_float32(value)
    bits = wide.to(tl.uint32, bitcast=True)
    negative = (bits >> 31) != 0
    key = tl.where(negative, bits ^ 0xFFFFFFFF, bits | 0x80000000)
    return tl.where(wide != wide, 0xFFFFFFFF, key)  # NaN test in fp32: every NaN, whatever its sign


@triton.jit
def digit_histogram_kernel(
    value_ptrs, numels, block_first, block_tensor, state, histogram,
    DTYPE: tl.constexpr, SHIFT: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):
    """Histogram of the digit at ``SHIFT`` among elements matching the prefix in ``state[0]``."""
    pid = tl.program_id(0)
    tensor = tl.load(block_tensor + pid)
    start = (pid - tl.load(block_first + tensor)) * BLOCK
    numel = tl.load(numels + tensor)
    values = tl.load(value_ptrs + tensor).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        values = tl.multiple_of(values, 16)
    offsets = start + tl.arange(0, BLOCK)
    in_range = offsets < numel
    if start + BLOCK <= numel:
        key = order_key(tl.load(values + offsets))
    else:
        key = order_key(tl.load(values + offsets, mask=in_range, other=0.0))
    selected = in_range
    if SHIFT < 24:
        prefix = tl.load(state).to(tl.uint32)
        selected = selected & ((key >> (SHIFT + 8)) == prefix)
    digit = ((key >> SHIFT) & 0xFF).to(tl.int32)
    counts = tl.histogram(digit, 256, mask=selected)  # at most BLOCK per bin: int32 is enough here
    # the totals are int64: past 2**31 elements an int32 count would wrap and pick the wrong digit
    tl.atomic_add(histogram + tl.arange(0, 256), counts.to(tl.int64))


@triton.jit
def select_digit_kernel(state, histogram, result, FINAL: tl.constexpr):
    """Pick the digit whose bin holds rank ``state[1]``; extend the prefix, lower the rank."""
    counts = tl.load(histogram + tl.arange(0, 256)).to(tl.int64)
    rank = tl.load(state + 1)
    cumulative = tl.cumsum(counts, axis=0)
    digit = tl.sum((cumulative <= rank).to(tl.int64), axis=0)
    below = tl.sum(tl.where(tl.arange(0, 256) < digit, counts, 0), axis=0)
    prefix = tl.load(state) * 256 + digit
    tl.store(state, prefix)
    tl.store(state + 1, rank - below)
    if FINAL:
        key = prefix.to(tl.uint32)
        bits = tl.where((key >> 31) != 0, key ^ 0x80000000, key ^ 0xFFFFFFFF)
        tl.store(result, bits.to(tl.float32, bitcast=True))


def kth_value(values: list[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th smallest element of the list (contract: reference.kth.kth_value)."""
    device = values[0].device
    table = block_table([values], [1] * len(values), BLOCK, device)
    state = to_device_without_sync(torch.tensor([0, k], dtype=torch.int64), device)
    histograms = torch.zeros(32 // DIGIT_BITS, BINS, dtype=torch.int64, device=device)
    result = torch.empty((), dtype=torch.float32, device=device)
    dtype = triton_dtype(values[0].dtype)
    aligned = all_aligned(values)
    for step, shift in enumerate(range(32 - DIGIT_BITS, -1, -DIGIT_BITS)):
        digit_histogram_kernel[(table.blocks,)](
            table.pointers[0], table.numels, table.block_first, table.block_tensor,
            state, histograms[step], DTYPE=dtype, SHIFT=shift, ALIGNED=aligned, BLOCK=BLOCK,
        )
        select_digit_kernel[(1,)](state, histograms[step], result, FINAL=shift == 0)
    return result.to(values[0].dtype)


def digit_histogram(values: list[torch.Tensor], shift: int, prefix: int) -> torch.Tensor:
    """Counts of one 8-bit digit of the order keys (contract: reference.kth.digit_histogram):
    one launch of the histogram pass of ``kth_value``."""
    device = values[0].device
    table = block_table([values], [1] * len(values), BLOCK, device)
    state = to_device_without_sync(torch.tensor([prefix, 0], dtype=torch.int64), device)
    histogram = torch.zeros(BINS, dtype=torch.int64, device=device)
    if table.blocks:
        digit_histogram_kernel[(table.blocks,)](
            table.pointers[0], table.numels, table.block_first, table.block_tensor, state, histogram,
            DTYPE=triton_dtype(values[0].dtype), SHIFT=shift, ALIGNED=all_aligned(values), BLOCK=BLOCK,
        )
    return histogram


AOT_SPECS = [
    {
        "name": "digit_histogram_kernel",
        "fn": digit_histogram_kernel,
        "signature": {
            "value_ptrs": "*i64", "numels": "*i64", "block_first": "*i64", "block_tensor": "*i64",
            "state": "*i64", "histogram": "*i64",
            "DTYPE": "constexpr", "SHIFT": "constexpr", "ALIGNED": "constexpr", "BLOCK": "constexpr",
        },
        "constexprs": {"DTYPE": tl.float32, "SHIFT": 16, "ALIGNED": True, "BLOCK": BLOCK},
        "attrs": aot_attrs(list(range(6))),
        "streaming": True,
    },
    {
        "name": "select_digit_kernel",
        "fn": select_digit_kernel,
        "signature": {"state": "*i64", "histogram": "*i64", "result": "*fp32", "FINAL": "constexpr"},
        "constexprs": {"FINAL": True},
        "attrs": aot_attrs([0, 1, 2]),
        "streaming": False,
    },
]
