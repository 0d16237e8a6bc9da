"""Reference for ``kth_value``: the k-th smallest element of a list of tensors."""

from __future__ import annotations

import torch


def kth_value(values: list[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th smallest (0-based) of all elements, NaN ordered last (as ``torch.sort``)."""
    flat = torch.cat([tensor.reshape(-1) for tensor in values])
    return torch.sort(flat).values[k].clone()
