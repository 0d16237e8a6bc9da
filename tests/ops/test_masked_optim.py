"""masked_sgd_ / masked_adam_: torch.optim's step on kept entries, exact zeros on pruned ones.

What is bit for bit (checked here): the reference equals torch.optim's for-loop step in every dtype;
the C++ kernel equals ``torch.optim.SGD`` (for-loop and foreach) in float32 and torch's fused CPU
``Adam``/``AdamW`` (``fused=True``) in float32 on every entry torch's fused kernel computes with
vectors (all but each tensor's last ``numel % 16`` entries, where torch's own scalar tail rounds the
second moment differently: within 1e-6 relative there). The Triton kernel (interpreter) is compared
with the reference to float32 rounding. Packed masks (one bit per entry, in the parameter's memory
order) give every backend's bool-mask result bit for bit.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import FLOAT_DTYPES, reference_run

from sparseticket.ops import cpu_backend, masked_adam_, masked_sgd_, pack_mask, pack_optimizer_mask

SHAPES = [(1,), (7,), (33,), (2047,), (2049,), (16, 3, 3, 3), (40, 70), (5003,)]
VECTOR_SHAPES = [(16,), (64, 3, 3, 3), (96, 48), (4096,)]  # numel % 16 == 0
SGD_OPTIONS = [
    {"lr": 0.05},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True},
    {"lr": 0.02, "momentum": 0.8, "dampening": 0.1, "weight_decay": 1e-3, "maximize": True},
    {"lr": 0.1, "weight_decay": 1e-2},
]
ADAM_OPTIONS = [
    {"lr": 1e-3},
    {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True, "maximize": True, "betas": (0.5, 0.99)},
    {"lr": 5e-3, "betas": (0.3, 0.9), "weight_decay": 0.01, "eps": 1e-6},
]
ADAM_CASES = list(itertools.product((torch.optim.Adam, torch.optim.AdamW), ADAM_OPTIONS))


def _tensors(shapes, generator, dtype=torch.float32, steps=5):
    params = [torch.randn(shape, generator=generator).to(dtype) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator).to(dtype) for shape in shapes] for _ in range(steps)]
    return params, grads


def _torch_run(cls, params, grads, options, **flags):
    """Parameters after ``len(grads)`` steps of a torch optimizer."""
    weights = [param.clone().requires_grad_() for param in params]
    optimizer = cls(weights, **options, **flags)
    for step_grads in grads:
        for weight, grad in zip(weights, step_grads):
            weight.grad = grad.clone()
        optimizer.step()
    return [weight.detach() for weight in weights]


def _sgd_run(params, grads, options, masks=()):
    """Parameters and buffers after ``len(grads)`` masked_sgd_ steps with torch.optim.SGD's options."""
    params = [param.clone() for param in params]
    momentum = options.get("momentum", 0.0)
    buffers = [torch.zeros_like(param) for param in params] if momentum else []
    for index, step_grads in enumerate(grads):
        masked_sgd_(params, step_grads, buffers, list(masks), lr=options["lr"], momentum=momentum,
                    weight_decay=options.get("weight_decay", 0.0), dampening=options.get("dampening", 0.0),
                    nesterov=options.get("nesterov", False), maximize=options.get("maximize", False),
                    first_step=index == 0)
    return params, buffers


def _adam_run(params, grads, options, decoupled, masks=()):
    """Parameters and moments after ``len(grads)`` masked_adam_ steps with torch's Adam(W) options."""
    params = [param.clone() for param in params]
    exp_avgs = [torch.zeros_like(param) for param in params]
    exp_avg_sqs = [torch.zeros_like(param) for param in params]
    maxima = [torch.zeros_like(param) for param in params] if options.get("amsgrad") else []
    beta1, beta2 = options.get("betas", (0.9, 0.999))
    default_decay = 0.01 if decoupled else 0.0
    for index, step_grads in enumerate(grads):
        masked_adam_(params, step_grads, exp_avgs, exp_avg_sqs, maxima, list(masks), lr=options["lr"],
                     beta1=beta1, beta2=beta2, eps=options.get("eps", 1e-8),
                     weight_decay=options.get("weight_decay", default_decay), step=index + 1, decoupled=decoupled,
                     maximize=options.get("maximize", False))
    return params, [exp_avgs, exp_avg_sqs, maxima]


def _assert_equal(actual, expected):
    """Bit for bit (NaN where torch gives NaN: float16 Adam with eps 1e-8 can)."""
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------ bit for bit against torch.optim
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("options", SGD_OPTIONS)
def test_reference_is_torch_sgd_bit_for_bit(generator, dtype, options):
    params, grads = _tensors(SHAPES, generator, dtype)
    expected = _torch_run(torch.optim.SGD, params, grads, options, foreach=False)
    _assert_equal(reference_run(_sgd_run, params, grads, options)[0], expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("cls", "options"), ADAM_CASES)
def test_reference_is_torch_adam_bit_for_bit(generator, dtype, cls, options):
    params, grads = _tensors(SHAPES, generator, dtype)
    expected = _torch_run(cls, params, grads, options, foreach=False)
    _assert_equal(reference_run(_adam_run, params, grads, options, cls is torch.optim.AdamW)[0], expected)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("options", SGD_OPTIONS)
def test_cpp_is_torch_sgd_bit_for_bit(generator, options, foreach):
    params, grads = _tensors(SHAPES, generator, steps=8)
    expected = _torch_run(torch.optim.SGD, params, grads, options, foreach=foreach)
    with cpu_backend("cpp"):
        _assert_equal(_sgd_run(params, grads, options)[0], expected)


@pytest.mark.parametrize(("cls", "options"), ADAM_CASES)
def test_cpp_is_torch_fused_adam_bit_for_bit(generator, cls, options):
    params, grads = _tensors(VECTOR_SHAPES, generator, steps=8)
    expected = _torch_run(cls, params, grads, options, fused=True)
    with cpu_backend("cpp"):
        _assert_equal(_adam_run(params, grads, options, cls is torch.optim.AdamW)[0], expected)


@pytest.mark.parametrize(("cls", "options"), ADAM_CASES)
def test_cpp_adam_on_odd_sizes_is_torch_fused_within_rounding(generator, cls, options):
    params, grads = _tensors(SHAPES, generator, steps=8)
    expected = _torch_run(cls, params, grads, options, fused=True)
    with cpu_backend("cpp"):
        actual = _adam_run(params, grads, options, cls is torch.optim.AdamW)[0]
    for got, want in zip(actual, expected):
        vectors = want.numel() - want.numel() % 16
        assert torch.equal(got.reshape(-1)[:vectors], want.reshape(-1)[:vectors])
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mask_kind", ["dense", "packed"])
def test_cpp_result_does_not_depend_on_the_thread_count(mask_kind, generator):
    """One or two threads: the same bits. Packed, two threads split the list inside a 32-entry word,
    where the entries around the split read their bit one at a time (and packed equals bool)."""
    params, grads = _tensors([(300_007,), (70_001,)], generator, steps=3)
    masks = _packed(_masks_for(params, generator), params) if mask_kind == "packed" else ()
    threads = torch.get_num_threads()
    results = []
    with cpu_backend("cpp"):
        for count in (1, 2):
            torch.set_num_threads(count)
            try:
                results.append(_adam_run(params, grads, ADAM_OPTIONS[1], True, masks)[0]
                               + _sgd_run(params, grads, SGD_OPTIONS[3], masks)[0])
            finally:
                torch.set_num_threads(threads)
        if mask_kind == "packed":
            bools = _sgd_run(params, grads, SGD_OPTIONS[3], _masks_for(params, generator.manual_seed(0)))[0]
            bits = _sgd_run(params, grads, SGD_OPTIONS[3],
                            _packed(_masks_for(params, generator.manual_seed(0)), params))[0]
            _assert_equal(bits, bools)
    _assert_equal(results[0], results[1])


# ------------------------------------------------------------ every backend against the reference
def _assert_close(actual, expected):
    for got, want in zip(actual, expected, strict=True):
        if got.dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-7)
        else:  # the float32 step rounded once, vs the reference's float32 step rounded once
            torch.testing.assert_close(got.float(), want.float(), rtol=torch.finfo(got.dtype).eps, atol=1e-6)


def _backend_case(generator, dtype):
    """(params, grads, masks, reference inputs): float32 runs 3 steps against the reference; float16 and
    bfloat16 run one step (they compute in float32 and round once) against the float32 reference step."""
    steps = 3 if dtype == torch.float32 else 1
    params, grads = _tensors(SHAPES, generator, dtype, steps=steps)
    masks = [torch.rand(param.shape, generator=generator) > 0.3 for param in params]
    upcast = ([param.float() for param in params], [[grad.float() for grad in step] for step in grads])
    return params, grads, masks, upcast


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("options", SGD_OPTIONS[1:4])
def test_sgd_backends_match_reference_with_masks(backend, generator, dtype, options):
    params, grads, masks, (params32, grads32) = _backend_case(generator, dtype)
    actual = _sgd_run(params, grads, options, masks)
    expected = reference_run(_sgd_run, params32, grads32, options, masks)
    _assert_close(actual[0] + actual[1], [tensor.to(dtype) for tensor in expected[0] + expected[1]])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("decoupled", "options"), list(itertools.product((False, True), ADAM_OPTIONS)))
def test_adam_backends_match_reference_with_masks(backend, generator, dtype, decoupled, options):
    params, grads, masks, (params32, grads32) = _backend_case(generator, dtype)
    actual, actual_state = _adam_run(params, grads, options, decoupled, masks)
    expected, expected_state = reference_run(_adam_run, params32, grads32, options, decoupled, masks)
    _assert_close(actual + sum(actual_state, []), [tensor.to(dtype) for tensor in expected + sum(expected_state, [])])


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_pruned_entries_are_exactly_zero_whatever_the_gradient(backend, generator, kind):
    params, grads = _tensors(SHAPES, generator, steps=3)
    masks = [torch.rand(param.shape, generator=generator) > 0.5 for param in params]
    for step_grads in grads:
        for grad, mask in zip(step_grads, masks):
            pruned = grad[~mask]
            pruned[::3], pruned[1::3] = float("nan"), float("inf")
            grad[~mask] = pruned
    if kind == "sgd":
        result, state = _sgd_run(params, grads, SGD_OPTIONS[2], masks)
        state = [state]
    else:
        result, state = _adam_run(params, grads, ADAM_OPTIONS[1], True, masks)
    for tensors in [result, *[entry for entry in state if entry]]:
        for tensor, mask in zip(tensors, masks):
            assert torch.equal(tensor[~mask], torch.zeros_like(tensor[~mask]))
            assert tensor[mask].isfinite().all()


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_kept_entries_are_the_dense_step(backend, generator, kind):
    """A mask changes nothing on the entries it keeps (the pruned ones start at 0, as after pruning)."""
    params, grads = _tensors(SHAPES, generator, steps=3)
    masks = [torch.rand(param.shape, generator=generator) > 0.4 for param in params]
    params = [param * mask for param, mask in zip(params, masks)]
    if kind == "sgd":
        masked, dense = _sgd_run(params, grads, SGD_OPTIONS[2], masks)[0], _sgd_run(params, grads, SGD_OPTIONS[2])[0]
    else:
        masked = _adam_run(params, grads, ADAM_OPTIONS[2], True, masks)[0]
        dense = _adam_run(params, grads, ADAM_OPTIONS[2], True)[0]
    for got, want, mask in zip(masked, dense, masks):
        assert torch.equal(got[mask], want[mask])


def test_channels_last_parameters(backend, generator):
    params = [torch.randn(8, 4, 3, 3, generator=generator).to(memory_format=torch.channels_last)]
    grads = [[torch.randn(8, 4, 3, 3, generator=generator).to(memory_format=torch.channels_last)] for _ in range(2)]
    masks = [(torch.rand(8, 4, 3, 3, generator=generator) > 0.5).to(memory_format=torch.channels_last)]
    actual = _sgd_run(params, grads, SGD_OPTIONS[2], masks)[0]
    contiguous = _sgd_run([param.contiguous() for param in params], [[grad.contiguous() for grad in step]
                                                                     for step in grads], SGD_OPTIONS[2],
                          [mask.contiguous() for mask in masks])[0]
    assert actual[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(actual[0], contiguous[0], rtol=2e-6, atol=1e-7)


def test_empty_lists_and_empty_tensors(backend, generator):
    masked_sgd_([], [], [], [], lr=0.1, momentum=0.9)  # nothing to do, no error
    masked_adam_([], [], [], [], lr=0.1, step=1)
    params, grads = _tensors([(0,), (37,), (0, 4)], generator, steps=2)
    actual = _adam_run(params, grads, ADAM_OPTIONS[1], True)[0]
    expected = reference_run(_adam_run, params, grads, ADAM_OPTIONS[1], True)[0]
    assert [tuple(tensor.shape) for tensor in actual] == [(0,), (37,), (0, 4)]
    _assert_close(actual, expected)


# ------------------------------------------------------------ bad input
def _sgd_args(**changes):
    param = torch.randn(5)
    args = {"params": [param], "grads": [torch.randn(5)], "momentum_buffers": [torch.zeros(5)],
            "masks": [torch.ones(5, dtype=torch.bool)], "lr": 0.1, "momentum": 0.9}
    args.update(changes)
    return args


@pytest.mark.parametrize(("changes", "error", "message"), [
    ({"grads": []}, ValueError, "grads must have one tensor per parameter"),
    ({"grads": [torch.randn(4)]}, ValueError, r"grads\[0\] must have the shape of params\[0\]"),
    ({"grads": [torch.randn(5, dtype=torch.float64)]}, TypeError, r"grads\[0\] must be float32"),
    ({"momentum_buffers": []}, ValueError, "momentum_buffers must have one tensor per parameter"),
    ({"masks": [torch.ones(5)]}, TypeError, r"masks\[0\] must be bool"),
    ({"masks": [torch.ones(4, dtype=torch.bool)]}, ValueError, r"masks\[0\] must have the shape"),
    ({"params": [torch.randn(5, dtype=torch.float64)]}, TypeError, r"params\[0\] must be float32/float16/bfloat16"),
    ({"params": [torch.randn(10)[::2]]}, ValueError, r"params\[0\] must be contiguous or channels_last"),
    ({"momentum_buffers": [torch.zeros(10)[::2]]}, ValueError, r"momentum_buffers\[0\] must be laid out like"),
    ({"lr": float("nan")}, ValueError, "lr must be finite"),
    ({"nesterov": True, "dampening": 0.5}, ValueError, "nesterov needs momentum > 0 and dampening 0"),
    ({"momentum": 0.0}, ValueError, "momentum_buffers must be empty when momentum is 0"),
])
@pytest.mark.parametrize("backend_name", ["cpp", "triton", "reference"])
def test_bad_sgd_input_names_the_argument(backend_name, changes, error, message):
    with cpu_backend(backend_name), pytest.raises(error, match=message):
        masked_sgd_(**_sgd_args(**changes))


@pytest.mark.parametrize(("changes", "message"), [
    ({"beta1": 1.0}, r"beta1 must be in \[0, 1\)"),
    ({"step": 0}, "step must be >= 1"),
    ({"eps": -1.0}, "eps and weight_decay must be >= 0"),
])
@pytest.mark.parametrize("backend_name", ["cpp", "reference"])
def test_bad_adam_input_names_the_argument(backend_name, changes, message):
    param = torch.randn(5)
    args = {"lr": 0.1, "step": 1, **changes}
    with cpu_backend(backend_name), pytest.raises(ValueError, match=message):
        masked_adam_([param], [torch.randn(5)], [torch.zeros(5)], [torch.zeros(5)], **args)


def test_op_called_directly_checks_too():
    with pytest.raises(ValueError, match="grads must have one tensor per parameter"):
        torch.ops.sparseticket.masked_sgd_([torch.randn(3)], [], [], [], 0.1, 0.0, 0.0, 0.0, False, False, False)


# ------------------------------------------------------------ packed masks (one bit per entry)
# numel < 8, not a multiple of 8 (the packed mask ends mid-byte), multiples of 8 and of 32, and tensors
# large enough that the C++ kernel's threads split them inside a 32-entry word
PACKED_SHAPES = [(1,), (5,), (8,), (13,), (31, 3), (32,), (16, 3, 3, 3), (40, 70), (5003,), (0,), (2, 0, 3)]
BACKENDS = ["cpp", "triton", "reference"]


def _channels_last_case(generator, dtype=torch.float32, steps=3):
    """Conv weights in channels_last (one 1x1, whose layouts coincide) beside row-major tensors."""
    shapes = [(8, 4, 3, 3), (6, 5, 1, 1), (37,), (3, 7, 2, 5)]
    params, grads = _tensors(shapes, generator, dtype, steps)
    last = [0, 1, 3]
    for index in last:
        params[index] = params[index].to(memory_format=torch.channels_last)
        for step in grads:
            step[index] = step[index].to(memory_format=torch.channels_last)
    return params, grads


def _masks_for(params, generator, density=0.6):
    return [torch.rand(param.shape, generator=generator) < density for param in params]


def _packed(masks, params):
    return [pack_optimizer_mask(mask, param) for mask, param in zip(masks, params)]


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("options", SGD_OPTIONS)
def test_packed_sgd_is_the_bool_mask_step_bit_for_bit(generator, backend_name, dtype, options):
    params, grads = _tensors(PACKED_SHAPES, generator, dtype, steps=3)
    masks = _masks_for(params, generator)
    with cpu_backend(backend_name):
        with_bools = _sgd_run(params, grads, options, masks)
        with_bits = _sgd_run(params, grads, options, _packed(masks, params))
    _assert_equal(with_bits[0] + with_bits[1], with_bools[0] + with_bools[1])


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("decoupled", "options"), list(itertools.product((False, True), ADAM_OPTIONS)))
def test_packed_adam_is_the_bool_mask_step_bit_for_bit(generator, backend_name, dtype, decoupled, options):
    params, grads = _tensors(PACKED_SHAPES, generator, dtype, steps=3)
    masks = _masks_for(params, generator)
    with cpu_backend(backend_name):
        with_bools, bool_state = _adam_run(params, grads, options, decoupled, masks)
        with_bits, bit_state = _adam_run(params, grads, options, decoupled, _packed(masks, params))
    _assert_equal(with_bits + sum(bit_state, []), with_bools + sum(bool_state, []))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_packed_masks_of_channels_last_parameters_follow_their_memory_order(generator, backend_name, kind):
    """Bit k of a channels_last parameter's packed mask is its k-th entry in memory (NHWC), as
    ``pack_optimizer_mask`` packs it: the result is the bool mask's, and the row-major copy's."""
    params, grads = _channels_last_case(generator)
    masks = _masks_for(params, generator)
    assert torch.equal(pack_optimizer_mask(masks[0], params[0]), pack_mask(masks[0].permute(0, 2, 3, 1)))
    assert not torch.equal(pack_optimizer_mask(masks[0], params[0]), pack_mask(masks[0]))
    rows = ([param.contiguous() for param in params], [[grad.contiguous() for grad in step] for step in grads])
    with cpu_backend(backend_name):
        if kind == "sgd":
            runs = [_sgd_run(params, grads, SGD_OPTIONS[2], masks), _sgd_run(params, grads, SGD_OPTIONS[2],
                                                                               _packed(masks, params)),
                    _sgd_run(*rows, SGD_OPTIONS[2], _packed(masks, rows[0]))]
            results = [run[0] + run[1] for run in runs]
        else:
            runs = [_adam_run(params, grads, ADAM_OPTIONS[1], True, masks),
                    _adam_run(params, grads, ADAM_OPTIONS[1], True, _packed(masks, params)),
                    _adam_run(*rows, ADAM_OPTIONS[1], True, _packed(masks, rows[0]))]
            results = [run[0] + sum(run[1], []) for run in runs]
    assert results[1][0].is_contiguous(memory_format=torch.channels_last)
    _assert_equal(results[1], results[0])
    _assert_equal(results[2], results[0])  # the same values, in the other layout


@pytest.mark.parametrize("options", SGD_OPTIONS)
def test_cpp_packed_sgd_is_torch_sgd_on_the_kept_entries(generator, options):
    """Kept entries: torch.optim.SGD's bits (the step of an entry reads nothing else); all kept: all of them."""
    params, grads = _tensors(PACKED_SHAPES, generator, steps=4)
    masks = _masks_for(params, generator)
    expected = _torch_run(torch.optim.SGD, params, grads, options, foreach=True)
    every = [torch.ones_like(param, dtype=torch.bool) for param in params]
    with cpu_backend("cpp"):
        masked = _sgd_run(params, grads, options, _packed(masks, params))[0]
        dense = _sgd_run(params, grads, options, _packed(every, params))[0]
    _assert_equal(dense, expected)
    for got, want, mask in zip(masked, expected, masks):
        assert torch.equal(got[mask], want[mask])
        assert not got[~mask].any()


@pytest.mark.parametrize(("cls", "options"), ADAM_CASES)
def test_cpp_packed_adam_is_torch_fused_adam_on_the_kept_entries(generator, cls, options):
    params, grads = _tensors(VECTOR_SHAPES, generator, steps=4)
    masks = _masks_for(params, generator)
    expected = _torch_run(cls, params, grads, options, fused=True)
    every = [torch.ones_like(param, dtype=torch.bool) for param in params]
    with cpu_backend("cpp"):
        masked = _adam_run(params, grads, options, cls is torch.optim.AdamW, _packed(masks, params))[0]
        dense = _adam_run(params, grads, options, cls is torch.optim.AdamW, _packed(every, params))[0]
    _assert_equal(dense, expected)
    for got, want, mask in zip(masked, expected, masks):
        assert torch.equal(got[mask], want[mask])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_reference_packed_step_is_torch_for_loop_on_the_kept_entries(generator, dtype, kind):
    params, grads = _tensors(PACKED_SHAPES, generator, dtype, steps=3)
    masks = _masks_for(params, generator)
    with cpu_backend("reference"):
        if kind == "sgd":
            expected = _torch_run(torch.optim.SGD, params, grads, SGD_OPTIONS[3], foreach=False)
            masked = _sgd_run(params, grads, SGD_OPTIONS[3], _packed(masks, params))[0]
        else:
            expected = _torch_run(torch.optim.AdamW, params, grads, ADAM_OPTIONS[2], foreach=False)
            masked = _adam_run(params, grads, ADAM_OPTIONS[2], True, _packed(masks, params))[0]
    for got, want, mask in zip(masked, expected, masks):
        torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_packed_padding_bits_are_ignored(generator, backend_name):
    """The bits past the last entry of a packed mask that ends mid-byte are never read as entries."""
    params, grads = _tensors([(13,), (5,), (37,)], generator, steps=2)
    masks = _masks_for(params, generator)
    packed = _packed(masks, params)
    padded = [mask.clone() for mask in packed]
    for mask, param in zip(padded, params):
        mask[-1] |= (0xFF << (param.numel() % 8)) & 0xFF  # set every padding bit
    with cpu_backend(backend_name):
        clean = _sgd_run(params, grads, SGD_OPTIONS[2], packed)
        dirty = _sgd_run(params, grads, SGD_OPTIONS[2], padded)
    _assert_equal(dirty[0] + dirty[1], clean[0] + clean[1])


def test_pack_optimizer_mask_checks_its_arguments():
    param = torch.randn(4, 3)
    with pytest.raises(TypeError, match="mask must be bool"):
        pack_optimizer_mask(torch.ones(4, 3), param)
    with pytest.raises(ValueError, match=r"mask must have the shape of param \(4, 3\)"):
        pack_optimizer_mask(torch.ones(12, dtype=torch.bool), param)
    with pytest.raises(ValueError, match="param must be contiguous or channels_last"):
        pack_optimizer_mask(torch.ones(3, 4, dtype=torch.bool), param.t())


@pytest.mark.parametrize(("masks", "error", "message"), [
    ([torch.zeros(2, dtype=torch.uint8), torch.zeros(1, dtype=torch.uint8)], ValueError,
     r"masks\[0\] \(packed\) must be 1-D with ceil\(numel / 8\) = 3 bytes for params\[0\] \(17 entries\), "
     r"got shape \(2,\)"),
    ([torch.zeros(1, 3, dtype=torch.uint8), torch.zeros(1, dtype=torch.uint8)], ValueError,
     r"masks\[0\] \(packed\) must be 1-D with ceil\(numel / 8\) = 3 bytes"),
    ([torch.zeros(3, dtype=torch.uint8), torch.zeros(2, dtype=torch.uint8)], ValueError,
     r"masks\[1\] \(packed\) must be 1-D with ceil\(numel / 8\) = 1 bytes for params\[1\] \(5 entries\)"),
    ([torch.zeros(3, dtype=torch.int8), torch.zeros(1, dtype=torch.uint8)], TypeError,
     r"masks\[0\] must be bool.*uint8.*got int8 on cpu"),
    ([torch.zeros(3, dtype=torch.uint8), torch.zeros(1, dtype=torch.uint8, device="meta")], TypeError,
     r"masks\[1\] must be bool.*uint8.* on cpu, got uint8 on meta"),
    ([torch.zeros(3, dtype=torch.uint8), torch.ones(5, dtype=torch.bool)], ValueError,
     r"masks\[1\] is bool but masks\[0\] is uint8: the masks must be all bool or all packed"),
    ([torch.ones(17, dtype=torch.bool), torch.zeros(1, dtype=torch.uint8)], ValueError,
     r"masks\[1\] is uint8 but masks\[0\] is bool"),
])
@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_bad_packed_masks_name_the_argument(backend_name, kind, masks, error, message):
    params = [torch.randn(17), torch.randn(5)]
    grads = [torch.randn(17), torch.randn(5)]
    with cpu_backend(backend_name), pytest.raises(error, match=message):
        if kind == "sgd":
            masked_sgd_(params, grads, [], masks, lr=0.1)
        else:
            masked_adam_(params, grads, [torch.zeros(17), torch.zeros(5)], [torch.zeros(17), torch.zeros(5)], [],
                         masks, lr=0.1, step=1)


def test_packed_masks_under_torch_compile(generator):
    """The contract also runs on fake tensors: a compiled step with packed masks is the eager one."""
    params, grads = _tensors([(37,), (8, 3, 3, 3)], generator, steps=1)
    packed = _packed(_masks_for(params, generator), params)
    eager = [param.clone() for param in params]
    compiled = [param.clone() for param in params]

    def step(weights, step_grads, masks):
        masked_sgd_(weights, step_grads, [], masks, lr=0.1, weight_decay=1e-2)

    step(eager, grads[0], packed)
    torch.compile(step, fullgraph=True)(compiled, grads[0], packed)
    _assert_equal(compiled, eager)
