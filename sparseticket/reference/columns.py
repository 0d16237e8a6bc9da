"""Reference for ``scale_columns``: a Linear weight's columns times per-group coefficients."""

from __future__ import annotations

import torch


def scale_columns(weight: torch.Tensor, coefficients: torch.Tensor, width: int) -> torch.Tensor:
    """``weight * coefficients.repeat_interleave(width)``: column j times ``coefficients[j // width]``
    (differentiable in both through PyTorch's autograd; dtype by type promotion)."""
    return weight * coefficients.repeat_interleave(width)
