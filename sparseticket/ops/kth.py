"""``kth_value``: the exact k-th smallest element over a tensor or a list of tensors, and
``digit_histogram``, one histogram pass of it (for ``sharded_kth_value``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparseticket.ops._contracts import DIGIT_SHIFTS
from sparseticket.ops._library import define_op, register_fake
from sparseticket.ops._validate import FLOAT_DTYPES, check_int, check_tensor_list

_kth_op = define_op("kth_value", "(Tensor[] values, int k) -> Tensor")


@register_fake("kth_value")
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
    return _kth_op([tensor.detach() for tensor in tensors if tensor.numel()], k)  # the op checks the rest


_digit_histogram_op = define_op("digit_histogram", "(Tensor[] values, int shift, int prefix) -> Tensor")


@register_fake("digit_histogram")
def _digit_histogram_fake(values, shift, prefix):
    return values[0].new_empty((256,), dtype=torch.int64)


def digit_histogram(values: torch.Tensor | Sequence[torch.Tensor], shift: int, prefix: int) -> torch.Tensor:
    """int64 counts [256] of the 8-bit digit ``(key >> shift) & 255`` over the elements whose
    higher digits ``key >> (shift + 8)`` equal ``prefix`` (every element when ``shift`` is 24).

    ``key`` is the order-preserving 32-bit key of each value (as fp32; NaN largest), so four
    calls, shift 24 down to 0, each extending ``prefix`` by the digit holding rank k, select the
    k-th smallest: what ``sharded_kth_value`` does with histograms summed across ranks. One
    pass over the data, one launch, no copy.
    """
    tensors = [values] if isinstance(values, torch.Tensor) else values
    tensors = check_tensor_list("values", tensors, FLOAT_DTYPES)
    if isinstance(shift, bool) or shift not in DIGIT_SHIFTS:
        raise ValueError(f"shift must be one of {DIGIT_SHIFTS}, got {shift!r}")
    prefix = check_int("prefix", prefix, 0, 1 << (24 - shift))  # the digits above shift: 0 at 24
    present = [tensor.detach() for tensor in tensors if tensor.numel()]
    if not present:
        device = tensors[0].device if tensors else torch.device("cpu")
        return torch.zeros(256, dtype=torch.int64, device=device)
    return _digit_histogram_op(present, shift, prefix)
