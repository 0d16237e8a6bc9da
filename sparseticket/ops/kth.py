"""``kth_value``: the exact k-th smallest element over a tensor or a list of tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparseticket.ops._library import define_op
from sparseticket.ops._validate import FLOAT_DTYPES, check_int, check_tensor_list

_kth_op = define_op("kth_value", "(Tensor[] values, int k) -> Tensor")


@torch.library.register_fake("sparseticket::kth_value")
def _kth_fake(values, k):
    return values[0].new_empty(())


def kth_value(values: torch.Tensor | Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th smallest (0-based) of all elements, as a 0-d tensor on their device.

    Exact (a radix select on the float bits; no sort, no concatenated copy). NaN orders after
    +inf, as in ``torch.sort``. EarlyBird's threshold is ``kth_value(|gamma|, int(N * p))``.
    """
    tensors = [values] if isinstance(values, torch.Tensor) else values
    tensors = check_tensor_list("values", tensors, FLOAT_DTYPES)
    total = sum(tensor.numel() for tensor in tensors)
    if total == 0:
        raise ValueError("values must hold at least one element")
    k = check_int("k", k, 0, total)
    return _kth_op([tensor.detach().contiguous() for tensor in tensors if tensor.numel()], k)
