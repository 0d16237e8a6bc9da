"""``SparseLinear``: an ``nn.Linear`` whose weight is held in ``torch.sparse`` CSR or BSR form.

The compressed weight is kept as plain dense buffers (row pointers, column indices, values), so the
module deep-copies, saves in a ``state_dict`` and moves between devices like any other; the sparse
tensor is assembled from them in ``forward`` (no copy, no invariant check).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

LAYOUTS = ("csr", "bsr")


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` in CSR (``blocksize`` None) or BSR (square ``blocksize`` blocks)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, layout: str,
                 blocksize: int | None = None) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == "bsr" and (not blocksize or weight.shape[0] % blocksize or weight.shape[1] % blocksize):
            raise ValueError(f"BSR blocksize {blocksize} must divide the weight's shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.layout, self.blocksize = layout, blocksize if layout == "bsr" else None
        weight = weight.detach()
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            sparse = weight.to_sparse_csr() if layout == "csr" else weight.to_sparse_bsr((blocksize, blocksize))
        self.register_buffer("crow_indices", sparse.crow_indices().clone())
        self.register_buffer("col_indices", sparse.col_indices().clone())
        self.register_buffer("values", sparse.values().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, layout: str, blocksize: int | None = None) -> SparseLinear:
        """The sparse form of ``linear`` (its zero weights are dropped)."""
        return cls(linear.weight, linear.bias, layout, blocksize)

    def sparse_weight(self) -> torch.Tensor:
        """The weight as a ``torch.sparse`` CSR or BSR tensor (a view of the buffers)."""
        make = torch.sparse_csr_tensor if self.layout == "csr" else torch.sparse_bsr_tensor
        return make(self.crow_indices, self.col_indices, self.values, (self.out_features, self.in_features),
                    check_invariants=False)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense tensor (zeros where pruned)."""
        return self.sparse_weight().to_dense()

    def to_dense_linear(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (dense weight): what an exporter that cannot take sparse layouts gets."""
        weight = self.dense_weight()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear.eval()

    def stored_values(self) -> int:
        """Weight values stored (BSR: whole blocks, zeros inside a kept block included)."""
        return self.values.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = (self.sparse_weight() @ flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        block = f", blocksize={self.blocksize}" if self.blocksize else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, layout={self.layout}{block}, "
                f"values={self.stored_values()}")
