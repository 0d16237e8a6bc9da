"""kth_value: each kernel backend equals sorting the concatenation, exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import FLOAT_DTYPES, layer_shapes

from sparseticket.ops import kth_value


def _sorted_oracle(tensors: list[torch.Tensor], k: int) -> torch.Tensor:
    return torch.sort(torch.cat([tensor.reshape(-1) for tensor in tensors])).values[k]


def _assert_same_value(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == () and actual.dtype == expected.dtype
    if torch.isnan(expected):
        assert torch.isnan(actual)
    else:
        assert actual.item() == expected.item()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matches_sort_on_layer_lists(backend, generator, dtype):
    tensors = [torch.randn(shape, generator=generator).to(dtype) for shape in layer_shapes(10, generator)]
    total = sum(tensor.numel() for tensor in tensors)
    for k in [0, 1, total // 3, total // 2, total - 2, total - 1]:
        _assert_same_value(kth_value(tensors, k), _sorted_oracle(tensors, k))


def test_over_100_tensors_and_random_ranks(backend, generator):
    tensors = [torch.randn(shape, generator=generator).abs() for shape in layer_shapes(110, generator)]
    total = sum(tensor.numel() for tensor in tensors)
    for k in torch.randint(0, total, (5,), generator=generator).tolist():
        _assert_same_value(kth_value(tensors, k), _sorted_oracle(tensors, k))


def test_ties_signed_zeros_infinities_and_nan(backend):
    values = torch.tensor([2.0, -0.0, 0.0, 2.0, float("-inf"), float("inf"), float("nan"), -3.5, 2.0])
    parts = [values[:4], values[4:5], values[5:]]
    for k in range(values.numel()):
        _assert_same_value(kth_value(parts, k), _sorted_oracle(parts, k))


def test_all_equal_values_and_single_tensor(backend):
    constant = torch.full((5001,), 0.125)
    assert kth_value(constant, 0).item() == 0.125 and kth_value(constant, 5000).item() == 0.125
    assert kth_value(torch.tensor([[4.0, 1.0], [3.0, 2.0]]), 2).item() == 3.0


def test_values_close_in_bits(backend, generator):
    base = torch.full((4000,), 1.0)
    bits = base.view(torch.int32) + torch.randint(0, 300, (4000,), generator=generator, dtype=torch.int32)
    values = bits.view(torch.float32)
    for k in [0, 1999, 3999]:
        _assert_same_value(kth_value([values[:1500], values[1500:]], k), _sorted_oracle([values], k))


def test_empty_tensors_in_list_are_ignored(backend):
    tensors = [torch.empty(0), torch.tensor([3.0, 1.0]), torch.empty(0, 4), torch.tensor([2.0])]
    assert [kth_value(tensors, k).item() for k in range(3)] == [1.0, 2.0, 3.0]
