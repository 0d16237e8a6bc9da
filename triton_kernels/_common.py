"""Helpers shared by the Triton launchers: dtype mapping, alignment, multi-tensor block tables."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

TRITON_DTYPES = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
}
VECTOR_BYTES = 16


def triton_dtype(dtype: torch.dtype) -> tl.dtype:
    """The Triton element type of a torch float dtype."""
    return TRITON_DTYPES[dtype]


def all_aligned(tensors: list[torch.Tensor]) -> bool:
    """Whether every tensor starts on a 16-byte boundary (so full blocks may use vector loads)."""
    return all(tensor.data_ptr() % VECTOR_BYTES == 0 for tensor in tensors)


@dataclass
class BlockTable:
    """Per-tensor pointers and sizes plus the tensor each program (block) works on.

    All arrays live in one int64 device buffer, copied from the host in one transfer.
    """

    pointers: list[torch.Tensor]
    numels: torch.Tensor
    inners: torch.Tensor
    block_first: torch.Tensor
    block_tensor: torch.Tensor
    blocks: int


def to_device_without_sync(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``host`` on ``device`` without stalling the host: a copy from pageable memory waits for the
    stream (a ``cudaStreamSynchronize`` on every call); from pinned memory with ``non_blocking`` it is
    queued, and PyTorch's pinned-memory cache keeps the block until the copy has run."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


# Device tables by everything they hold (addresses, sizes, inners, block, device): a table whose key
# matches holds exactly the same values, so it is reused without a copy. In a training loop the
# allocator hands out the same addresses step after step, and a CUDA graph replays the same ones:
# then no host-to-device copy happens at all (none can be captured into a graph with a stale source).
_TABLES: dict[tuple, BlockTable] = {}
_TABLES_KEPT = 64


def block_table(
    pointer_lists: list[list[torch.Tensor]],
    inners: list[int],
    block: int,
    device: torch.device,
) -> BlockTable:
    """Describe ``pointer_lists[0]`` (the tensors that set the sizes) as blocks of ``block`` elements.

    ``pointer_lists`` holds parallel lists of tensors (data, keep mask, params...); an empty
    list gives a row of zeros. ``inners[i]`` is passed through to the kernel per tensor. A table
    with the same addresses and sizes as an earlier one is that one (cached on the device).
    """
    key = (tuple(tuple(tensor.data_ptr() for tensor in tensors) for tensors in pointer_lists),
           tuple(tensor.numel() for tensor in pointer_lists[0]), tuple(inners), block, device)
    table = _TABLES.get(key)
    if table is None:
        table = _new_block_table(pointer_lists, inners, block, device)
        if len(_TABLES) >= _TABLES_KEPT:
            _TABLES.pop(next(iter(_TABLES)))  # the oldest
        _TABLES[key] = table
    return table


def _new_block_table(
    pointer_lists: list[list[torch.Tensor]],
    inners: list[int],
    block: int,
    device: torch.device,
) -> BlockTable:
    main = pointer_lists[0]
    count = len(main)
    numels = [tensor.numel() for tensor in main]
    blocks_per_tensor = [triton.cdiv(numel, block) for numel in numels]
    block_first = [0] * count
    running = 0
    for index, blocks in enumerate(blocks_per_tensor):
        block_first[index] = running
        running += blocks
    rows = [[tensor.data_ptr() for tensor in tensors] if tensors else [0] * count
            for tensors in pointer_lists]
    rows += [numels, inners, block_first]
    host = torch.tensor([value for row in rows for value in row], dtype=torch.int64)
    block_tensor = torch.repeat_interleave(
        torch.arange(count, dtype=torch.int64), torch.tensor(blocks_per_tensor, dtype=torch.int64))
    buffer = to_device_without_sync(torch.cat([host, block_tensor]), device)
    views = list(buffer[: len(rows) * count].view(len(rows), count).unbind(0))
    return BlockTable(
        pointers=views[: len(pointer_lists)],
        numels=views[len(pointer_lists)],
        inners=views[len(pointer_lists) + 1],
        block_first=views[len(pointer_lists) + 2],
        block_tensor=buffer[len(rows) * count:],
        blocks=running,
    )


@triton.jit
def to_float32(value):
    """``value`` as fp32; bfloat16 is widened through its bits, which is exact (Triton's
    interpreter converts bfloat16 subnormals wrongly, so tests through it would see other values
    than a GPU does; on a GPU this is the same shift the conversion does)."""
    if value.dtype == tl.bfloat16:
        return (value.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return value.to(tl.float32)


@triton.jit
def round_to(value, dtype: tl.constexpr):
    """fp32 ``value`` rounded to ``dtype`` (to nearest even); bfloat16 by its bits, which is exact
    also in Triton's interpreter (whose own conversion truncates), with NaN as torch writes it."""
    if dtype == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        upper = tl.where(value != value, 0x7FC0, rounded)
        return upper.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return value.to(dtype)


def aot_attrs(pointer_args: list[int]) -> dict:
    """``ASTSource`` attrs saying that these arguments are 16-byte aligned (what the JIT infers)."""
    return {(index,): [["tt.divisibility", 16]] for index in pointer_args}
