"""TruncationPlan: checked once, then each call equals truncate_grads_ on the current gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_float_close, reference_run

from sparseticket.ops import TruncationPlan, truncate_grads_


def _params(generator: torch.Generator) -> list[torch.nn.Parameter]:
    shapes = [(16,), (8, 3, 3, 3), (5,), (7, 4)]
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator)
    return params


def _keep(params, generator: torch.Generator) -> list[torch.Tensor]:
    """Per channel for the first two, per element for the others."""
    return [torch.rand(p.shape[0] if i < 2 else p.shape, generator=generator) > 0.4 for i, p in enumerate(params)]


def test_each_call_equals_truncate_grads(backend, generator):
    params = _params(generator)
    keep = _keep(params, generator)
    signs = [torch.randn(p.shape, generator=generator) for p in params]
    plan = TruncationPlan(params, keep, scale=0.25, l1=1e-2, l1_params=signs)
    for _ in range(2):  # new gradients each step, as after zero_grad(set_to_none=True)
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator)
        expected = [p.grad.clone() for p in params]
        reference_run(truncate_grads_, expected, keep, scale=0.25, params=signs, l1=1e-2)
        plan()
        for param, want in zip(params, expected):
            assert_float_close(param.grad, want)


def test_l1_sign_defaults_to_the_params_and_masks_may_change_in_place(backend, generator):
    params = _params(generator)
    keep = _keep(params, generator)
    plan = TruncationPlan(params, keep, scale=0.0, l1=1e-3)
    for mask in keep:
        mask.logical_not_()  # edited in place after the plan was made
    expected = [p.grad.clone() for p in params]
    reference_run(truncate_grads_, expected, keep, scale=0.0, params=list(params), l1=1e-3)
    plan()
    for param, want in zip(params, expected):
        assert_float_close(param.grad, want)


def test_params_without_gradient_are_skipped(backend, generator):
    params = _params(generator)
    keep = _keep(params, generator)
    params[1].grad = None
    expected = [p.grad.clone() for p in params if p.grad is not None]
    reference_run(truncate_grads_, expected, [k for p, k in zip(params, keep) if p.grad is not None], scale=0.5)
    TruncationPlan(params, keep, scale=0.5)()
    assert params[1].grad is None
    for param, want in zip([p for p in params if p.grad is not None], expected):
        assert_float_close(param.grad, want)


def test_non_contiguous_gradient_is_refused(generator):
    params = _params(generator)
    plan = TruncationPlan(params, _keep(params, generator))
    params[3].grad = torch.randn(4, 7, generator=generator).t()
    with pytest.raises(ValueError, match=r"grads\[3\] must be contiguous"):
        plan()


@pytest.mark.parametrize("make, error, words", [
    (lambda p, k: TruncationPlan(p[0], k), TypeError, "params must be a list or tuple"),
    (lambda p, k: TruncationPlan(p, k[:2]), ValueError, "keep must have one mask per gradient"),
    (lambda p, k: TruncationPlan(p, [m.float() for m in k]), TypeError, "keep[0]"),
    (lambda p, k: TruncationPlan(p, [torch.ones(3, dtype=torch.bool)] + k[1:]), ValueError, "keep[0] must have shape"),
    (lambda p, k: TruncationPlan(p, k, l1=1e-3, l1_params=p[:1]), ValueError, "l1_params must have one tensor"),
    (lambda p, k: TruncationPlan(p, k, scale=float("nan")), ValueError, "scale"),
])
def test_bad_input_names_the_argument(generator, make, error, words):
    params = _params(generator)
    with pytest.raises(error, match=words.replace("[", r"\[").replace("(", r"\(")):
        make(params, _keep(params, generator))


def test_empty_plan_does_nothing():
    TruncationPlan([], [])()


def test_scale_and_l1_are_fixed_once_made(generator):
    params = _params(generator)
    plan = TruncationPlan(params, _keep(params, generator), scale=0.5)
    assert (plan.scale, plan.l1) == (0.5, 0.0)
    with pytest.raises(AttributeError):
        plan.l1 = 1e-3  # would need l1_params the plan never checked: make a new plan instead


def test_non_contiguous_masks_are_refused_not_copied(generator):
    """A copy would leave the plan reading a stale mask after the caller edits the original."""
    params = _params(generator)
    keep = _keep(params, generator)
    keep[3] = torch.rand(4, 7, generator=generator).t() > 0.5  # params[3] is (7, 4): right shape, strided
    with pytest.raises(ValueError, match=r"keep\[3\] must be contiguous"):
        TruncationPlan(params, keep)
    signs = [torch.randn(p.shape, generator=generator) for p in params]
    signs[3] = torch.randn(4, 7, generator=generator).t()
    with pytest.raises(ValueError, match=r"l1_params\[3\] must be contiguous"):
        TruncationPlan(params, _keep(params, generator), l1=1e-3, l1_params=signs)


def test_cpp_backend_calls_the_native_plan_across_the_parallel_split(generator):
    """On CPU with the C++ kernels a call is one C++ method (NativeTruncationPlan); gradients big
    enough to be split across threads still equal the reference, masks edited in place included."""
    from sparseticket.ops import cpu_backend

    with cpu_backend("cpp"):
        params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in [(300, 250), (7,), (70000,)]]
        keep = [torch.rand(300, generator=generator) > 0.5, torch.rand(7, generator=generator) > 0.5,
                torch.rand(70000, generator=generator) > 0.5]
        plan = TruncationPlan(params, keep, scale=0.125, l1=1e-3)
        assert plan._native is not None
        for _ in range(2):
            for param in params:
                param.grad = torch.randn(param.shape, generator=generator)
            keep[2].logical_not_()
            expected = [p.grad.clone() for p in params]
            reference_run(truncate_grads_, expected, keep, scale=0.125, params=list(params), l1=1e-3)
            plan()
            for param, want in zip(params, expected):
                assert_float_close(param.grad, want)



def test_of_data_truncates_the_values_themselves(backend, generator):
    """of="data" (IMP's weight masking): the parameters' values, as truncate_grads_ on them would;
    gradients untouched; the in-place change is visible to autograd's version counter."""
    params = _params(generator)
    keep = _keep(params, generator)
    grads_before = [p.grad.clone() for p in params]
    expected = [p.detach().clone() for p in params]
    reference_run(truncate_grads_, expected, keep, scale=0.0)
    versions = [p._version for p in params]
    TruncationPlan(params, keep, scale=0.0, of="data")()
    for param, want, grad, version in zip(params, expected, grads_before, versions):
        assert_float_close(param.detach(), want)
        assert torch.equal(param.grad, grad)
        assert param._version > version


def test_of_must_name_grad_or_data(generator):
    params = _params(generator)
    with pytest.raises(ValueError, match="of must be 'grad' or 'data'"):
        TruncationPlan(params, _keep(params, generator), of="weights")
