"""sparseticket_cpu::scale_columns (EarlyBERT slimming's column scaling in C++) against the plain
expression weight * coefficients.repeat_interleave(width): forward, both gradients, memory reuse."""

from __future__ import annotations

import pytest
import torch

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
    from sparseticket.experiments.transformer_model import TinyTransformer
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
