"""EarlyBERT slimming's column scaling: the public op ``sparseticket.ops.scale_columns`` on every CPU
backend, and its C++ kernel sparseticket_cpu::scale_columns, against the reference expression
weight * coefficients.repeat_interleave(width): forward, both gradients, memory reuse, bad input.

There is no Triton kernel for this op: CUDA tensors, and CPU tensors under the triton backend, run
the reference (which the tests here check too)."""

from __future__ import annotations

import pytest
import torch
from conftest import FLOAT_DTYPES, reference_run

from sparseticket import reference
from sparseticket.ops import OutputSlot, cpu_backend, scale_columns

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


@pytest.mark.parametrize("rows, groups, width", [(3, 5, 1), (70, 12, 8), (1, 1, 1), (33, 7, 3), (5, 2, 64)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_public_op_matches_the_reference(backend, generator, rows, groups, width, dtype):
    """cpp: the C++ autograd op for float32 (fp16/bf16: the reference); triton: the reference (no
    Triton kernel). Forward and the weight gradient are one product each: exact."""
    weight = torch.randn(rows, groups * width, generator=generator).to(dtype)
    coefficients = (torch.rand(groups, generator=generator) + 0.5).to(dtype)
    upstream = torch.randn(rows, groups * width, generator=generator).to(dtype)
    out, grad_weight, grad_coefficients = _scaled_run(weight, coefficients, width, upstream, OutputSlot())
    want, want_weight, want_coefficients = reference_run(_scaled_run, weight, coefficients, width, upstream)
    assert torch.equal(out, want) and torch.equal(out, reference.scale_columns(weight, coefficients, width))
    assert torch.equal(grad_weight, want_weight)
    if dtype == torch.float32:  # the C++ kernel sums in another order
        torch.testing.assert_close(grad_coefficients, want_coefficients, rtol=1e-5, atol=1e-5 * rows ** 0.5)
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
