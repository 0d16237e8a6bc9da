"""truncate_grads_: each kernel backend against the reference."""

from __future__ import annotations

import pytest
import torch
from conftest import FLOAT_DTYPES, assert_float_close, layer_shapes, reference_run

from sparseticket.ops import truncate_grads_


def _case(shapes, dtype, generator, per_channel: bool | None, param_dtype=None):
    grads = [torch.randn(shape, generator=generator).to(dtype) for shape in shapes]
    params = [torch.randn(shape, generator=generator).to(param_dtype or dtype) for shape in shapes]
    for param in params:  # exact zeros: sign(0) = 0
        param.view(-1)[:: 7] = 0
    keep = []
    for index, shape in enumerate(shapes):
        channel = per_channel if per_channel is not None else index % 2 == 0
        mask_shape = (shape[0],) if channel and len(shape) else shape
        keep.append(torch.rand(mask_shape, generator=generator) > 0.4)
    return grads, keep, params


def _run_both(grads, keep, **kwargs):
    actual = [grad.clone() for grad in grads]
    expected = [grad.clone() for grad in grads]
    truncate_grads_(actual, keep, **kwargs)
    reference_run(truncate_grads_, expected, keep, **kwargs)
    return actual, expected


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("per_channel", [True, False, None])
def test_matches_reference_on_cnn_layers(backend, generator, dtype, per_channel):
    grads, keep, params = _case(layer_shapes(12, generator), dtype, generator, per_channel)
    actual, expected = _run_both(grads, keep, scale=0.003, params=params, l1=1e-4)
    for got, want in zip(actual, expected):
        assert_float_close(got, want)


def test_one_call_over_120_tensors_with_mixed_keep(backend, generator):
    grads, keep, params = _case(layer_shapes(120, generator), torch.float32, generator, None)
    actual, expected = _run_both(grads, keep, scale=0.5, params=params, l1=1e-3)
    for got, want in zip(actual, expected):
        assert_float_close(got, want)


@pytest.mark.parametrize("size", [1, 7, 2047, 2048, 2049, 5003])
def test_odd_sizes_and_hard_truncation(backend, generator, size):
    grads = [torch.randn(size, generator=generator), torch.randn(3, size, generator=generator)]
    keep = [torch.rand(size, generator=generator) > 0.5, torch.tensor([True, False, True])]
    actual, expected = _run_both(grads, keep)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
    # scale 0, l1 0: dropped entries are exactly zero, kept ones untouched
    assert torch.equal(actual[0], torch.where(keep[0], grads[0], 0.0))
    assert torch.equal(actual[1][1], torch.zeros(size)) and torch.equal(actual[1][0], grads[1][0])


def test_hand_computed_l1_and_scale(backend):
    grad = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    param = torch.tensor([[0.5, -0.5], [0.0, 2.0], [-1.0, 1.0]])
    keep = torch.tensor([True, False, True])
    truncate_grads_([grad], [keep], scale=0.5, params=[param], l1=0.25)
    expected = torch.tensor([[1.25, 1.75], [1.5, 2.125], [4.75, 6.25]])
    assert torch.equal(grad, expected)


def test_params_of_another_dtype(backend, generator):
    grads, keep, params = _case(layer_shapes(6, generator), torch.bfloat16, generator, True,
                                param_dtype=torch.float32)
    actual, expected = _run_both(grads, keep, scale=0.1, params=params, l1=1e-2)
    for got, want in zip(actual, expected):
        assert_float_close(got, want)


def test_empty_list_and_empty_tensors(backend):
    truncate_grads_([], [])
    grads = [torch.empty(0, 3), torch.ones(2)]
    truncate_grads_(grads, [torch.empty(0, dtype=torch.bool), torch.tensor([False, True])])
    assert torch.equal(grads[1], torch.tensor([0.0, 1.0]))


def test_params_ignored_when_l1_is_zero(backend, generator):
    grads, keep, params = _case(layer_shapes(4, generator), torch.float32, generator, True)
    with_params, _ = _run_both(grads, keep, scale=0.2, params=params)
    without, _ = _run_both(grads, keep, scale=0.2)
    for got, want in zip(with_params, without):
        assert torch.equal(got, want)
