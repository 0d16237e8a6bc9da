"""The raw C++ kernels (torch.ops.sparseticket_cpu) against sparseticket.reference, at 1 and 2
threads, including mixed dtypes and the kernels' own argument checks."""

from __future__ import annotations

import pytest
import torch

import sparseticket._C  # noqa: F401  (fails loudly when the extension is not built)
from sparseticket import reference

ops = torch.ops.sparseticket_cpu

SIZES = [0, 1, 7, 8, 9, 63, 64, 65, 1000, 100003]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"], autouse=True)
def num_threads(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_values(count: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(count, generator=generator(seed)).to(dtype)


def random_bools(count: int, seed: int, p: float = 0.5) -> torch.Tensor:
    return torch.rand(count, generator=generator(seed)) < p


def assert_float_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    # Same fp32 operations in the same order: bit-exact on x86, at most 1 ulp where FMA contraction applies.
    eps = torch.finfo(expected.dtype).eps
    torch.testing.assert_close(actual, expected, rtol=eps, atol=1e-6, equal_nan=True)


# ----------------------------------------------------------------------------- truncate_grads_


def truncate_case(count: int, dtype: torch.dtype, param_dtype: torch.dtype, seed: int):
    """(grads, keep, params): mixed 1-D/4-D tensors with per-element or per-channel keep."""
    gen = generator(seed)
    grads, keep, params = [], [], []
    shapes = [(64, 3, 3, 3), (1000,), (7,), (0,), (10, 1), (1,), (33, 17), (5, 0)]
    for index in range(count):
        shape = shapes[index % len(shapes)]
        grad = torch.randn(shape, generator=gen).to(dtype)
        per_channel = index % 3 == 0 and grad.dim() > 1
        keep_count = shape[0] if per_channel else grad.numel()
        grads.append(grad)
        keep.append(torch.rand(keep_count, generator=gen) < 0.5)
        param = torch.randn(shape, generator=gen)
        param[torch.rand(shape, generator=gen) < 0.1] = 0.0
        params.append(param.to(param_dtype))
    return grads, keep, params


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("l1", [0.0, 1e-3])
def test_truncate_grads_list(dtype, l1):
    grads, keep, params = truncate_case(120, dtype, torch.float32 if dtype == torch.float32 else torch.bfloat16, 1)
    params = params if l1 != 0.0 else []
    expected = [g.clone() for g in grads]
    reference.truncate_grads_(expected, keep, params, 0.25, l1)
    ops.truncate_grads_(grads, keep, params, 0.25, l1)
    for actual, want in zip(grads, expected):
        assert_float_equal(actual, want)


@pytest.mark.parametrize("count", SIZES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_truncate_grads_sizes(count, per_channel):
    shape = (1, count) if per_channel else (count,)  # per channel: one channel of `count` elements
    grad = random_values(count, torch.float32, 2).reshape(shape)
    keep = random_bools(shape[0], 3)
    param = random_values(count, torch.float32, 4).reshape(shape)
    expected = grad.clone()
    reference.truncate_grads_([expected], [keep], [param], 0.5, 0.01)
    ops.truncate_grads_([grad], [keep], [param], 0.5, 0.01)
    assert_float_equal(grad, expected)


def test_truncate_grads_large_list_and_empty():
    gen = generator(5)
    grads = [torch.randn(shape, generator=gen) for shape in ((100003,), (10, 7000), (5,), (1, 40000))]
    keep = [torch.rand(n, generator=gen) < 0.5 for n in (100003, 10, 5, 1)]
    expected = [g.clone() for g in grads]
    reference.truncate_grads_(expected, keep, [], 0.0, 0.0)
    ops.truncate_grads_(grads, keep, [], 0.0, 0.0)
    for actual, want in zip(grads, expected):
        assert torch.equal(actual, want)
    ops.truncate_grads_([], [], [], 0.5, 0.0)


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("count", SIZES)
def test_pack_unpack(count):
    mask = random_bools(count, 6)
    packed = ops.pack_mask(mask)
    assert torch.equal(packed, reference.pack_mask(mask))
    assert torch.equal(ops.unpack_mask(packed, count), mask)
    assert torch.equal(ops.pack_mask(mask.reshape(1, -1)), packed)


@pytest.mark.parametrize("count", SIZES)
@pytest.mark.parametrize("rows", [0, 1, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_distances(count, rows, dtype):
    importance = random_values(count, dtype, 7)
    threshold = torch.tensor(0.1, dtype=torch.float64)
    history = torch.randint(0, 256, (rows, (count + 7) // 8), dtype=torch.uint8, generator=generator(8))
    runs = torch.randint(0, 50, (count,), dtype=torch.int32, generator=generator(9))
    expected_runs = runs.clone()
    expected = reference.mask_distances(importance, threshold, history, expected_runs)
    actual = ops.mask_distances(importance, threshold, history, runs)
    assert torch.equal(actual[0], expected[0])
    assert torch.equal(actual[1], expected[1])
    assert torch.equal(runs, expected_runs)
    no_runs = ops.mask_distances(importance, threshold, history, None)
    assert torch.equal(no_runs[0], expected[0]) and torch.equal(no_runs[1], expected[1])


def test_mask_distances_matching_history():
    importance = random_values(1000, torch.float32, 10)
    threshold = torch.tensor(0.0)
    packed = reference.pack_mask(importance > 0)
    history = torch.stack([packed, ~packed, packed])
    runs = torch.zeros(1000, dtype=torch.int32)
    _, counts = ops.mask_distances(importance, threshold, history, runs)
    assert counts.tolist() == [0, 1000, 0] and torch.equal(runs, torch.ones_like(runs))


# ----------------------------------------------------------------------------- kth_value


def kth_lists():
    gen = generator(11)
    many = [torch.randn(n, generator=gen) for n in torch.randint(0, 3000, (150,), generator=gen).tolist()]
    ties = [torch.randint(-3, 4, (n,), generator=gen).float() for n in (5000, 40000, 1)]
    with_nan = [torch.randn(50000, generator=gen), torch.full((10,), float("nan")), torch.randn(7, generator=gen)]
    with_nan[0][::97] = float("nan")
    with_nan[0][::89] = -float("nan")
    zeros = [torch.zeros(40000), -torch.zeros(30000), torch.ones(5)]
    small = [torch.tensor([3.0, float("nan"), -1.0, -1.0]), torch.tensor([0.5])]
    return {"many": many, "ties": ties, "nan": with_nan, "zeros": zeros, "small": small,
            "single": [random_values(100003, torch.float32, 12)], "one": [torch.tensor([2.5])]}


@pytest.mark.parametrize("name", ["many", "ties", "nan", "zeros", "small", "single", "one"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kth_value(name, dtype):
    values = [v.to(dtype) for v in kth_lists()[name]]
    total = sum(v.numel() for v in values)
    for k in sorted({0, 1, total // 3, total // 2, total - 12, total - 2, total - 1} & set(range(total))):
        actual = ops.kth_value(values, k)
        expected = reference.kth_value(values, k)
        assert actual.dtype == dtype and actual.dim() == 0
        assert torch.equal(actual, expected) or (actual.isnan() and expected.isnan()), (k, actual, expected)


def test_kth_value_errors():
    with pytest.raises(RuntimeError):
        ops.kth_value([torch.randn(5)], 5)
    with pytest.raises(RuntimeError):
        ops.kth_value([torch.randn(5).double()], 0)


# ----------------------------------------------------------------------------- gemminer


def gemminer_inputs(count: int, dtype: torch.dtype, scores_dtype: torch.dtype, seed: int):
    weight = random_values(count, dtype, seed)
    scores = torch.rand(count, generator=generator(seed + 1)).to(scores_dtype)
    scores[::5] = 0.5
    flags = random_bools(count, seed + 2, 0.8)
    return weight, scores, flags


@pytest.mark.parametrize("count", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scores_dtype", [torch.float32, torch.bfloat16])
def test_gemminer_mask(count, dtype, scores_dtype):
    weight, scores, flags = gemminer_inputs(count, dtype, scores_dtype, 13)
    assert torch.equal(ops.gemminer_mask(weight, scores, flags), reference.gemminer_mask(weight, scores, flags))
    grad = random_values(count, dtype, 16)
    for need_weight, need_scores in [(True, True), (True, False), (False, True), (False, False)]:
        actual = ops.gemminer_mask_backward(grad, weight, scores, flags, need_weight, need_scores)
        expected = reference.gemminer_mask_backward(grad, weight, scores, flags, need_weight, need_scores)
        assert torch.equal(actual[0], expected[0]) and actual[0].dtype == expected[0].dtype
        assert_float_equal(actual[1], expected[1])


def test_gemminer_mask_backward_mixed_dtypes():
    weight, scores, flags = gemminer_inputs(1000, torch.bfloat16, torch.float32, 17)
    grad = random_values(1000, torch.float32, 18)
    actual = ops.gemminer_mask_backward(grad, weight, scores, flags, True, True)
    expected = reference.gemminer_mask_backward(grad, weight, scores, flags, True, True)
    assert torch.equal(actual[0], expected[0])
    assert_float_equal(actual[1], expected[1])


@pytest.mark.parametrize("count", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("buffer_dtype", [None, torch.float32])
def test_gemminer_step(count, dtype, buffer_dtype):
    _, scores, flags = gemminer_inputs(count, dtype, dtype, 19)
    grads = random_values(count, dtype, 22)
    momentum_buffer = (0.1 * random_values(count, torch.float32, 23)).to(buffer_dtype or dtype)
    state = (scores.clone(), momentum_buffer.clone())
    expected = reference.gemminer_step_(state[0], grads, state[1], flags, 0.1, 0.9, 1e-4)
    actual = ops.gemminer_step_(scores, grads, momentum_buffer, flags, 0.1, 0.9, 1e-4)
    assert actual.dtype == torch.int64 and actual.dim() == 0 and torch.equal(actual, expected)
    assert_float_equal(scores, state[0])
    assert_float_equal(momentum_buffer, state[1])


# ----------------------------------------------------------------------------- checks


def test_invalid_inputs_raise():
    with pytest.raises(RuntimeError):
        ops.pack_mask(torch.ones(8))
    with pytest.raises(RuntimeError):
        ops.unpack_mask(torch.zeros(1, dtype=torch.uint8), 9)
    with pytest.raises(RuntimeError):
        ops.gemminer_mask(torch.randn(4, 4).t(), torch.rand(4, 4), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"keep\[0\] must have shape \(10,\)"):
        ops.truncate_grads_([torch.randn(10)], [torch.ones(3, dtype=torch.bool)], [], 0.5, 0.0)
    with pytest.raises(RuntimeError):
        ops.mask_distances(torch.randn(10), torch.tensor(0.0), torch.zeros(1, 1, dtype=torch.uint8), None)
