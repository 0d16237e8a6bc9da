"""EarlyBERT slimming's column scaling: the public op ``sparseticket.ops.scale_columns`` on every CPU
backend, its C++ kernel sparseticket_cpu::scale_columns and its Triton kernels (through Triton's
interpreter: the ``triton`` CPU backend), against the reference expression
weight * coefficients.repeat_interleave(width): forward, both gradients, fp32/fp16/bf16 and mixed
dtypes, odd shapes, strided weights, NaN/inf, determinism, memory reuse, bad input.

The forward and the weight's gradient are one product per element (exact on every backend); the
coefficients' gradient is a sum, checked against the float64 sum of the same terms within the
rounding of fp32 summation and of the result's dtype."""

from __future__ import annotations

import pytest
import torch
from conftest import FLOAT_DTYPES, reference_run
from fuzz_inputs import same_bits

from sparseticket import reference
from sparseticket.ops import OutputSlot, cpu_backend, scale_columns
from sparseticket.triton_kernels import columns as triton_columns

OP = torch.ops.sparseticket_cpu.scale_columns


def plain(weight: torch.Tensor, coefficients: torch.Tensor, width: int) -> torch.Tensor:
    return weight * coefficients.repeat_interleave(width)


@pytest.mark.parametrize("rows, groups, width", [(3, 5, 1), (768, 3072, 1), (96, 4, 64), (70, 12, 8), (1, 1, 1)])
def test_forward_and_gradients_match_the_plain_expression(generator, rows, groups, width):
    weight = torch.randn(rows, groups * width, generator=generator)
    coefficients = torch.rand(groups, generator=generator) + 0.5
    upstream = torch.randn(rows, groups * width, generator=generator)
    got_w, got_c = weight.clone().requires_grad_(), coefficients.clone().requires_grad_()
    want_w, want_c = weight.clone().requires_grad_(), coefficients.clone().requires_grad_()
    out = OP(got_w, got_c, width, torch.empty(0))
    want = plain(want_w, want_c, width)
    assert torch.equal(out.detach(), want.detach())
    (out * upstream).sum().backward()
    (want * upstream).sum().backward()
    assert torch.equal(got_w.grad, want_w.grad)  # one product per element: exact
    torch.testing.assert_close(got_c.grad, want_c.grad, rtol=1e-5, atol=1e-5 * rows ** 0.5)


def test_gradient_seen_elsewhere_is_not_scaled_in_place(generator):
    """When the incoming gradient is also used by another branch, backward allocates."""
    weight = torch.randn(6, 4, generator=generator, requires_grad=True)
    coefficients = torch.rand(4, generator=generator, requires_grad=True)
    reference_w = weight.detach().clone().requires_grad_()
    reference_c = coefficients.detach().clone().requires_grad_()
    for w, c, scale in ((weight, coefficients, lambda *a: OP(*a, torch.empty(0))), (reference_w, reference_c, plain)):
        shared = w * 1.0  # the upstream gradient of `shared` reaches both the op and the sum below
        (scale(shared, c, 1).sum() + shared.square().sum()).backward()
    torch.testing.assert_close(weight.grad, reference_w.grad)
    torch.testing.assert_close(coefficients.grad, reference_c.grad)


def test_a_kept_output_is_not_overwritten_by_the_next_call(generator):
    weight = torch.randn(5, 6, generator=generator)
    slot = torch.empty(5, 6)
    first = OP(weight, torch.ones(6), 1, slot)
    snapshot = first.clone()
    second = OP(weight, torch.full((6,), 2.0), 1, slot)
    assert torch.equal(first, snapshot) and torch.equal(second, 2 * weight)
    del first, second
    third = OP(weight, torch.full((6,), 3.0), 1, slot)
    assert third.data_ptr() == slot.data_ptr()  # memory reused once nothing holds it
    assert torch.equal(third, 3 * weight)


@pytest.mark.parametrize("call, error, words", [
    (lambda: OP(torch.randn(4, 6).double(), torch.ones(6), 1, torch.empty(0)), TypeError, "weight must be float32"),
    (lambda: OP(torch.randn(4, 6), torch.ones(6).half(), 1, torch.empty(0)), TypeError, "coefficients must be float32"),
    (lambda: OP(torch.randn(4, 6), torch.ones(5), 1, torch.empty(0)), ValueError, "coefficients must have"),
    (lambda: OP(torch.randn(4, 6), torch.ones(3), 0, torch.empty(0)), ValueError, "width must be >= 1"),
    (lambda: OP(torch.randn(24), torch.ones(24), 1, torch.empty(0)), ValueError, "weight must be 2-D"),
])
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_slimmed_model_gradients_match_the_python_path(generator):
    """A slimmed transformer: the C++ path and the Python expression give the same gradients."""
    from sparseticket.builtin.transformer_model import TinyTransformer
    from sparseticket.methods import attach_slimming
    from sparseticket.ops import cpu_backend

    torch.manual_seed(0)
    x, y = torch.randn(3, 64, generator=generator), torch.tensor([0, 1, 1])
    grads = []
    for backend in ("cpp", "reference"):
        torch.manual_seed(0)
        model = TinyTransformer(64, 2, dim=32, heads=4, ffn=48, layers=2, tokens=8)
        attach_slimming(model)
        with cpu_backend(backend):
            torch.nn.functional.cross_entropy(model(x), y).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------ the public op
def _scaled_run(weight, coefficients, width, upstream, slot=None):
    """(output, weight.grad, coefficients.grad) of one forward/backward on fresh leaves."""
    leaf_weight, leaf_coefficients = weight.clone().requires_grad_(True), coefficients.clone().requires_grad_(True)
    out = scale_columns(leaf_weight, leaf_coefficients, width, slot=slot)
    (out * upstream).sum().backward()
    return out.detach(), leaf_weight.grad, leaf_coefficients.grad


def assert_sum_near_truth(got, weight, upstream, width) -> None:
    """``got`` (the coefficients' gradient) within the rounding of an fp32 sum of the terms
    upstream * weight of each group and of ``got``'s dtype, around their float64 sum; NaN exactly
    where that sum is NaN, the same infinities."""
    rows, groups = weight.shape[0], got.shape[0]
    terms = (upstream.double() * weight.double()).reshape(rows, groups, width).transpose(0, 1).reshape(groups, -1)
    truth = terms.sum(1)
    have = got.double()
    assert torch.equal(torch.isnan(have), torch.isnan(truth)), (have, truth)
    infinite = torch.isinf(truth)
    assert torch.equal(have[infinite], truth[infinite]), (have, truth)
    finite = torch.isfinite(truth)
    info, fp32, count = torch.finfo(got.dtype), torch.finfo(torch.float32), terms.shape[1]
    bound = (info.eps * truth.abs() + 2 * count * fp32.eps * terms.abs().sum(1)
             + info.smallest_normal * info.eps + 2 * count * fp32.smallest_normal * fp32.eps)
    assert bool(((have - truth).abs() <= bound)[finite].all()), (have, truth)


SHAPES = [
    (3, 5, 1),     # width 1: one coefficient per column
    (70, 12, 8),   # rows not a multiple of the block (16)
    (1, 1, 1),     # one element
    (7, 1, 1),     # one column
    (33, 7, 3),
    (5, 2, 64),
    (9, 1, 130),   # width = all columns, more columns than a block (128)
    (48, 32, 8),   # whole 16 x 128 tiles of rows that start 16-byte aligned (vector path)
    (1100, 3, 5),  # more row blocks than the backward's chunks: several blocks per program
]


@pytest.mark.parametrize("rows, groups, width", SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_public_op_matches_the_reference(backend, generator, rows, groups, width, dtype):
    """cpp: the C++ autograd op for float32 (fp16/bf16: the reference); triton: the Triton kernels.
    Forward and the weight gradient are one product each: exact."""
    weight = torch.randn(rows, groups * width, generator=generator).to(dtype)
    coefficients = (torch.rand(groups, generator=generator) + 0.5).to(dtype)
    upstream = torch.randn(rows, groups * width, generator=generator).to(dtype)
    out, grad_weight, grad_coefficients = _scaled_run(weight, coefficients, width, upstream, OutputSlot())
    want, want_weight, want_coefficients = reference_run(_scaled_run, weight, coefficients, width, upstream)
    assert torch.equal(out, want) and torch.equal(out, reference.scale_columns(weight, coefficients, width))
    assert out.dtype == want.dtype and grad_weight.dtype == dtype and grad_coefficients.dtype == dtype
    assert torch.equal(grad_weight, want_weight)
    if backend == "cpp" and dtype != torch.float32:  # the reference served the op
        assert torch.equal(grad_coefficients, want_coefficients)
        return
    if dtype == torch.float32:  # the kernels sum in another order than the reference
        torch.testing.assert_close(grad_coefficients, want_coefficients, rtol=1e-5, atol=1e-5 * rows ** 0.5)
    assert_sum_near_truth(grad_coefficients, weight, upstream, width)


def test_each_backend_serves_the_op(generator):
    """Which kernels ran, by the autograd node: C++ for float32 on cpp, Triton for every float32/
    float16/bfloat16 mix on triton, the reference for float64 and the rest."""
    weight, coefficients = torch.randn(4, 6, generator=generator), torch.rand(3, generator=generator)

    def node(backend_name, weight_dtype, coefficients_dtype):
        with cpu_backend(backend_name):
            out = scale_columns(weight.to(weight_dtype).requires_grad_(), coefficients.to(coefficients_dtype), 2)
        return out.grad_fn.name()

    assert "ScaleColumns" in node("cpp", torch.float32, torch.float32)
    assert node("cpp", torch.float16, torch.float16) == "MulBackward0"
    for weight_dtype in FLOAT_DTYPES:
        for coefficients_dtype in FLOAT_DTYPES:
            assert node("triton", weight_dtype, coefficients_dtype) == "_ScaleColumnsBackward"
    assert node("triton", torch.float64, torch.float32) == "MulBackward0"
    assert node("reference", torch.float32, torch.float32) == "MulBackward0"


@pytest.mark.parametrize("weight_dtype, coefficients_dtype", [
    (torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16), (torch.float16, torch.float32),
    (torch.float32, torch.bfloat16),
])
def test_mixed_dtypes_promote_as_the_reference(backend, generator, weight_dtype, coefficients_dtype):
    """The output in the promoted dtype, each gradient in its input's dtype, as the reference gives."""
    weight = torch.randn(21, 18, generator=generator).to(weight_dtype)
    coefficients = (torch.rand(6, generator=generator) + 0.5).to(coefficients_dtype)
    upstream = torch.randn(21, 18, generator=generator).to(torch.promote_types(weight_dtype, coefficients_dtype))
    out, grad_weight, grad_coefficients = _scaled_run(weight, coefficients, 3, upstream)
    want, want_weight, want_coefficients = reference_run(_scaled_run, weight, coefficients, 3, upstream)
    assert out.dtype == want.dtype == upstream.dtype and torch.equal(out, want)
    assert grad_weight.dtype == weight_dtype and torch.equal(grad_weight, want_weight)
    assert grad_coefficients.dtype == coefficients_dtype
    if backend == "triton":
        assert_sum_near_truth(grad_coefficients, weight, upstream, 3)
    else:
        assert torch.equal(grad_coefficients, want_coefficients)


def test_public_op_float64_and_strided_weights(backend, generator):
    weight = torch.randn(12, 9, generator=generator)
    strided = weight.t()  # (9, 12), not contiguous
    coefficients = torch.rand(4, generator=generator)
    upstream = torch.randn(9, 12, generator=generator)
    got = _scaled_run(strided, coefficients, 3, upstream, OutputSlot())
    want = reference_run(_scaled_run, strided.contiguous(), coefficients, 3, upstream)
    for have, expected in zip(got, want):
        torch.testing.assert_close(have, expected, rtol=1e-5, atol=1e-5)
    got64 = _scaled_run(weight.double(), coefficients.double()[:3], 3, upstream.t().double())
    want64 = reference_run(_scaled_run, weight.double(), coefficients.double()[:3], 3, upstream.t().double())
    for have, expected in zip(got64, want64):
        assert have.dtype == torch.float64 and torch.equal(have, expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_strided_inputs_and_upstream_gradients(backend, generator, dtype):
    """A column slice of a wider weight, strided coefficients and a broadcast upstream gradient
    (what ``.sum().backward()`` sends): the same as on contiguous copies."""
    wide = torch.randn(19, 40, generator=generator).to(dtype)
    weight = wide[:, 3:27]  # (19, 24): rows 40 apart, a start off the 16-byte boundary
    coefficients = (torch.rand(12, generator=generator) + 0.5).to(dtype)[::2]  # 6 entries, stride 2
    leaves = [weight.clone().requires_grad_(), coefficients.clone().requires_grad_()]
    twins = [weight.contiguous().requires_grad_(), coefficients.contiguous().requires_grad_()]
    out = scale_columns(leaves[0], leaves[1], 4)
    with cpu_backend("reference"):
        want = scale_columns(twins[0], twins[1], 4)
    assert torch.equal(out, want)
    out.sum().backward()
    want.sum().backward()
    assert torch.equal(leaves[0].grad, twins[0].grad)
    if backend == "triton" or dtype == torch.float32:
        assert_sum_near_truth(leaves[1].grad, weight, torch.ones_like(weight), 4)
    else:
        assert torch.equal(leaves[1].grad, twins[1].grad)


def test_one_input_differentiable(backend, generator):
    """Only the gradient asked for is computed: weight alone, coefficients alone."""
    weight, coefficients = torch.randn(17, 20, generator=generator), torch.rand(5, generator=generator) + 0.5
    upstream = torch.randn(17, 20, generator=generator)
    leaf = weight.clone().requires_grad_()
    scale_columns(leaf, coefficients, 4).backward(upstream)
    assert torch.equal(leaf.grad, upstream * coefficients.repeat_interleave(4))
    leaf = coefficients.clone().requires_grad_()
    scale_columns(weight, leaf, 4).backward(upstream)
    assert_sum_near_truth(leaf.grad, weight, upstream, 4)


@pytest.mark.parametrize("rows, groups, width", [(0, 3, 2), (4, 0, 1), (0, 0, 5)])
def test_empty_weights(backend, rows, groups, width):
    weight = torch.zeros(rows, groups * width, requires_grad=True)
    coefficients = torch.ones(groups, requires_grad=True)
    out = scale_columns(weight, coefficients, width)
    assert out.shape == (rows, groups * width)
    out.sum().backward()
    assert weight.grad.shape == weight.shape
    assert torch.equal(coefficients.grad, torch.zeros(groups))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's NumPy on inf * 0
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nan_and_inf_propagate_as_the_arithmetic_says(backend, dtype):
    """NaN in, NaN out; inf * 0 = NaN; inf * x = inf: forward and weight gradient bitwise as the
    reference (NaN where it has NaN), coefficient gradient NaN/inf where the exact sum is."""
    nan, inf = float("nan"), float("inf")
    weight = torch.tensor([[nan, 1.0, 2.0, 0.0, 1.0, -1.0, 1.0, 2.0],
                           [1.0, 2.0, inf, 1.0, 0.5, 0.5, 1.0, 1.0],
                           [2.0, 1.0, 1.0, 3.0, -inf, 1.0, 2.0, 0.0]]).to(dtype)
    coefficients = torch.tensor([1.0, 2.0, 0.5, inf]).to(dtype)
    upstream = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
                             [1.0, 1.0, 0.0, 1.0, 2.0, 1.0, nan, 1.0],
                             [1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]).to(dtype)
    got = _scaled_run(weight, coefficients, 2, upstream)
    want = reference_run(_scaled_run, weight, coefficients, 2, upstream)
    for have, expected in zip(got[:2], want[:2]):
        torch.testing.assert_close(have, expected, rtol=0, atol=0, equal_nan=True)
    out, grad_weight = got[0].float(), got[1].float()
    assert torch.isnan(out[0, 0]) and torch.isnan(out[2, 7])  # NaN weight; 0 * inf coefficient
    assert out[0, 6] == inf and out[2, 4] == -inf
    assert torch.isnan(grad_weight[0, 7]) and torch.isnan(grad_weight[1, 6])  # 0 * inf; NaN upstream
    assert_sum_near_truth(got[2], weight, upstream, 2)
    # group 0: NaN weight; group 1: inf * 0; group 2: -inf; group 3: NaN upstream
    assert torch.isnan(got[2][0]) and torch.isnan(got[2][1]) and got[2][2] == -inf and torch.isnan(got[2][3])


def test_backward_is_deterministic(backend, generator):
    """Two runs of the same forward/backward give the same bits (no float atomics): many chunks of
    rows and blocks of columns, groups that straddle blocks."""
    weight = torch.randn(1030, 132, generator=generator)
    coefficients = torch.rand(33, generator=generator) + 0.5
    upstream = torch.randn(1030, 132, generator=generator)
    first = _scaled_run(weight, coefficients, 4, upstream)
    second = _scaled_run(weight, coefficients, 4, upstream)
    for a, b in zip(first, second):
        assert same_bits(a, b)
    assert_sum_near_truth(first[2], weight, upstream, 4)


def test_backward_runs_on_the_kernels_of_the_forward(generator):
    """A graph built under the triton backend is differentiated by the Triton kernels, whichever
    backend is active at backward time."""
    weight = torch.randn(20, 12, generator=generator, dtype=torch.float16, requires_grad=True)
    coefficients = torch.rand(4, generator=generator, dtype=torch.float16, requires_grad=True)
    with cpu_backend("triton"):
        out = scale_columns(weight, coefficients, 3)
    with cpu_backend("reference"):
        out.backward(torch.ones_like(out))
    assert torch.equal(weight.grad, coefficients.repeat_interleave(3).detach().expand(20, 12))
    assert_sum_near_truth(coefficients.grad, weight.detach(), torch.ones(20, 12, dtype=torch.float16), 3)


@pytest.mark.parametrize("need_weight, need_coefficients", [(True, True), (True, False), (False, True), (False, False)])
def test_triton_backward_launcher_outputs(generator, need_weight, need_coefficients):
    """The Triton backward launcher computes only what is asked for (an empty tensor otherwise)."""
    weight, coefficients = torch.randn(18, 10, generator=generator), torch.rand(5, generator=generator)
    grad = torch.randn(18, 10, generator=generator)
    grad_weight, grad_coefficients = triton_columns.scale_columns_backward(
        grad, weight, coefficients, 2, need_weight, need_coefficients)
    if need_weight:
        assert torch.equal(grad_weight, grad * coefficients.repeat_interleave(2))
    else:
        assert grad_weight.numel() == 0
    if need_coefficients:
        assert_sum_near_truth(grad_coefficients, weight, grad, 2)
    else:
        assert grad_coefficients.numel() == 0


def test_only_the_cpp_path_uses_the_slot(generator):
    """C++ (float32, CPU): the result lands in the slot's memory once nothing holds the previous
    one; the other paths never allocate the slot."""
    weight, coefficients = torch.randn(6, 8, generator=generator), torch.rand(8, generator=generator)
    for backend_name in ("reference", "triton"):
        slot = OutputSlot()
        with cpu_backend(backend_name):
            scale_columns(weight, coefficients, 1, slot=slot)
        assert slot.nbytes == 0
    slot = OutputSlot()
    with cpu_backend("cpp"):
        first = scale_columns(weight, coefficients, 1, slot=slot)
        address = first.data_ptr()
        del first
        second = scale_columns(weight, coefficients, 1, slot=slot)
    assert second.data_ptr() == address and torch.equal(second, weight * coefficients)
    assert slot.nbytes == weight.numel() * 4


def _bad_public_calls():
    weight, coefficients = torch.randn(4, 6), torch.ones(6)
    return [
        (lambda: scale_columns(weight.long(), coefficients, 1), TypeError, "weight must be float32/float16/bfloat16"),
        (lambda: scale_columns(weight, coefficients.int(), 1), TypeError, "coefficients must be float32"),
        (lambda: scale_columns(weight, coefficients.to("meta"), 1), TypeError, "coefficients must be .* on cpu"),
        (lambda: scale_columns(weight, torch.ones(5), 1), ValueError, "coefficients must have weight.shape"),
        (lambda: scale_columns(weight, torch.ones(3, 2), 1), ValueError, "coefficients must have weight.shape"),
        (lambda: scale_columns(weight, torch.ones(3), 0), ValueError, r"width must be in \[1"),
        (lambda: scale_columns(weight, torch.ones(3), 2.0), TypeError, "width must be an int"),
        (lambda: scale_columns(torch.randn(24), torch.ones(24), 1), ValueError, "weight must be 2-D"),
        (lambda: scale_columns([[1.0]], torch.ones(1), 1), TypeError, "weight must be a torch.Tensor"),
        (lambda: scale_columns(weight, coefficients, 1, slot=torch.empty(4, 6)), TypeError,
         "slot must be an OutputSlot"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_public_calls())))
def test_public_op_bad_input_names_the_argument(backend, index):
    call, error, words = _bad_public_calls()[index]
    with pytest.raises(error, match=words):
        call()
