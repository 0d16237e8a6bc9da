"""Triton kernels for ``scale_columns``: a 2-D weight's columns times per-group coefficients (column j
times ``coefficients[j // width]``), forward and backward.

Forward: one program per tile of ``BLOCK_ROWS`` x ``BLOCK_COLS`` (a streaming kernel: full tiles of
aligned rows load and store whole vectors). Backward, deterministic without float atomics: one
program per (chunk of rows, block of columns) writes ``grad * coefficient`` and the per-column sums
of ``grad * weight`` over its rows into a small fp32 buffer (one row per chunk); a second kernel,
one program per group, adds that buffer's entries of the group's ``width`` columns in a fixed order.
Math in fp32; results rounded to the dtypes the reference gives (the promoted dtype forward, the
inputs' dtypes backward). NaN and inf propagate as the arithmetic says (inf * 0 is NaN, as in torch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparseticket.triton_kernels._common import VECTOR_BYTES, aot_attrs, round_to, to_float32

BLOCK_ROWS = 16
BLOCK_COLS = 128
MAX_CHUNKS = 64  # rows of the backward's partial sums: at most this many per column
REDUCE_BLOCK = 256
# Rows start on a 16-byte boundary when every tensor does and a row holds a multiple of this many
# elements (8: 16 bytes of a 2-byte dtype, 32 of float32).
ROW_MULTIPLE = 8


@triton.jit
def row_starts(row, cols, ALIGNED: tl.constexpr):
    """Flat (int64) offsets of the rows' first elements; aligned rows hold a multiple of ROW_MULTIPLE
    elements, which lets full tiles use vector loads and stores."""
    starts = row.to(tl.int64) * cols
    if ALIGNED:
        starts = tl.multiple_of(starts, 8)  # ROW_MULTIPLE
    return starts


@triton.jit
def scale_columns_kernel(
    weight, coefficients, out, rows, cols, width, col_blocks,
    ALIGNED: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):
    """out[r, j] = weight[r, j] * coefficients[j // width] (fp32 math, rounded to out's dtype)."""
    pid = tl.program_id(0)
    row_block = pid // col_blocks
    col_block = pid - row_block * col_blocks
    if ALIGNED:
        weight = tl.multiple_of(weight, 16)
        out = tl.multiple_of(out, 16)
    row = row_block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    col = col_block * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_in = col < cols
    scale = to_float32(tl.load(coefficients + col // width, mask=col_in, other=0.0))
    offsets = row_starts(row, cols, ALIGNED)[:, None] + col[None, :]
    in_range = (row < rows)[:, None] & col_in[None, :]
    full = ((row_block + 1) * BLOCK_ROWS <= rows) & ((col_block + 1) * BLOCK_COLS <= cols)
    if full:
        value = to_float32(tl.load(weight + offsets))
    else:
        value = to_float32(tl.load(weight + offsets, mask=in_range, other=0.0))
    result = round_to(value * scale[None, :], out.dtype.element_ty)
    if full:
        tl.store(out + offsets, result)
    else:
        tl.store(out + offsets, result, mask=in_range)


@triton.jit
def scale_columns_backward_kernel(
    grad, weight, coefficients, grad_weight, partial, rows, cols, width, col_blocks, rows_per_program,
    NEED_WEIGHT: tl.constexpr, NEED_COEFFICIENTS: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):
    """grad_weight = grad * coefficients[j // width]; partial[chunk, j] = sum over the chunk's rows
    of grad * weight (fp32)."""
    pid = tl.program_id(0)
    chunk = pid // col_blocks
    col_block = pid - chunk * col_blocks
    if ALIGNED:
        grad = tl.multiple_of(grad, 16)
        weight = tl.multiple_of(weight, 16)
        grad_weight = tl.multiple_of(grad_weight, 16)
    col = col_block * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_in = col < cols
    full_cols = (col_block + 1) * BLOCK_COLS <= cols
    if NEED_WEIGHT:
        scale = to_float32(tl.load(coefficients + col // width, mask=col_in, other=0.0))
    sums = tl.zeros([BLOCK_ROWS, BLOCK_COLS], dtype=tl.float32)
    first = chunk * rows_per_program
    last = tl.minimum(first + rows_per_program, rows)
    for start in range(first, last, BLOCK_ROWS):
        row = start + tl.arange(0, BLOCK_ROWS)
        offsets = row_starts(row, cols, ALIGNED)[:, None] + col[None, :]
        in_range = (row < rows)[:, None] & col_in[None, :]
        full = full_cols & (start + BLOCK_ROWS <= rows)
        if full:
            upstream = to_float32(tl.load(grad + offsets))
        else:
            upstream = to_float32(tl.load(grad + offsets, mask=in_range, other=0.0))
        if NEED_WEIGHT:
            result = round_to(upstream * scale[None, :], grad_weight.dtype.element_ty)
            if full:
                tl.store(grad_weight + offsets, result)
            else:
                tl.store(grad_weight + offsets, result, mask=in_range)
        if NEED_COEFFICIENTS:
            if full:
                value = to_float32(tl.load(weight + offsets))
            else:
                value = to_float32(tl.load(weight + offsets, mask=in_range, other=0.0))
            sums += upstream * value  # masked lanes add 0 * 0
    if NEED_COEFFICIENTS:
        tl.store(partial + chunk.to(tl.int64) * cols + col, tl.sum(sums, axis=0), mask=col_in)


@triton.jit
def scale_columns_reduce_kernel(partial, grad_coefficients, chunks, cols, width, BLOCK: tl.constexpr):
    """grad_coefficients[g] = the sum of partial[:, g*width : (g+1)*width] (fp32, fixed order)."""
    group = tl.program_id(0).to(tl.int64)
    terms = tl.cast(chunks, tl.int64) * width  # (an int argument equal to 1 is a constexpr in the JIT)
    sums = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, terms, BLOCK):
        index = start + tl.arange(0, BLOCK)
        chunk = index // width
        column = group * width + (index - chunk * width)
        sums += tl.load(partial + chunk * cols + column, mask=index < terms, other=0.0)
    tl.store(grad_coefficients + group, round_to(tl.sum(sums, axis=0), grad_coefficients.dtype.element_ty))


def _rows_aligned(tensors: list[torch.Tensor], cols: int) -> bool:
    """Whether every row of every (contiguous, row-major) tensor starts on a 16-byte boundary."""
    return cols % ROW_MULTIPLE == 0 and all(tensor.data_ptr() % VECTOR_BYTES == 0 for tensor in tensors)


def scale_columns(weight: torch.Tensor, coefficients: torch.Tensor, width: int) -> torch.Tensor:
    """``weight * coefficients.repeat_interleave(width)`` in the promoted dtype (contract:
    reference.columns)."""
    weight, coefficients = weight.contiguous(), coefficients.contiguous()
    rows, cols = weight.shape
    out = torch.empty((rows, cols), dtype=torch.promote_types(weight.dtype, coefficients.dtype),
                      device=weight.device)
    if out.numel():
        col_blocks = triton.cdiv(cols, BLOCK_COLS)
        scale_columns_kernel[(triton.cdiv(rows, BLOCK_ROWS) * col_blocks,)](
            weight, coefficients, out, rows, cols, width, col_blocks,
            ALIGNED=_rows_aligned([weight, out], cols), BLOCK_ROWS=BLOCK_ROWS, BLOCK_COLS=BLOCK_COLS)
    return out


def scale_columns_backward(
    grad: torch.Tensor,
    weight: torch.Tensor,
    coefficients: torch.Tensor,
    width: int,
    need_weight: bool,
    need_coefficients: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad * coefficients.repeat_interleave(width) in weight's dtype, the sums of grad * weight
    over the rows and each group's ``width`` columns in coefficients' dtype); an output not needed
    is an empty tensor. ``grad`` has the forward output's shape and dtype. Deterministic."""
    weight, coefficients = weight.contiguous(), coefficients.contiguous()
    grad = grad.to(torch.promote_types(weight.dtype, coefficients.dtype)).contiguous()
    rows, cols = weight.shape
    empty = grad.new_empty(0)
    grad_weight = torch.empty_like(weight) if need_weight else empty
    grad_coefficients = torch.empty_like(coefficients) if need_coefficients else empty
    if grad.numel() == 0 or not (need_weight or need_coefficients):
        return grad_weight, grad_coefficients.zero_()  # no terms: every sum is 0
    row_blocks = triton.cdiv(rows, BLOCK_ROWS)
    rows_per_program = BLOCK_ROWS * triton.cdiv(row_blocks, MAX_CHUNKS)
    chunks = triton.cdiv(rows, rows_per_program)
    col_blocks = triton.cdiv(cols, BLOCK_COLS)
    partial = torch.empty((chunks, cols) if need_coefficients else (0,), dtype=torch.float32, device=grad.device)
    written = grad_weight if need_weight else weight  # a placeholder of weight's dtype, never written
    scale_columns_backward_kernel[(chunks * col_blocks,)](
        grad, weight, coefficients, written, partial, rows, cols, width, col_blocks, rows_per_program,
        NEED_WEIGHT=need_weight, NEED_COEFFICIENTS=need_coefficients,
        ALIGNED=_rows_aligned([grad, weight, written], cols), BLOCK_ROWS=BLOCK_ROWS, BLOCK_COLS=BLOCK_COLS)
    if need_coefficients:
        scale_columns_reduce_kernel[(coefficients.numel(),)](
            partial, grad_coefficients, chunks, cols, width, BLOCK=REDUCE_BLOCK)
    return grad_weight, grad_coefficients


_SHAPE_SIGNATURE = {"rows": "i32", "cols": "i32", "width": "i32", "col_blocks": "i32"}
AOT_SPECS = [
    {
        "name": "scale_columns_kernel",
        "fn": scale_columns_kernel,
        "signature": {"weight": "*fp32", "coefficients": "*fp32", "out": "*fp32", **_SHAPE_SIGNATURE,
                      "ALIGNED": "constexpr", "BLOCK_ROWS": "constexpr", "BLOCK_COLS": "constexpr"},
        "constexprs": {"ALIGNED": True, "BLOCK_ROWS": BLOCK_ROWS, "BLOCK_COLS": BLOCK_COLS},
        "attrs": aot_attrs([0, 1, 2]),
        "streaming": True,
    },
    {
        "name": "scale_columns_backward_kernel",
        "fn": scale_columns_backward_kernel,
        "signature": {"grad": "*fp32", "weight": "*fp32", "coefficients": "*fp32", "grad_weight": "*fp32",
                      "partial": "*fp32", **_SHAPE_SIGNATURE, "rows_per_program": "i32",
                      "NEED_WEIGHT": "constexpr", "NEED_COEFFICIENTS": "constexpr", "ALIGNED": "constexpr",
                      "BLOCK_ROWS": "constexpr", "BLOCK_COLS": "constexpr"},
        "constexprs": {"NEED_WEIGHT": True, "NEED_COEFFICIENTS": True, "ALIGNED": True,
                       "BLOCK_ROWS": BLOCK_ROWS, "BLOCK_COLS": BLOCK_COLS},
        "attrs": aot_attrs([0, 1, 2, 3, 4]),
        "streaming": True,
    },
    {
        "name": "scale_columns_reduce_kernel",
        "fn": scale_columns_reduce_kernel,
        "signature": {"partial": "*fp32", "grad_coefficients": "*fp32", "chunks": "i32", "cols": "i32",
                      "width": "i32", "BLOCK": "constexpr"},
        "constexprs": {"BLOCK": REDUCE_BLOCK},
        "attrs": aot_attrs([0, 1]),
        "streaming": False,
    },
]

__all__ = ["scale_columns", "scale_columns_backward"]
