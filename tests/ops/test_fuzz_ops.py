"""Property-based fuzzing of every op, public function and raw ``torch.ops.sparseticket`` form,
on the C++ kernels and the Triton kernels (interpreter).

Each drawn case is either valid, and then equals the plain-PyTorch reference (bitwise where the op
is exact, else within ``fuzz_inputs.assert_close``), or carries one fault (wrong dtype, device,
shape, list length, layout, a non-finite scalar, an out-of-range int, a Python-type mistake),
and then raises ``TypeError``/``ValueError`` naming the argument, leaving every in-place target
untouched. A Python-type mistake on a raw op is caught by PyTorch's schema check before ours:
a ``RuntimeError`` that names the argument. Never a crash, a hang or a silently wrong answer.
"""

from __future__ import annotations

import pytest
import torch
from fuzz_inputs import (
    FLOATS,
    FUZZ_SETTINGS,
    assert_close,
    float_dtypes,
    make_bool,
    make_float,
    maybe_strided,
    same_bits,
    shapes,
    sizes,
    small_sizes,
    strided_copy,
    values,
    wrong_dtype,
    wrong_shape,
)
from hypothesis import assume, given
from hypothesis import strategies as st

import sparseticket.ops as ops
from sparseticket import reference
from sparseticket.reference.kth import order_keys

RAW = torch.ops.sparseticket
ARGUMENT_ERRORS = (TypeError, ValueError)
seeds = st.integers(0, 2**31 - 1)
list_lengths = st.one_of(st.integers(0, 4), st.integers(0, 64))


@pytest.fixture(params=["public", "raw"])
def form(request) -> str:
    """Call the public function or the raw torch.ops.sparseticket op."""
    return request.param


def assert_rejected(call, name: str, untouched: list[torch.Tensor], errors=ARGUMENT_ERRORS) -> None:
    """``call()`` raises one of ``errors`` naming ``name``, and writes nothing."""
    before = [tensor.clone() for tensor in untouched if tensor.device.type == "cpu"]
    with pytest.raises(errors) as raised:
        call()
    assert name in str(raised.value), (name, str(raised.value))
    after = [tensor for tensor in untouched if tensor.device.type == "cpu"]
    assert all(same_bits(a, b) for a, b in zip(before, after)), "a rejected call wrote to its inputs"


def python_type_fault(form: str, name: str) -> tuple[tuple, str]:
    """Errors and message part for an argument of the wrong Python type."""
    if form == "raw":
        return (RuntimeError,), f"argument '{name}'"
    return (TypeError,), name


def pick(data, count: int) -> int:
    return data.draw(st.integers(0, count - 1))


# ------------------------------------------------------------------------------ truncate_grads_
@st.composite
def truncate_cases(draw):
    count = draw(list_lengths)
    dtype, param_dtype = draw(float_dtypes), draw(float_dtypes)
    grads, keep, params = [], [], []
    for _ in range(count):
        shape = draw(shapes(small=count > 8))
        grads.append(make_float(shape, dtype, draw(values())))
        mode = draw(st.sampled_from(["element", "channel", "flat"]))
        keep_shape = shape
        if shape and mode == "channel":
            keep_shape = shape[:1]
        elif shape and mode == "flat":
            keep_shape = (grads[-1].numel(),)
        keep.append(maybe_strided(make_bool(keep_shape, draw(seeds), draw(st.sampled_from([0.0, 0.5, 1.0]))),
                                  draw(st.booleans())))
        params.append(maybe_strided(make_float(shape, param_dtype, draw(values())), draw(st.booleans())))
    scale = draw(st.sampled_from([0.0, 0.003, 0.5, 1.0, -2.0, 1e-30]))
    l1 = draw(st.sampled_from([0.0, 1e-4, 1.0]))
    return grads, keep, params, scale, l1


def call_truncate(form, grads, keep, params, scale, l1):
    if form == "raw":
        return RAW.truncate_grads_(grads, keep, params if l1 != 0.0 else [], scale, l1)
    return ops.truncate_grads_(grads, keep, scale=scale, params=params if l1 != 0.0 else None, l1=l1)


TRUNCATE_FAULTS = ["grads dtype", "keep dtype", "params dtype", "grads device", "keep device", "keep shape",
                   "params shape", "keep length", "params length", "grads strided", "scale", "l1", "no params",
                   "python type"]


@FUZZ_SETTINGS
@given(data=st.data())
def test_truncate_grads_(backend, form, data):
    grads, keep, params, scale, l1 = data.draw(truncate_cases())
    fault = data.draw(st.sampled_from([None] * 4 + TRUNCATE_FAULTS))
    if fault is None:
        expected = [grad.clone() for grad in grads]
        reference.truncate_grads_(expected, [k.contiguous() for k in keep], [p.contiguous() for p in params],
                                  scale, l1)
        call_truncate(form, grads, keep, params, scale, l1)
        for got, want in zip(grads, expected):
            assert_close(got, want)
        return
    assume(grads or fault in ("scale", "l1", "python type"))  # the other faults need a tensor to act on
    i = pick(data, max(len(grads), 1))
    errors, name = ARGUMENT_ERRORS, None
    if fault in ("params dtype", "params shape", "params length") and l1 == 0.0:
        l1 = 1e-4  # params are read (and checked) only with an L1 term
    if fault == "grads dtype":
        grads[i], name = wrong_dtype(grads[i], data.draw(st.integers(0, 2))), "grads"
    elif fault == "keep dtype":
        keep[i], name = wrong_dtype(keep[i], data.draw(st.integers(0, 2))), f"keep[{i}]"
    elif fault == "params dtype":
        params[i], name = wrong_dtype(params[i], data.draw(st.integers(0, 2))), "params"
    elif fault == "grads device":
        assume(len(grads) >= 2)
        i = max(i, 1)
        grads[i], name = grads[i].to("meta"), f"grads[{i}]"
    elif fault == "keep device":
        keep[i], name = keep[i].to("meta"), f"keep[{i}]"
    elif fault == "keep shape":
        keep[i], name = torch.ones(grads[i].numel() + 1, 2, dtype=torch.bool), f"keep[{i}]"
    elif fault == "params shape":
        params[i], name = wrong_shape(params[i]), f"params[{i}]"
    elif fault == "keep length":
        keep, name = keep[:-1], "keep"
    elif fault == "params length":
        params, name = params[:-1], "params"
    elif fault == "grads strided":
        assume(grads[i].numel() >= 2)
        grads[i], name = strided_copy(grads[i]), f"grads[{i}]"
    elif fault == "scale":
        scale, name = data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf")])), "scale"
    elif fault == "l1":
        l1, name = data.draw(st.sampled_from([float("nan"), float("inf")])), "l1"
    elif fault == "no params":
        if form == "public":
            assert_rejected(lambda: ops.truncate_grads_(grads, keep, scale=scale, l1=1e-4), "params", grads)
        else:
            assert_rejected(lambda: RAW.truncate_grads_(grads, keep, [], scale, 1e-4), "params", grads)
        return
    elif fault == "python type":
        errors, name = python_type_fault(form, "grads")
        assert_rejected(lambda: call_truncate(form, grads[0] if grads else 3, keep, params, scale, l1), name,
                        grads, errors)
        return
    assert_rejected(lambda: call_truncate(form, grads, keep, params, scale, l1), name, grads, errors)


def test_truncation_plan_equals_truncate_grads_(backend):
    """The per-step plan, fuzzed lightly through the same cases."""

    @FUZZ_SETTINGS
    @given(case=truncate_cases())
    def run(case):
        grads, keep, params, scale, l1 = case
        keep = [mask.contiguous() for mask in keep]
        owners = [torch.zeros_like(grad).requires_grad_(True) for grad in grads]
        for owner, grad in zip(owners, grads):
            owner.grad = grad.clone()
        sign_params = [param.contiguous().to(grads[0].dtype) for param in params] if grads else []
        plan = ops.TruncationPlan(owners, keep, scale=scale, l1=l1, l1_params=sign_params if l1 else None)
        plan()
        ops.truncate_grads_(grads, keep, scale=scale, params=sign_params if l1 else None, l1=l1)
        for owner, grad in zip(owners, grads):
            assert same_bits(owner.grad, grad)

    run()


# ------------------------------------------------------------------------------ pack / unpack
@FUZZ_SETTINGS
@given(data=st.data())
def test_pack_mask(backend, form, data):
    shape = data.draw(shapes())
    mask = maybe_strided(make_bool(shape, data.draw(seeds), data.draw(st.sampled_from([0.0, 0.3, 1.0]))),
                         data.draw(st.booleans()))
    pack = RAW.pack_mask if form == "raw" else ops.pack_mask
    fault = data.draw(st.sampled_from([None, None, "dtype", "python type"]))
    if fault is None:
        assert_close(pack(mask), reference.pack_mask(mask.contiguous()), exact=True)
    elif fault == "dtype":
        assert_rejected(lambda: pack(wrong_dtype(mask, data.draw(st.integers(0, 2)))), "mask", [])
    else:
        errors, name = python_type_fault(form, "mask")
        assert_rejected(lambda: pack(mask.tolist()), name, [], errors)


@FUZZ_SETTINGS
@given(data=st.data())
def test_unpack_mask(backend, form, data):
    count = data.draw(sizes)
    packed = torch.randint(0, 256, ((count + 7) // 8,), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(data.draw(seeds)))
    packed = maybe_strided(packed, data.draw(st.booleans()))
    unpack = RAW.unpack_mask if form == "raw" else ops.unpack_mask
    fault = data.draw(st.sampled_from([None, None, "size", "count", "dtype", "dims"]))
    if fault is None:
        assert_close(unpack(packed, count), reference.unpack_mask(packed.contiguous(), count), exact=True)
    elif fault == "size":
        assert_rejected(lambda: unpack(wrong_shape(packed), count), "packed", [])
    elif fault == "count":
        bad = data.draw(st.sampled_from([-1, -(2**40), count + 8 + 8 * data.draw(st.integers(0, 3))]))
        assert_rejected(lambda: unpack(packed, bad), "n" if form == "public" and bad < 0 else
                        ("count" if bad < 0 else "packed"), [])
    elif fault == "dtype":
        assert_rejected(lambda: unpack(wrong_dtype(packed, data.draw(st.integers(0, 2))), count), "packed", [])
    else:
        assert_rejected(lambda: unpack(packed.reshape(1, -1), count), "packed", [])


# ------------------------------------------------------------------------------ mask_distances
@FUZZ_SETTINGS
@given(data=st.data())
def test_mask_distances(backend, form, data):
    shape = data.draw(shapes())
    importance = maybe_strided(make_float(shape, data.draw(float_dtypes), data.draw(values())),
                               data.draw(st.booleans()))
    count = importance.numel()
    generator = torch.Generator().manual_seed(data.draw(seeds))
    history = torch.randint(0, 256, (data.draw(st.integers(0, 6)), (count + 7) // 8), dtype=torch.uint8,
                            generator=generator)
    history = maybe_strided(history, data.draw(st.booleans()))
    runs = torch.randint(0, 50, (count,), dtype=torch.int32, generator=generator) if data.draw(st.booleans()) else None
    threshold_value = data.draw(st.sampled_from([0.0, 0.5, -1.0, 1e30, 1e-40]))
    threshold_dtype = data.draw(float_dtypes)
    threshold = torch.tensor(threshold_value, dtype=threshold_dtype)
    if form == "public" and data.draw(st.booleans()):
        threshold = threshold_value  # a Python number

    def call(importance=importance, threshold=threshold, history=history, runs=runs):
        if form == "raw":
            return RAW.mask_distances(importance, threshold, history, runs)
        return ops.mask_distances(importance, threshold, history, static_runs=runs)

    fault = data.draw(st.sampled_from([None, None, None, "importance dtype", "threshold size", "threshold nan",
                                       "history bytes", "history dtype", "history dims", "history device",
                                       "runs dtype", "runs size", "runs strided"]))
    untouched = [runs] if runs is not None else []
    if fault is None:
        threshold_tensor = torch.tensor(threshold_value, dtype=threshold_dtype)
        if not isinstance(threshold, torch.Tensor):
            threshold_tensor = torch.tensor(threshold_value, dtype=torch.float32)
        expected_runs = runs.clone() if runs is not None else None
        want_packed, want_counts = reference.mask_distances(importance.contiguous(), threshold_tensor,
                                                            history.contiguous(), expected_runs)
        packed, second = call()
        assert_close(packed, want_packed, exact=True)
        if form == "raw":
            assert_close(second, want_counts, exact=True)
        else:
            assert_close(second, want_counts.to(torch.float32) / max(count, 1), exact=True)
        if runs is not None:
            assert_close(runs, expected_runs, exact=True)
    elif fault == "importance dtype":
        assert_rejected(lambda: call(importance=wrong_dtype(importance, data.draw(st.integers(0, 2)))),
                        "importance", untouched)
    elif fault == "threshold size":
        assert_rejected(lambda: call(threshold=torch.zeros(2)), "threshold", untouched)
    elif fault == "threshold nan":
        assume(form == "public")  # a NaN threshold tensor is a value for the raw op: nothing is > NaN
        assert_rejected(lambda: call(threshold=float("nan")), "threshold", untouched)
    elif fault == "history bytes":
        bad = torch.zeros(history.shape[0], history.shape[1] + 1, dtype=torch.uint8)
        assert_rejected(lambda: call(history=bad), "history", untouched)
    elif fault == "history dtype":
        assert_rejected(lambda: call(history=wrong_dtype(history, data.draw(st.integers(0, 2)))), "history",
                        untouched)
    elif fault == "history dims":
        assert_rejected(lambda: call(history=history.reshape(-1)), "history", untouched)
    elif fault == "history device":
        assert_rejected(lambda: call(history=history.to("meta")), "history", untouched)
    elif fault == "runs dtype":
        assert_rejected(lambda: call(runs=torch.zeros(count, dtype=torch.int64)), "static_runs", untouched)
    elif fault == "runs size":
        assert_rejected(lambda: call(runs=torch.zeros(count + 1, dtype=torch.int32)), "static_runs", untouched)
    else:
        assume(count >= 2)
        bad = strided_copy(torch.zeros(count, dtype=torch.int32))
        assert_rejected(lambda: call(runs=bad), "static_runs", [bad])


# ------------------------------------------------------------------------------ kth_value / digit_histogram
@st.composite
def value_lists(draw):
    count = draw(st.integers(1, 64) if draw(st.booleans()) else st.integers(1, 4))
    dtype = draw(float_dtypes)
    return [maybe_strided(make_float(draw(shapes(small=count > 8)), dtype, draw(values())), draw(st.booleans()))
            for _ in range(count)]


def list_fault(data, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], str] | None:
    """One bad tensor in a value list: another dtype, a non-float, another device; or no tensor."""
    fault = data.draw(st.sampled_from(["mixed dtype", "non-float", "device", "empty list"]))
    tensors = list(tensors)
    if fault == "empty list":
        return [], "values"
    i = pick(data, len(tensors))
    if fault == "mixed dtype":
        if len(tensors) < 2:
            return None
        i = max(i, 1)
        other = next(d for d in (torch.float16, torch.float32) if d != tensors[0].dtype)
        tensors[i] = tensors[i].to(other)
        return tensors, "values must all have one dtype"
    if fault == "non-float":
        tensors[i] = tensors[i].to(data.draw(st.sampled_from([torch.float64, torch.int64, torch.bool])))
        return tensors, "values"
    if len(tensors) < 2:
        return None
    i = max(i, 1)
    tensors[i] = tensors[i].to("meta")
    return tensors, f"values[{i}]"


@FUZZ_SETTINGS
@given(data=st.data())
def test_kth_value(backend, form, data):
    tensors = data.draw(value_lists())
    total = sum(tensor.numel() for tensor in tensors)
    kth = RAW.kth_value if form == "raw" else ops.kth_value
    fault = data.draw(st.sampled_from([None, None, None, "k", "list", "python type"]))
    if fault is None:
        if total == 0:
            assert_rejected(lambda: kth(tensors, 0), "values", [])
            return
        k = data.draw(st.one_of(st.sampled_from([0, total - 1]), st.integers(0, total - 1)))
        expected = reference.kth_value([t.contiguous() for t in tensors], k)
        assert_close(kth(tensors, k), expected, exact=True)
    elif fault == "k":
        bad = data.draw(st.sampled_from([-1, total, total + 1, 2**40, 2**62, -(2**62)]))
        assert_rejected(lambda: kth(tensors, bad), "k" if total else "values", [])
    elif fault == "list":
        broken = list_fault(data, tensors)
        assume(broken is not None)
        assert_rejected(lambda: kth(broken[0], 0), broken[1], [])
    else:
        assume(total > 0)  # with no element, the public function refuses the values first
        errors, name = python_type_fault(form, "k")
        assert_rejected(lambda: kth(tensors, 0.5), "k" if form == "public" else name, [], errors)


@FUZZ_SETTINGS
@given(data=st.data())
def test_digit_histogram(backend, form, data):
    tensors = data.draw(value_lists())
    shift = data.draw(st.sampled_from(ops.kth.DIGIT_SHIFTS))
    keys = order_keys(torch.cat([t.reshape(-1).float() for t in tensors]))
    if shift < 24 and keys.numel() and data.draw(st.booleans()):
        prefix = int(keys[pick(data, keys.numel())]) >> (shift + 8)  # a prefix that occurs
    else:
        prefix = data.draw(st.integers(0, (1 << (24 - shift)) - 1))
    histogram = RAW.digit_histogram if form == "raw" else ops.digit_histogram
    fault = data.draw(st.sampled_from([None, None, None, "shift", "prefix", "list"]))
    if fault is None:
        expected = reference.digit_histogram([t.contiguous() for t in tensors], shift, prefix)
        assert_close(histogram(tensors, shift, prefix), expected, exact=True)
    elif fault == "shift":
        bad = data.draw(st.sampled_from([1, 4, 32, -8, 2**40]))
        assert_rejected(lambda: histogram(tensors, bad, 0), "shift", [])
    elif fault == "prefix":
        bad = data.draw(st.sampled_from([-1, 1 << (24 - shift), 2**62]))
        assert_rejected(lambda: histogram(tensors, shift, bad), "prefix", [])
    else:
        broken = list_fault(data, tensors)
        assume(broken is not None)
        if form == "public" and not broken[0]:  # the public function counts nothing in an empty list
            assert torch.equal(histogram(broken[0], shift, 0), torch.zeros(256, dtype=torch.int64))
        else:
            assert_rejected(lambda: histogram(broken[0], shift, 0), broken[1], [])


# ------------------------------------------------------------------------------ gemminer
@st.composite
def mask_cases(draw):
    shape = draw(shapes())
    weight = maybe_strided(make_float(shape, draw(float_dtypes), draw(values())), draw(st.booleans()))
    scores = maybe_strided(make_float(shape, draw(float_dtypes), draw(values(in_unit=True))), draw(st.booleans()))
    flags = maybe_strided(make_bool(shape, draw(seeds), draw(st.sampled_from([0.0, 0.8, 1.0]))), draw(st.booleans()))
    return weight, scores, flags


@FUZZ_SETTINGS
@given(data=st.data())
def test_gemminer_mask_forward_backward(backend, form, data):
    weight, scores, flags = data.draw(mask_cases())
    upstream = make_float(tuple(weight.shape), weight.dtype, data.draw(values()))
    need_weight, need_scores = data.draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    fault = data.draw(st.sampled_from([None, None, None, "scores shape", "flags shape", "flags dtype",
                                       "weight dtype", "scores device", "grad shape", "python type"]))
    if fault is None:
        want = reference.gemminer_mask(weight.contiguous(), scores.contiguous(), flags.contiguous())
        want_grads = reference.gemminer_mask_backward(upstream, weight.contiguous(), scores.contiguous(),
                                                      flags.contiguous(), need_weight, need_scores)
        if form == "raw":
            assert_close(RAW.gemminer_mask(weight, scores, flags), want, exact=True)
            got_grads = RAW.gemminer_mask_backward(upstream, weight, scores, flags, need_weight, need_scores)
            for got, expected in zip(got_grads, want_grads):
                assert_close(got, expected, exact=True)
            return
        leaf_weight = weight.detach().clone().requires_grad_(need_weight)
        leaf_scores = scores.detach().clone().requires_grad_(need_scores)
        out = ops.gemminer_mask(leaf_weight, leaf_scores, flags)
        assert_close(out.detach(), want, exact=True)
        out.backward(upstream)
        if need_weight:
            assert_close(leaf_weight.grad, want_grads[0], exact=True)
        if need_scores:
            assert_close(leaf_scores.grad, want_grads[1], exact=True)
        return
    forward = RAW.gemminer_mask if form == "raw" else ops.gemminer_mask
    if fault == "scores shape":
        assert_rejected(lambda: forward(weight, wrong_shape(scores), flags), "scores", [])
    elif fault == "flags shape":
        assert_rejected(lambda: forward(weight, scores, wrong_shape(flags)), "flags", [])
    elif fault == "flags dtype":
        assert_rejected(lambda: forward(weight, scores, wrong_dtype(flags, data.draw(st.integers(0, 2)))), "flags",
                        [])
    elif fault == "weight dtype":
        assert_rejected(lambda: forward(wrong_dtype(weight, data.draw(st.integers(0, 2))), scores, flags), "weight",
                        [])
    elif fault == "scores device":
        assert_rejected(lambda: forward(weight, scores.to("meta"), flags), "scores", [])
    elif fault == "grad shape":
        assert_rejected(lambda: RAW.gemminer_mask_backward(wrong_shape(upstream), weight, scores, flags, True, True),
                        "weight", [])
    else:
        errors, name = python_type_fault(form, "weight")
        assert_rejected(lambda: forward(weight.tolist(), scores, flags), name, [], errors)


@FUZZ_SETTINGS
@given(data=st.data())
def test_gemminer_masked_weight_with_slots(backend, data):
    """The public op with slots (C++ autograd op, or the autograd.Function over the Triton
    kernels): gemminer_mask's values and gradients, the scores gradient in the slot."""
    weight, scores, flags = data.draw(mask_cases())
    scores = scores.contiguous()  # the slot path reads scores flat
    upstream = make_float(tuple(weight.shape), weight.dtype, data.draw(values()))
    need_weight, need_scores = data.draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    slots = ops.MaskedWeightSlots(torch.zeros_like(scores), torch.zeros(1, dtype=torch.uint8))
    fault = data.draw(st.sampled_from([None, None, None, "slots type", "grad_slot shape", "weight dtype",
                                       "flags shape", "scores strided", "python type"]))
    if fault is None:
        want = reference.gemminer_mask(weight.contiguous(), scores, flags.contiguous())
        want_grads = reference.gemminer_mask_backward(upstream, weight.contiguous(), scores, flags.contiguous(),
                                                      need_weight, need_scores)
        leaf_weight = weight.detach().clone().requires_grad_(need_weight)
        leaf_scores = scores.detach().clone().requires_grad_(need_scores)
        out = ops.gemminer_masked_weight(leaf_weight, leaf_scores, flags, slots=slots)
        assert_close(out.detach(), want, exact=True)
        out.backward(upstream)
        if need_weight:
            assert_close(leaf_weight.grad, want_grads[0], exact=True)
        if need_scores:
            assert_close(leaf_scores.grad, want_grads[1], exact=True)
            assert int(slots.claimed[0]) == 1 and same_bits(slots.grad_slot, leaf_scores.grad)
        else:
            assert int(slots.claimed[0]) == 0
        return
    untouched = [slots.grad_slot, slots.claimed]

    def call(weight=weight, scores=scores, flags=flags, slots=slots):
        return ops.gemminer_masked_weight(weight, scores, flags, slots=slots)

    if fault == "slots type":
        assert_rejected(lambda: call(slots=slots.grad_slot), "slots", untouched)
    elif fault == "grad_slot shape":
        wrong = ops.MaskedWeightSlots(wrong_shape(slots.grad_slot), slots.claimed)
        assert_rejected(lambda: call(slots=wrong), "grad_slot", [wrong.grad_slot, slots.claimed])
    elif fault == "weight dtype":
        assert_rejected(lambda: call(weight=wrong_dtype(weight, data.draw(st.integers(0, 2)))), "weight", untouched)
    elif fault == "flags shape":
        assert_rejected(lambda: call(flags=wrong_shape(flags)), "flags", untouched)
    elif fault == "scores strided":
        assume(scores.numel() >= 2)
        assert_rejected(lambda: call(scores=strided_copy(scores)), "scores", untouched)
    else:
        assert_rejected(lambda: call(weight=weight.tolist()), "weight", untouched, (TypeError,))


# ------------------------------------------------------------------------------ scale_columns
@st.composite
def scale_cases(draw):
    rows, groups = draw(small_sizes), draw(st.sampled_from([1, 2, 3, 7, 12]))
    width = draw(st.sampled_from([1, 2, 3, 8, 64]))
    dtype = draw(float_dtypes)
    weight = make_float((rows, groups * width), dtype, draw(values()))
    weight = maybe_strided(weight, draw(st.booleans()))
    coefficients = make_float((groups,), draw(st.sampled_from([dtype, dtype, *FLOATS])), draw(values()))
    return weight, coefficients, width


def assert_sums_close(actual: torch.Tensor, expected: torch.Tensor, terms: torch.Tensor) -> None:
    """Sums of ``terms`` (one row per sum, in float64) equal up to summation order: within
    2·n·eps·Σ|term| of each other where no fp32 partial sum can overflow; NaN where the other has NaN."""
    magnitude = terms.abs().sum(1)
    safe = torch.isfinite(magnitude) & (magnitude < 1e37)
    got, want = actual.double(), expected.double()
    assert torch.equal(torch.isnan(got[safe]), torch.isnan(want[safe])), "NaN at other places than the reference"
    finite = safe & ~torch.isnan(want)
    bound = 2 * terms.shape[1] * torch.finfo(torch.float32).eps * magnitude[finite] + 1e-38
    assert bool(((got[finite] - want[finite]).abs() <= bound).all()), (got, want)


def assert_sums_near_exact(actual: torch.Tensor, terms: torch.Tensor) -> None:
    """Sums of ``terms`` (one row per sum, in float64) taken in fp32 and rounded to ``actual``'s
    dtype: NaN wherever the exact sum is NaN; where no fp32 partial sum nor the result can
    overflow, within the result dtype's rounding of the exact sum plus 2·n·eps·Σ|term| (and n fp32
    underflow steps) of fp32 summation."""
    exact, magnitude = terms.sum(1), terms.abs().sum(1)
    got = actual.double()
    assert bool(torch.isnan(got[torch.isnan(exact)]).all()), "a NaN of the exact sum was lost"
    info, fp32 = torch.finfo(actual.dtype), torch.finfo(torch.float32)
    safe = torch.isfinite(magnitude) & (magnitude < min(1e37, info.max / 2))
    count = terms.shape[1]
    bound = (info.eps * exact.abs() + 2 * count * fp32.eps * magnitude
             + info.smallest_normal * info.eps + 2 * count * fp32.smallest_normal * fp32.eps)
    assert bool(((got - exact).abs() <= bound)[safe].all()), (got, exact)


@FUZZ_SETTINGS
@given(data=st.data())
def test_scale_columns(backend, data):
    """C++ (float32 on the cpp backend), the Triton kernels (every float32/float16/bfloat16 mix on
    the triton backend) or the reference (the rest) against the reference expression: forward and
    the weight gradient exact, the coefficients' gradient within summation-order rounding (Triton:
    of an fp32 sum of the exact terms, rounded to the coefficients' dtype)."""
    weight, coefficients, width = data.draw(scale_cases())
    upstream = make_float(tuple(weight.shape), torch.promote_types(weight.dtype, coefficients.dtype),
                          data.draw(values()))
    fault = data.draw(st.sampled_from([None, None, None, "weight dtype", "coefficients count", "width",
                                       "coefficients device", "weight dims", "python type"]))
    if fault is None:
        leaves = [tensor.detach().clone().requires_grad_(True) for tensor in (weight, coefficients)]
        twins = [tensor.detach().clone().requires_grad_(True) for tensor in (weight, coefficients)]
        out = ops.scale_columns(*leaves, width, slot=ops.OutputSlot())
        want = reference.scale_columns(*twins, width)
        assert_close(out.detach(), want.detach(), exact=True)
        out.backward(upstream)
        want.backward(upstream)
        assert_close(leaves[0].grad, twins[0].grad, exact=True)
        groups = coefficients.shape[0]
        terms = (upstream.double() * weight.double()).reshape(weight.shape[0], groups, width).transpose(0, 1)
        if backend == "triton":
            assert leaves[1].grad.dtype == coefficients.dtype
            assert_sums_near_exact(leaves[1].grad, terms.reshape(groups, -1))
        elif weight.dtype != torch.float32 or coefficients.dtype != torch.float32:
            assert_close(leaves[1].grad, twins[1].grad, exact=True)  # the reference served the op
        else:
            assert_sums_close(leaves[1].grad, twins[1].grad, terms.reshape(groups, -1))
        return
    if fault == "weight dtype":
        bad = weight.to((torch.int64, torch.bool)[data.draw(st.integers(0, 1))])
        assert_rejected(lambda: ops.scale_columns(bad, coefficients, width), "weight", [])
    elif fault == "coefficients count":
        assert_rejected(lambda: ops.scale_columns(weight, wrong_shape(coefficients), width), "coefficients", [])
    elif fault == "width":
        bad = data.draw(st.sampled_from([0, -1]))
        assert_rejected(lambda: ops.scale_columns(weight, coefficients, bad), "width", [])
    elif fault == "coefficients device":
        assert_rejected(lambda: ops.scale_columns(weight, coefficients.to("meta"), width), "coefficients", [])
    elif fault == "weight dims":
        assert_rejected(lambda: ops.scale_columns(weight.reshape(-1), coefficients, width), "weight", [])
    else:
        assert_rejected(lambda: ops.scale_columns(weight, coefficients, str(width)), "width", [], (TypeError,))


FP32_EPS = torch.finfo(torch.float32).eps


def step_bounds(scores, grads, buffer, flags, lr, momentum, l2) -> tuple[torch.Tensor, torch.Tensor]:
    """Error bounds of the fused step's fp32 math against the reference, from the inputs.

    ``v = momentum*v + (g + 2*l2*p)`` and ``p - lr*v`` may be contracted into FMAs (the C++ build
    and GPUs do; the reference does not), so each may differ by a few ulps of its operands, which
    can be far above an ulp of a result that cancels."""
    p, v, g = scores.double(), buffer.double(), grads.double()
    v_bound = 4 * FP32_EPS * ((momentum * v).abs() + g.abs() + (2 * l2 * p).abs())
    v_new = momentum * v + g + 2 * l2 * p
    p_bound = lr * v_bound + 4 * FP32_EPS * (p.abs() + (lr * v_new).abs())
    return torch.where(flags, p_bound, 0.0), torch.where(flags, v_bound, 0.0)


def assert_within(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor) -> None:
    """``|actual - expected| <= bound`` plus an ulp of the stored dtype; NaN and inf where the reference has them."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    got, want = actual.double(), expected.double()
    finite = torch.isfinite(want)
    assert torch.equal(torch.isnan(got), torch.isnan(want)), "NaN at other places than the reference"
    assert torch.equal(got[~finite & ~torch.isnan(want)], want[~finite & ~torch.isnan(want)]), "inf differs"
    eps = torch.finfo(actual.dtype).eps
    allowed = bound[finite] + 2 * eps * want[finite].abs() + torch.finfo(actual.dtype).tiny
    excess = (got[finite] - want[finite]).abs() - allowed
    assert not bool((excess > 0).any()), f"beyond the FMA bound by up to {float(excess.max())}"


@FUZZ_SETTINGS
@given(data=st.data())
def test_gemminer_step_(backend, form, data):
    shape = data.draw(shapes())
    scores = make_float(shape, data.draw(float_dtypes), data.draw(values(in_unit=True)))
    grads = maybe_strided(make_float(shape, data.draw(float_dtypes), data.draw(values())), data.draw(st.booleans()))
    buffer = make_float(shape, data.draw(float_dtypes), data.draw(values()))
    flags = maybe_strided(make_bool(shape, data.draw(seeds), data.draw(st.sampled_from([0.0, 0.8, 1.0]))),
                          data.draw(st.booleans()))
    lr = data.draw(st.sampled_from([0.1, 0.0, 10.0, 1e-8]))
    momentum = data.draw(st.sampled_from([0.9, 0.0, 1.0]))
    l2 = data.draw(st.sampled_from([1e-4, 0.0, 5.0]))

    def call(scores=scores, grads=grads, buffer=buffer, flags=flags, lr=lr, momentum=momentum, l2=l2):
        if form == "raw":
            return RAW.gemminer_step_(scores, grads, buffer, flags, lr, momentum, l2)
        return ops.gemminer_step_(scores, grads, buffer, flags, lr=lr, momentum=momentum, l2=l2)

    fault = data.draw(st.sampled_from([None, None, None, "scores strided", "buffer strided", "grads shape",
                                       "flags dtype", "buffer device", "lr", "momentum", "l2", "python type"]))
    if fault is None:
        want_scores, want_buffer = scores.clone(), buffer.clone()
        reference.gemminer_step_(want_scores, grads.contiguous(), want_buffer, flags.contiguous(), lr, momentum, l2)
        scores_bound, buffer_bound = step_bounds(scores, grads, buffer, flags, lr, momentum, l2)
        kept = call()
        assert_within(scores, want_scores, scores_bound)
        assert_within(buffer, want_buffer, buffer_bound)
        own_count = int(((scores > 0.5) & flags).sum())  # the count of what this backend stored
        assert (int(kept) if form == "raw" else kept) == own_count
        assert isinstance(kept, int) if form == "public" else kept.dtype == torch.int64
        return
    targets = [scores, buffer]
    if fault == "scores strided":
        assume(scores.numel() >= 2)
        bad = strided_copy(scores)
        assert_rejected(lambda: call(scores=bad), "scores", [bad, buffer])
    elif fault == "buffer strided":
        assume(buffer.numel() >= 2)
        bad = strided_copy(buffer)
        assert_rejected(lambda: call(buffer=bad), "momentum_buffer", [scores, bad])
    elif fault == "grads shape":
        assert_rejected(lambda: call(grads=wrong_shape(grads)), "grads", targets)
    elif fault == "flags dtype":
        assert_rejected(lambda: call(flags=wrong_dtype(flags, data.draw(st.integers(0, 2)))), "flags", targets)
    elif fault == "buffer device":
        assert_rejected(lambda: call(buffer=buffer.to("meta")), "momentum_buffer", [scores])
    elif fault in ("lr", "momentum", "l2"):
        bad = data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        assert_rejected(lambda: call(**{fault: bad}), fault, targets)
    else:
        errors, name = python_type_fault(form, "lr")
        assert_rejected(lambda: call(lr="0.1"), name, targets, errors)
