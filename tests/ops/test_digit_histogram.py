"""digit_histogram: each kernel backend counts exactly what the reference counts, and four rounds
of it select the same element as kth_value."""

from __future__ import annotations

import pytest
import torch
from conftest import FLOAT_DTYPES, layer_shapes, reference_run

from sparseticket.ops import kth_value
from sparseticket.ops.kth import DIGIT_SHIFTS, digit_histogram
from sparseticket.reference.kth import order_keys


def _prefixes(tensors: list[torch.Tensor], shift: int, generator: torch.Generator) -> list[int]:
    """Prefixes that occur in the data (from random elements) and one that does not."""
    if shift == 24:
        return [0]
    keys = order_keys(torch.cat([t.reshape(-1) for t in tensors]))
    picks = torch.randint(0, keys.numel(), (3,), generator=generator)
    present = {int(keys[i]) >> (shift + 8) for i in picks}
    absent = next(p for p in range(1 << (24 - shift)) if p not in {int(k) >> (shift + 8) for k in keys[:4096]})
    return sorted(present | {absent})


def _check(tensors: list[torch.Tensor], generator: torch.Generator) -> None:
    for shift in DIGIT_SHIFTS:
        for prefix in _prefixes(tensors, shift, generator):
            found = digit_histogram(tensors, shift, prefix)
            expected = reference_run(digit_histogram, tensors, shift, prefix)
            assert found.dtype == torch.int64 and found.shape == (256,)
            assert torch.equal(found, expected), (shift, prefix)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matches_reference_on_layer_lists(backend, generator, dtype):
    tensors = [torch.randn(shape, generator=generator).to(dtype) for shape in layer_shapes(12, generator)]
    _check(tensors, generator)


def test_large_list_spans_many_blocks(backend, generator):
    tensors = [torch.randn(70_001, generator=generator), torch.randn(3, generator=generator),
               torch.rand(40_000, generator=generator)]
    _check(tensors, generator)


def test_ties_signed_zeros_infinities_and_nan(backend, generator):
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -float("nan"), 1.0, -1.0])
    tensors = [special.repeat(50), torch.full((77,), 0.5), torch.tensor([])]
    _check([t for t in tensors if t.numel()], generator)
    top = digit_histogram(tensors, 16, 0xFF)  # keys 0xFF......: +inf (0xFF80....) and every NaN (0xFFFF....)
    assert top[0x80] == 50 and top[0xFF] == 100 and top.sum() == 150


def test_four_rounds_select_the_kth_value(backend, generator):
    tensors = [torch.randn(shape, generator=generator) for shape in layer_shapes(8, generator)]
    total = sum(t.numel() for t in tensors)
    for k in (0, total // 2, total - 1):
        prefix, rank = 0, k
        for shift in DIGIT_SHIFTS:
            cumulative = digit_histogram(tensors, shift, prefix).cumsum(0)
            digit = int((cumulative <= rank).sum())
            rank -= int(cumulative[digit - 1]) if digit else 0
            prefix = prefix << 8 | digit
        bits = prefix ^ 0x80000000 if prefix & 0x80000000 else prefix ^ 0xFFFFFFFF
        value = torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32)
        assert value.item() == kth_value(tensors, k).item()


@pytest.mark.parametrize("arguments, error, words", [
    (([torch.ones(3)], 5, 0), ValueError, "shift must be one of"),
    (([torch.ones(3)], 24, 1), ValueError, "prefix must be in [0, 1)"),
    (([torch.ones(3)], 16, 256), ValueError, "prefix must be in [0, 256)"),
    (([torch.ones(3, dtype=torch.int32)], 24, 0), TypeError, "values[0]"),
    (([torch.ones(3), torch.ones(3).half()], 24, 0), TypeError, "one dtype"),
    (([torch.ones(3)], 24, 0.0), TypeError, "prefix must be an int"),
])
def test_bad_input_names_the_argument(arguments, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        digit_histogram(*arguments)


def test_empty_input_counts_nothing():
    assert torch.equal(digit_histogram([torch.empty(0)], 24, 0), torch.zeros(256, dtype=torch.int64))
