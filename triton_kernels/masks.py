"""Triton kernels for the bit-mask ops: ``pack_mask``, ``unpack_mask`` and ``mask_distances``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparseticket.triton_kernels._common import all_aligned, aot_attrs, to_float32

BYTES_PER_PROGRAM = 512


@triton.jit
def popcount8(value):
    """Set bits of each value in [0, 255] (bit-twiddling; libdevice popc fails in the interpreter)."""
    value = value - ((value >> 1) & 0x55)
    value = (value & 0x33) + ((value >> 2) & 0x33)
    return (value + (value >> 4)) & 0x0F


@triton.jit
def pack_mask_kernel(mask, packed, count, BYTES: tl.constexpr):
    """Byte i of ``packed`` gets bit j = element 8i+j of ``mask``."""
    byte = tl.program_id(0).to(tl.int64) * BYTES + tl.arange(0, BYTES)
    bit = tl.arange(0, 8)
    element = byte[:, None] * 8 + bit[None, :]
    bits = tl.load(mask + element, mask=element < count, other=0).to(tl.int32)
    value = tl.sum(bits << bit[None, :], axis=1)
    tl.store(packed + byte, value.to(tl.uint8), mask=byte * 8 < count)


@triton.jit
def unpack_mask_kernel(packed, mask, count, BYTES: tl.constexpr):
    """Element 8i+j of ``mask`` gets bit j of byte i of ``packed``."""
    byte = tl.program_id(0).to(tl.int64) * BYTES + tl.arange(0, BYTES)
    bit = tl.arange(0, 8)
    value = tl.load(packed + byte, mask=byte * 8 < count, other=0).to(tl.int32)
    element = byte[:, None] * 8 + bit[None, :]
    bits = (value[:, None] >> bit[None, :]) & 1
    tl.store(mask + element, bits.to(tl.int1), mask=element < count)


@triton.jit
def mask_distances_kernel(
    importance, threshold, history, packed, counts, static_runs, count, rows, row_bytes,
    HAS_RUNS: tl.constexpr, ALIGNED: tl.constexpr, BYTES: tl.constexpr,
):
    """Pack ``importance > threshold``, count XOR bits against each history row, update runs."""
    byte = tl.program_id(0).to(tl.int64) * BYTES + tl.arange(0, BYTES)
    bit = tl.arange(0, 8)
    element = byte[:, None] * 8 + bit[None, :]
    in_range = element < count
    if ALIGNED:
        importance = tl.multiple_of(importance, 16)
    if (tl.program_id(0) + 1).to(tl.int64) * BYTES * 8 <= count:
        value = to_float32(tl.load(importance + element))
    else:
        value = to_float32(tl.load(importance + element, mask=in_range, other=0.0))
    new_bits = ((value > to_float32(tl.load(threshold))) & in_range).to(tl.int32)
    new_byte = tl.sum(new_bits << bit[None, :], axis=1)
    byte_in_range = byte < row_bytes
    tl.store(packed + byte, new_byte.to(tl.uint8), mask=byte_in_range)
    newest = tl.zeros([BYTES], dtype=tl.int32)
    for row in range(rows):
        old_byte = tl.load(history + row * row_bytes + byte, mask=byte_in_range, other=0).to(tl.int32)
        differing = tl.sum(popcount8(old_byte ^ new_byte), axis=0)
        tl.atomic_add(counts + row, differing.to(tl.int64))
        newest = old_byte
    if HAS_RUNS:
        runs = tl.load(static_runs + element, mask=in_range, other=0)
        old_bits = (newest[:, None] >> bit[None, :]) & 1
        same = (old_bits == new_bits) & (rows > 0)
        tl.store(static_runs + element, tl.where(same, runs + 1, 0), mask=in_range)


def _programs(count: int) -> int:
    return triton.cdiv(count, BYTES_PER_PROGRAM * 8)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor into uint8[ceil(N/8)] (contract: reference.masks.pack_mask)."""
    count = mask.numel()
    packed = torch.empty((count + 7) // 8, dtype=torch.uint8, device=mask.device)
    if count:
        pack_mask_kernel[(_programs(count),)](mask.reshape(-1), packed, count, BYTES=BYTES_PER_PROGRAM)
    return packed


def unpack_mask(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Unpack uint8[ceil(count/8)] into bool[count] (contract: reference.masks.unpack_mask)."""
    mask = torch.empty(count, dtype=torch.bool, device=packed.device)
    if count:
        unpack_mask_kernel[(_programs(count),)](packed, mask, count, BYTES=BYTES_PER_PROGRAM)
    return mask


def mask_distances(
    importance: torch.Tensor,
    threshold: torch.Tensor,
    history: torch.Tensor,
    static_runs: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass: packed mask, XOR-popcount per history row, runs (contract: reference.masks)."""
    count = importance.numel()
    rows, row_bytes = history.shape[0], (count + 7) // 8
    packed = torch.empty(row_bytes, dtype=torch.uint8, device=importance.device)
    counts = torch.zeros(rows, dtype=torch.int64, device=importance.device)
    if count:
        runs = static_runs if static_runs is not None else packed
        mask_distances_kernel[(_programs(count),)](
            importance.reshape(-1), threshold.reshape(1), history, packed, counts, runs,
            count, rows, row_bytes,
            HAS_RUNS=static_runs is not None, ALIGNED=all_aligned([importance]),
            BYTES=BYTES_PER_PROGRAM,
        )
    return packed, counts


AOT_SPECS = [
    {
        "name": "pack_mask_kernel",
        "fn": pack_mask_kernel,
        "signature": {"mask": "*i1", "packed": "*u8", "count": "i64", "BYTES": "constexpr"},
        "constexprs": {"BYTES": BYTES_PER_PROGRAM},
        "attrs": aot_attrs([0, 1]),
        "streaming": False,
    },
    {
        "name": "unpack_mask_kernel",
        "fn": unpack_mask_kernel,
        "signature": {"packed": "*u8", "mask": "*i1", "count": "i64", "BYTES": "constexpr"},
        "constexprs": {"BYTES": BYTES_PER_PROGRAM},
        "attrs": aot_attrs([0, 1]),
        "streaming": False,
    },
    {
        "name": "mask_distances_kernel",
        "fn": mask_distances_kernel,
        "signature": {
            "importance": "*fp32", "threshold": "*fp32", "history": "*u8", "packed": "*u8",
            "counts": "*i64", "static_runs": "*i32", "count": "i64", "rows": "i32",
            "row_bytes": "i64", "HAS_RUNS": "constexpr", "ALIGNED": "constexpr", "BYTES": "constexpr",
        },
        "constexprs": {"HAS_RUNS": True, "ALIGNED": True, "BYTES": BYTES_PER_PROGRAM},
        "attrs": aot_attrs([0, 1, 2, 3, 4, 5]),
        "streaming": True,
    },
]

__all__ = ["mask_distances", "pack_mask", "unpack_mask"]
