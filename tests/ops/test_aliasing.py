"""Every op that writes in place refuses an output that shares memory with another argument, on
every backend (C++ checks its own contract; Triton through the interpreter; the reference), and
accepts disjoint views of one buffer (a flat parameter buffer is legitimate)."""

from __future__ import annotations

import pytest
import torch

from sparseticket.ops import cpu_backend, mask_distances, masked_adam_, masked_sgd_, truncate_grads_

BACKENDS = ["cpp", "triton", "reference"]


def _tensors(count: int = 2, size: int = 40) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(size, generator=generator) for _ in range(count)]


def _sgd(params, grads, buffers, masks=()):
    masked_sgd_(params, grads, buffers, masks, lr=0.1, momentum=0.9, weight_decay=1e-4)


def _adam(params, grads, exp_avgs, exp_avg_sqs, masks=()):
    masked_adam_(params, grads, exp_avgs, exp_avg_sqs, (), masks, lr=1e-3, step=1)


def _sgd_buffer_is_param():
    params, grads = _tensors(), _tensors()
    _sgd(params, grads, [params[0], torch.zeros(40)])


def _sgd_grad_is_param():
    params = _tensors()
    _sgd(params, [params[1].clone(), params[1]], [torch.zeros(40), torch.zeros(40)])


def _sgd_overlapping_views():
    flat = torch.randn(70)
    _sgd([flat[:40], flat[30:70]], _tensors(), [torch.zeros(40), torch.zeros(40)])


def _sgd_mask_in_buffer():
    params, grads = _tensors(), _tensors()
    buffers = [torch.zeros(40), torch.zeros(40)]
    packed = buffers[1].view(torch.uint8)[:5]  # 5 bytes: 40 bits, one per weight
    _sgd(params, grads, buffers, [torch.full((5,), 255, dtype=torch.uint8), packed])


def _adam_moments_shared():
    params, grads = _tensors(), _tensors()
    moment = torch.zeros(40)
    _adam(params, grads, [moment, torch.zeros(40)], [moment, torch.zeros(40)])


def _truncate_grad_twice():
    grad = torch.randn(40)
    truncate_grads_([grad, grad], [torch.ones(40, dtype=torch.bool)] * 2)


def _truncate_param_is_grad():
    grads = _tensors()
    truncate_grads_(grads, [torch.ones(40, dtype=torch.bool)] * 2, params=[grads[0].clone(), grads[1]], l1=1e-4)


def _distances_runs_over_history():
    importance = torch.randn(64)
    backing = torch.zeros(64 * 4, dtype=torch.uint8)
    history = backing[:16].view(2, 8)  # 2 packed masks of 64 entries
    runs = backing.view(torch.int32)  # 64 int32 entries, the first 4 on the history's bytes
    mask_distances(importance, 0.0, history, static_runs=runs)


CASES = [
    ("sgd-buffer-is-param", _sgd_buffer_is_param, r"(params\[0\]|momentum_buffers\[0\]) must not share memory with "
                                                  r"(params\[0\]|momentum_buffers\[0\])"),
    ("sgd-grad-is-param", _sgd_grad_is_param, r"params\[1\] must not share memory with grads\[1\]"),
    ("sgd-params-overlap", _sgd_overlapping_views, r"params\[[01]\] must not share memory with params\[[01]\]"),
    ("sgd-mask-in-buffer", _sgd_mask_in_buffer, r"momentum_buffers\[1\] must not share memory with masks\[1\]"),
    ("adam-one-tensor-both-moments", _adam_moments_shared,
     r"exp_avg(_sq)?s\[0\] must not share memory with exp_avg(_sq)?s\[0\]"),
    ("truncate-grad-twice", _truncate_grad_twice, r"grads\[[01]\] must not share memory with grads\[[01]\]"),
    ("truncate-param-is-grad", _truncate_param_is_grad, r"grads\[1\] must not share memory with params\[1\]"),
    ("distances-runs-over-history", _distances_runs_over_history, "static_runs must not share memory with history"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("call", "message"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_aliased_in_place_arguments_are_refused(backend, call, message):
    with cpu_backend(backend), pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_disjoint_views_of_one_buffer_are_accepted_and_exact(backend):
    """Parameters, gradients and buffers as disjoint slices of flat buffers (as a flat-parameter
    optimizer holds them) step exactly as separate tensors do."""
    generator = torch.Generator().manual_seed(1)
    flat_params, flat_grads = torch.randn(100, generator=generator), torch.randn(100, generator=generator)
    flat_buffers = torch.zeros(100)
    parts = [slice(0, 37), slice(37, 100)]
    separate = [flat_params[part].clone() for part in parts]
    separate_buffers = [torch.zeros(part.stop - part.start) for part in parts]
    with cpu_backend(backend):
        _sgd([flat_params[part] for part in parts], [flat_grads[part] for part in parts],
             [flat_buffers[part] for part in parts])
        _sgd(separate, [flat_grads[part].clone() for part in parts], separate_buffers)
    for part, tensor, buffer in zip(parts, separate, separate_buffers):
        assert torch.equal(flat_params[part], tensor) and torch.equal(flat_buffers[part], buffer)
