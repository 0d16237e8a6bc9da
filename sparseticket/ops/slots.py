"""``OutputSlot``: memory an op's C++ path reuses for a weight-sized result from step to step."""

from __future__ import annotations

import torch

from sparseticket.ops._validate import memory_order


class OutputSlot:
    """Memory for one weight-sized result that an op recomputes every step (a masked or scaled
    weight), kept by the caller (one per layer) and passed to the op each call.

    The C++ kernels write the result into it whenever nothing but the slot references its memory
    (the previous step's graph is gone): a step then allocates, and page-faults, nothing. While a
    graph or a caller still holds the last result, they allocate a fresh tensor. The memory is
    allocated on the first call that can use it (only the C++ path does), in the layout asked for.
    """

    def __init__(self) -> None:
        self._tensor = torch.empty(0)

    @property
    def nbytes(self) -> int:
        """Bytes the slot holds now (0 until a call could use it)."""
        return self._tensor.numel() * self._tensor.element_size()

    def like(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The slot's memory with ``tensor``'s shape, device and memory order and ``dtype``
        (reallocated when one of them changed since the last call)."""
        current = self._tensor
        order = memory_order(tensor) or "row-major"  # a strided input is read through a row-major copy
        if (current.shape != tensor.shape or current.dtype != dtype or current.device != tensor.device
                or memory_order(current) != order):
            layout = torch.contiguous_format if order == "row-major" else torch.preserve_format
            current = self._tensor = torch.empty_like(tensor, dtype=dtype, memory_format=layout)
        return current
