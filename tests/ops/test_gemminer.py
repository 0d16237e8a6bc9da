"""gemminer_mask (forward, straight-through backward), gemminer_masked_weight (the same with the
scores gradient in a caller's slot: GemMiner's hot path) and gemminer_step_ against the reference."""

from __future__ import annotations

import pytest
import torch
from conftest import FLOAT_DTYPES, assert_float_close, reference_run

from sparseticket.ops import MaskedWeightSlots, cpu_backend, gemminer_mask, gemminer_masked_weight, gemminer_step_

SHAPES = [(1,), (7,), (2048,), (2049,), (16, 3, 3, 3), (33, 65)]


def _inputs(shape, dtype, generator):
    weight = torch.randn(shape, generator=generator).to(dtype)
    scores = torch.rand(shape, generator=generator).to(dtype)
    scores.view(-1)[::11] = 0.5  # exactly at the threshold: strict '>' drops it
    flags = torch.rand(shape, generator=generator) > 0.2
    return weight, scores, flags


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_forward_matches_formula(backend, generator, shape, dtype):
    weight, scores, flags = _inputs(shape, dtype, generator)
    out = gemminer_mask(weight, scores, flags)
    assert torch.equal(out, weight * (scores > 0.5) * flags)
    assert torch.equal(out, reference_run(gemminer_mask, weight, scores, flags))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_straight_through_gradients(backend, generator, shape, dtype):
    weight, scores, flags = _inputs(shape, dtype, generator)
    weight.requires_grad_(True)
    scores.requires_grad_(True)
    upstream = torch.randn(shape, generator=generator).to(dtype)
    gemminer_mask(weight, scores, flags).backward(upstream)
    keep = (scores.detach() > 0.5) & flags
    assert torch.equal(weight.grad, torch.where(keep, upstream, 0).to(dtype))
    expected_scores = (upstream.float() * weight.detach().float() * flags).to(dtype)
    assert_float_close(scores.grad, expected_scores)


def test_gradient_only_for_scores_when_weight_frozen(backend, generator):
    weight, scores, flags = _inputs((40, 9), torch.float32, generator)
    scores.requires_grad_(True)
    gemminer_mask(weight, scores, flags).sum().backward()
    assert weight.grad is None
    assert torch.equal(scores.grad, weight * flags)


def test_gradcheck_wrt_weight(backend, generator):
    weight = torch.randn(6, 5, generator=generator, dtype=torch.float32).double()
    scores = torch.rand(6, 5, generator=generator)
    flags = torch.rand(6, 5, generator=generator) > 0.3

    def masked(weight64):
        return gemminer_mask(weight64.float(), scores, flags).double()

    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(masked, (weight,), eps=1e-3, atol=1e-3)


@pytest.mark.parametrize("size", [1, 7, 2047, 2048, 2049, 10007])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_step_matches_reference(backend, generator, size, dtype):
    scores = torch.rand(size, generator=generator).to(dtype)
    grads = torch.randn(size, generator=generator).to(dtype)
    buffer = (0.1 * torch.randn(size, generator=generator)).to(dtype)
    flags = torch.rand(size, generator=generator) > 0.3
    got_scores, got_buffer = scores.clone(), buffer.clone()
    kept = gemminer_step_(got_scores, grads, got_buffer, flags, lr=0.1, momentum=0.9, l2=1e-4)
    want_scores, want_buffer = scores.clone(), buffer.clone()
    want_kept = reference_run(gemminer_step_, want_scores, grads, want_buffer, flags,
                              lr=0.1, momentum=0.9, l2=1e-4)
    assert_float_close(got_scores, want_scores)
    assert_float_close(got_buffer, want_buffer)
    assert kept == int(((got_scores > 0.5) & flags).sum())
    # Scores within rounding of 0.5 may land on either side: Triton's interpreter truncates
    # fp32 -> bf16 where the GPU and PyTorch round to nearest even.
    near_threshold = int((((want_scores.float() - 0.5).abs() <= 2.0**-7) & flags).sum())
    assert abs(kept - want_kept) <= max(near_threshold, 1 if dtype == torch.float32 else 0)
    assert torch.equal(got_scores[~flags], scores[~flags]) and torch.equal(got_buffer[~flags], buffer[~flags])
    assert got_scores.min() >= 0 and got_scores.max() <= 1


def test_step_equals_torch_sgd_plus_clamp(backend, generator):
    scores = torch.rand(3000, generator=generator)
    flags = torch.ones(3000, dtype=torch.bool)
    target = torch.randn(3000, generator=generator)
    reference_scores = scores.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([reference_scores], lr=0.1, momentum=0.9)
    buffer = torch.zeros(3000)
    l2 = 1e-2
    for _ in range(3):
        task_grad = (scores - target) * 2 / 3000
        gemminer_step_(scores, task_grad, buffer, flags, lr=0.1, momentum=0.9, l2=l2)
        optimizer.zero_grad()
        loss = ((reference_scores - target) ** 2).sum() / 3000 + l2 * (reference_scores ** 2).sum()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            reference_scores.clamp_(0, 1)
    torch.testing.assert_close(scores, reference_scores.detach(), rtol=1e-5, atol=1e-6)


def test_step_on_empty(backend):
    empty = torch.empty(0)
    assert gemminer_step_(empty, empty, empty.clone(), torch.empty(0, dtype=torch.bool), lr=0.1) == 0


# ------------------------------------------------------------------ gemminer_masked_weight (slots)
CL = torch.channels_last


def _slots_for(scores: torch.Tensor) -> MaskedWeightSlots:
    """A gradient slot in the scores' dtype and memory order, and an unclaimed flag."""
    return MaskedWeightSlots(torch.zeros_like(scores), torch.zeros(1, dtype=torch.uint8))


def _masked_weight_run(weight, scores, flags, upstream, *, slots: bool):
    """(output, weight.grad, scores.grad, slots) of one forward/backward on fresh leaves."""
    leaf_weight = weight.clone().requires_grad_(True)  # clone keeps the memory format
    leaf_scores = scores.clone().requires_grad_(True)
    layer_slots = _slots_for(leaf_scores) if slots else None
    out = gemminer_masked_weight(leaf_weight, leaf_scores, flags, slots=layer_slots)
    out.backward(upstream)
    return out.detach(), leaf_weight.grad, leaf_scores.grad, layer_slots


@pytest.mark.parametrize("shape, layout", [((1,), None), ((7,), None), ((2049,), None), ((33, 65), None),
                                           ((16, 3, 3, 3), None), ((16, 3, 3, 3), CL), ((5, 7, 3, 2), CL)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_masked_weight_with_slots_matches_the_reference(backend, generator, shape, dtype, layout):
    """C++ autograd op (cpp) or the autograd.Function over the Triton kernels (triton) against
    the reference gemminer_mask without slots: same values and gradients, the scores gradient
    adopted from the slot (no copy), the flag claimed; channels_last stays channels_last."""
    weight, scores, flags = _inputs(shape, dtype, generator)
    upstream = torch.randn(shape, generator=generator).to(dtype)
    if layout is not None:
        weight, scores, flags, upstream = (tensor.contiguous(memory_format=layout)
                                           for tensor in (weight, scores, flags, upstream))
    out, grad_weight, grad_scores, slots = _masked_weight_run(weight, scores, flags, upstream, slots=True)
    want, want_weight, want_scores, _ = reference_run(_masked_weight_run, weight, scores, flags, upstream, slots=False)
    assert torch.equal(out, want) and torch.equal(grad_weight, want_weight)
    assert_float_close(grad_scores, want_scores)
    assert grad_scores.data_ptr() == slots.grad_slot.data_ptr()  # adopted as scores.grad
    assert int(slots.claimed[0]) == 1
    if layout is not None:
        assert out.is_contiguous(memory_format=layout) and grad_scores.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_masked_weight_reference_backend_with_slots(generator, dtype):
    """The plain-PyTorch fallback serves the slot path too (what runs without C++ or Triton)."""
    weight, scores, flags = _inputs((9, 13), dtype, generator)
    upstream = torch.randn(9, 13, generator=generator).to(dtype)
    out, grad_weight, grad_scores, slots = reference_run(_masked_weight_run, weight, scores, flags, upstream,
                                                         slots=True)
    assert torch.equal(out, weight * (scores > 0.5) * flags)
    assert torch.equal(grad_weight, torch.where((scores > 0.5) & flags, upstream, 0).to(dtype))
    assert_float_close(grad_scores, (upstream.float() * weight.float() * flags).to(dtype))
    assert grad_scores.data_ptr() == slots.grad_slot.data_ptr()


def test_masked_weight_second_gradients_of_a_step_accumulate(backend, generator):
    """A layer used twice in one graph, then a second backward before the slot is released: the
    slot takes only the first gradient, the others are added as usual; zeroing ``claimed``
    starts the next step in the slot again."""
    weight, scores, flags = _inputs((12, 5), torch.float32, generator)
    leaf = scores.clone().requires_grad_(True)
    slots = _slots_for(leaf)
    ups = [torch.randn(12, 5, generator=generator) for _ in range(3)]
    first = (gemminer_masked_weight(weight, leaf, flags, slots=slots) * ups[0]).sum()
    second = (gemminer_masked_weight(weight, leaf, flags, slots=slots) * ups[1]).sum()
    (first + second).backward()
    torch.testing.assert_close(leaf.grad, (ups[0] + ups[1]) * weight * flags)
    (gemminer_masked_weight(weight, leaf, flags, slots=slots) * ups[2]).sum().backward()
    torch.testing.assert_close(leaf.grad, (ups[0] + ups[1] + ups[2]) * weight * flags)
    leaf.grad = None
    slots.claimed.zero_()
    (gemminer_masked_weight(weight, leaf, flags, slots=slots) * ups[2]).sum().backward()
    assert leaf.grad.data_ptr() == slots.grad_slot.data_ptr()
    torch.testing.assert_close(leaf.grad, ups[2] * weight * flags)


def test_masked_weight_slot_of_another_dtype_is_skipped(backend, generator):
    weight, scores, flags = _inputs((6, 4), torch.float32, generator)
    leaf = scores.clone().requires_grad_(True)
    slots = MaskedWeightSlots(torch.zeros(6, 4, dtype=torch.float16), torch.zeros(1, dtype=torch.uint8))
    gemminer_masked_weight(weight, leaf, flags, slots=slots).sum().backward()
    assert torch.equal(leaf.grad, weight * flags) and leaf.grad.data_ptr() != slots.grad_slot.data_ptr()
    assert not slots.grad_slot.any()


def test_masked_weight_without_slots_is_gemminer_mask(backend, generator):
    weight, scores, flags = _inputs((2049,), torch.bfloat16, generator)
    upstream = torch.randn(2049, generator=generator).to(torch.bfloat16)
    got = _masked_weight_run(weight, scores, flags, upstream, slots=False)[:3]
    want = reference_run(_masked_weight_run, weight, scores, flags, upstream, slots=False)[:3]
    for have, expected in zip(got, want):
        assert torch.equal(have, expected)


def test_masked_weight_only_weight_gradient(backend, generator):
    weight, scores, flags = _inputs((8, 3), torch.float16, generator)
    leaf = weight.clone().requires_grad_(True)
    slots = _slots_for(scores)
    gemminer_masked_weight(leaf, scores, flags, slots=slots).sum().backward()
    assert torch.equal(leaf.grad, ((scores > 0.5) & flags).to(torch.float16))
    assert int(slots.claimed[0]) == 0 and not slots.grad_slot.any()


def _bad_masked_weight_calls():
    weight, scores = torch.randn(4, 3), torch.rand(4, 3, requires_grad=True)
    flags = torch.ones(4, 3, dtype=torch.bool)

    def slots(grad_slot=None):
        grad_slot = torch.zeros(4, 3) if grad_slot is None else grad_slot
        return MaskedWeightSlots(grad_slot, torch.zeros(1, dtype=torch.uint8))

    return [
        (lambda: gemminer_masked_weight(weight.long(), scores, flags, slots=slots()), TypeError,
         "weight must be float32/float16/bfloat16"),
        (lambda: gemminer_masked_weight(weight, scores, flags.float(), slots=slots()), TypeError, "flags must be bool"),
        (lambda: gemminer_masked_weight(weight, scores.detach()[:2], flags, slots=slots()), ValueError,
         r"scores.* must have .*shape"),
        (lambda: gemminer_masked_weight(weight.tolist(), scores, flags, slots=slots()), TypeError,
         "weight must be a torch.Tensor"),
        (lambda: gemminer_masked_weight(weight, scores, flags, slots=torch.zeros(4, 3)), TypeError,
         "slots must be a MaskedWeightSlots"),
        (lambda: gemminer_masked_weight(weight, scores, flags, slots=slots(torch.zeros(3, 4))), ValueError,
         "grad_slot"),
        (lambda: gemminer_masked_weight(weight, scores, flags, slots=slots(torch.zeros(3, 4).t())), ValueError,
         "grad_slot"),
        (lambda: slots(torch.zeros(4, 3, dtype=torch.int32)), TypeError, "grad_slot must be float32/float16/bfloat16"),
        (lambda: slots(torch.zeros(2, 4, 3)[:, :, 0]), ValueError, "grad_slot must be contiguous or channels_last"),
        (lambda: MaskedWeightSlots(torch.zeros(4, 3), torch.zeros(2, dtype=torch.uint8)), ValueError,
         "claimed must hold one element"),
        (lambda: MaskedWeightSlots(torch.zeros(4, 3), torch.zeros(1)), TypeError, "claimed must be uint8 on cpu"),
        (lambda: MaskedWeightSlots(torch.zeros(4, 3), torch.zeros(1, dtype=torch.uint8, device="meta")), TypeError,
         "claimed must be uint8 on cpu"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_masked_weight_calls())))
def test_masked_weight_bad_input_names_the_argument(backend, index):
    call, error, words = _bad_masked_weight_calls()[index]
    with pytest.raises(error, match=words):
        call()


def test_step_as_tensor_returns_the_count_without_reading_it(backend, generator):
    scores = torch.rand(101, generator=generator)
    flags = torch.rand(101, generator=generator) > 0.3
    kept = gemminer_step_(scores, torch.randn(101, generator=generator), torch.zeros(101), flags, lr=0.1,
                          as_tensor=True)
    assert isinstance(kept, torch.Tensor) and kept.dim() == 0 and kept.dtype == torch.int64
    assert int(kept) == int(((scores > 0.5) & flags).sum())
    with pytest.raises(TypeError, match="as_tensor must be a bool"):
        gemminer_step_(scores, scores, torch.zeros(101), flags, lr=0.1, as_tensor=1)


def test_masked_weight_output_memory_is_reused_by_cpp_only(generator):
    """The C++ path writes the masked weight into ``slots.output`` once nothing holds the last
    one; the Triton and reference paths never allocate it."""
    weight, scores, flags = _inputs((10, 6), torch.float32, generator)
    for backend_name in ("triton", "reference"):
        slots = _slots_for(scores)
        with cpu_backend(backend_name):
            gemminer_masked_weight(weight, scores, flags, slots=slots)
        assert slots.output.nbytes == 0
    slots = _slots_for(scores)
    with cpu_backend("cpp"):
        first = gemminer_masked_weight(weight, scores, flags, slots=slots)
        address = first.data_ptr()
        kept = first
        second = gemminer_masked_weight(weight, scores, flags, slots=slots)
        assert second.data_ptr() != address  # the first is still referenced
        del first, kept, second
        third = gemminer_masked_weight(weight, scores, flags, slots=slots)
    assert third.data_ptr() == address and torch.equal(third, weight * (scores > 0.5) * flags)
    assert slots.output.nbytes == weight.numel() * 4


# ------------------------------------------------------------------ gemminer_step_ writing the masked weights
def _step_inputs(size, dtype, weight_dtype, generator):
    scores = torch.rand(size, generator=generator).to(dtype)
    grads = torch.randn(size, generator=generator).to(dtype)
    buffer = (0.1 * torch.randn(size, generator=generator)).to(dtype)
    flags = torch.rand(size, generator=generator) > 0.3
    weights = torch.randn(size, generator=generator).to(weight_dtype)
    weights[::13] = float("nan")  # pruned entries must be exactly 0 whatever the weight holds
    weights[5::17] = float("inf")
    return scores, grads, buffer, flags, weights


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (NaN compares equal to the same NaN, -0 differs from +0)."""
    return tensor.view({4: torch.int32, 2: torch.int16}[tensor.element_size()])


def _step_with_masked(scores, grads, buffer, flags, weights):
    """(scores, momentum, masked_out, kept) after one step on copies, masked_out starting as garbage."""
    scores, buffer = scores.clone(), buffer.clone()
    masked = torch.full_like(weights, 7.0)
    kept = gemminer_step_(scores, grads, buffer, flags, lr=0.3, momentum=0.9, l2=1e-4, weights=weights,
                          masked_out=masked)
    return scores, buffer, masked, kept


@pytest.mark.parametrize("size", [1, 7, 2047, 2048, 2049, 10007])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_step_writes_the_masked_weights_of_the_new_scores(backend, generator, size, dtype):
    """masked_out is gemminer_mask of the scores this backend stored, bit for bit (NaN and inf
    weights only where kept), the step itself is what it is without masked_out, and the
    reference agrees."""
    scores, grads, buffer, flags, weights = _step_inputs(size, dtype, torch.float32, generator)
    got_scores, got_buffer, masked, kept = _step_with_masked(scores, grads, buffer, flags, weights)
    plain_scores, plain_buffer = scores.clone(), buffer.clone()
    plain_kept = gemminer_step_(plain_scores, grads, plain_buffer, flags, lr=0.3, momentum=0.9, l2=1e-4)
    assert torch.equal(got_scores, plain_scores) and torch.equal(got_buffer, plain_buffer) and kept == plain_kept
    assert torch.equal(_bits(masked), _bits(reference_run(gemminer_mask, weights, got_scores, flags)))
    assert torch.equal(_bits(masked), _bits(gemminer_mask(weights, got_scores, flags)))  # this backend's own
    assert kept == int(((got_scores > 0.5) & flags).sum())
    want_scores, want_buffer, want_masked, want_kept = reference_run(_step_with_masked, scores, grads, buffer,
                                                                     flags, weights)
    assert_float_close(got_scores, want_scores)
    near_threshold = (((want_scores.float() - 0.5).abs() <= 2.0**-7) & flags)  # see test_step_matches_reference
    far = ~near_threshold
    assert torch.equal(_bits(masked[far]), _bits(want_masked[far]))


@pytest.mark.parametrize("scores_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("weight_dtype", FLOAT_DTYPES)
def test_step_masked_weights_in_the_weights_dtype(backend, generator, scores_dtype, weight_dtype):
    scores, grads, buffer, flags, weights = _step_inputs(2049, scores_dtype, weight_dtype, generator)
    got_scores, _, masked, _ = _step_with_masked(scores, grads, buffer, flags, weights)
    assert masked.dtype == weight_dtype
    expected = torch.where((got_scores > 0.5) & flags, weights, torch.zeros((), dtype=weight_dtype))
    assert torch.equal(_bits(masked), _bits(expected))


def test_step_masked_weights_with_mixed_state_dtypes(backend, generator):
    """Scores, gradient and momentum of different dtypes (the C++ kernel's fp32 detour)."""
    scores, _, _, flags, weights = _step_inputs(3001, torch.float32, torch.bfloat16, generator)
    grads = torch.randn(3001, generator=generator).to(torch.float16)
    buffer = torch.zeros(3001, dtype=torch.bfloat16)
    got_scores, _, masked, kept = _step_with_masked(scores, grads, buffer, flags, weights)
    expected = torch.where((got_scores > 0.5) & flags, weights, torch.zeros((), dtype=torch.bfloat16))
    assert torch.equal(_bits(masked), _bits(expected))
    assert kept == int(((got_scores > 0.5) & flags).sum())


def test_step_masked_weights_on_empty(backend):
    empty = torch.empty(0)
    assert gemminer_step_(empty, empty.clone(), empty.clone(), torch.empty(0, dtype=torch.bool), lr=0.1,
                          weights=empty.clone(), masked_out=empty.clone()) == 0


def test_step_masked_weights_under_compile(backend, generator):
    """The op's schema and fake kernel take the new arguments: fullgraph compile equals eager."""
    scores, grads, buffer, flags, weights = _step_inputs(300, torch.float32, torch.float16, generator)

    def step(scores, buffer, masked):
        return torch.ops.sparseticket.gemminer_step_(scores, grads, buffer, flags, 0.3, 0.9, 1e-4, weights, masked)

    eager = (scores.clone(), buffer.clone(), torch.zeros_like(weights))
    compiled = (scores.clone(), buffer.clone(), torch.zeros_like(weights))
    torch._dynamo.reset()
    kept_eager = step(*eager)
    kept_compiled = torch.compile(step, fullgraph=True)(*compiled)
    assert int(kept_eager) == int(kept_compiled)
    for want, have in zip(eager, compiled):
        assert torch.equal(_bits(want), _bits(have))


def _bad_step_calls():
    def arguments():
        return torch.rand(6), torch.randn(6), torch.zeros(6), torch.ones(6, dtype=torch.bool), torch.randn(6)

    def step(scores, grads, buffer, flags, **masked):
        return gemminer_step_(scores, grads, buffer, flags, lr=0.1, **masked)

    scores, grads, buffer, flags, weights = arguments()
    shared = torch.zeros(12)
    return [
        (lambda: step(scores, grads, buffer, flags, weights=weights), ValueError, "weights needs masked_out"),
        (lambda: step(scores, grads, buffer, flags, masked_out=torch.zeros(6)), ValueError,
         "masked_out needs weights"),
        (lambda: step(scores, grads, buffer, flags, weights=weights, masked_out=torch.zeros(6, dtype=torch.float16)),
         TypeError, "masked_out must have the dtype of weights"),
        (lambda: step(scores, grads, buffer, flags, weights=weights.long(), masked_out=torch.zeros(6)),
         TypeError, "weights must be float32/float16/bfloat16"),
        (lambda: step(scores, grads, buffer, flags, weights=weights[:5], masked_out=torch.zeros(6)), ValueError,
         "weights must have the shape of scores"),
        (lambda: step(scores, grads, buffer, flags, weights=weights, masked_out=torch.zeros(7)), ValueError,
         "masked_out must have the shape of scores"),
        (lambda: step(scores, grads, buffer, flags, weights=weights, masked_out=torch.zeros(12)[::2]), ValueError,
         "masked_out must be contiguous"),
        (lambda: step(scores, grads, buffer, flags, weights=weights, masked_out=torch.zeros(6, device="meta")),
         TypeError, "masked_out must be float32/float16/bfloat16 on cpu"),
        (lambda: step(scores, grads, buffer, flags, weights=weights, masked_out=weights), ValueError,
         "masked_out must not share memory with weights"),
        (lambda: step(scores, grads, buffer, flags, weights=weights, masked_out=scores), ValueError,
         "masked_out must not share memory with scores"),
        (lambda: step(scores, grads, buffer, flags, weights=weights, masked_out=grads), ValueError,
         "masked_out must not share memory with grads"),
        (lambda: step(scores, grads, buffer, flags, weights=weights, masked_out=buffer), ValueError,
         "masked_out must not share memory with momentum_buffer"),
        (lambda: step(shared[:6], grads, shared[3:9], flags), ValueError,
         "momentum_buffer must not share memory with scores"),
        (lambda: step(scores, scores, buffer, flags), ValueError, "scores must not share memory with grads"),
        (lambda: step(scores, grads, buffer, flags, weights=buffer, masked_out=torch.zeros(6)), ValueError,
         "momentum_buffer must not share memory with weights"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_step_calls())))
def test_step_bad_masked_arguments_name_the_argument(backend, index):
    call, error, words = _bad_step_calls()[index]
    with pytest.raises(error, match=words):
        call()


def test_step_refuses_aliasing_on_fake_tensors():
    """The contract reads metadata only: aliasing is refused while tracing too."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        scores, flags, grads = torch.rand(6), torch.ones(6, dtype=torch.bool), torch.randn(6)
        with pytest.raises(ValueError, match="masked_out must not share memory with scores"):
            torch.ops.sparseticket.gemminer_step_(scores, grads, torch.zeros(6), flags, 0.1, 0.9, 0.0, grads.clone(),
                                                  scores)


def test_step_accepts_neighbouring_slices_of_one_buffer(backend, generator):
    """Sharing a storage is not aliasing: disjoint slices of one buffer are fine."""
    memory = torch.zeros(5 * 64)
    scores, grads, buffer, masked, weights = (memory[i * 64:(i + 1) * 64] for i in range(5))
    scores.copy_(torch.rand(64, generator=generator))
    grads.copy_(torch.randn(64, generator=generator))
    weights.copy_(torch.randn(64, generator=generator))
    flags = torch.rand(64, generator=generator) > 0.3
    gemminer_step_(scores, grads, buffer, flags, lr=0.1, weights=weights, masked_out=masked)
    assert torch.equal(masked, weights * ((scores > 0.5) & flags))


# ------------------------------------------------------------------ gemminer_masked_weight with a precomputed value
@pytest.mark.parametrize("shape, layout", [((7,), None), ((33, 65), None), ((16, 3, 3, 3), CL)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_masked_weight_returns_the_precomputed_memory(backend, generator, shape, dtype, layout):
    """With ``masked``: its memory is the result (nothing computed), its version counter is the
    result's, and the gradients are the reference's."""
    weight, scores, flags = _inputs(shape, dtype, generator)
    upstream = torch.randn(shape, generator=generator).to(dtype)
    if layout is not None:
        weight, scores, flags, upstream = (tensor.contiguous(memory_format=layout)
                                           for tensor in (weight, scores, flags, upstream))
    leaf_weight, leaf_scores = weight.clone().requires_grad_(True), scores.clone().requires_grad_(True)
    slots = _slots_for(leaf_scores)
    masked = gemminer_mask(weight, scores, flags)
    out = gemminer_masked_weight(leaf_weight, leaf_scores, flags, slots=slots, masked=masked)
    assert out.data_ptr() == masked.data_ptr() and out.stride() == masked.stride() and out.grad_fn is not None
    out.backward(upstream)
    want, want_weight, want_scores, _ = reference_run(_masked_weight_run, weight, scores, flags, upstream, slots=False)
    assert torch.equal(out.detach(), want) and torch.equal(leaf_weight.grad, want_weight)
    assert_float_close(leaf_scores.grad, want_scores)
    assert leaf_scores.grad.data_ptr() == slots.grad_slot.data_ptr()
    version = masked._version
    with torch.no_grad():
        out.mul_(2)  # an edit of the result shows in the precomputed tensor's version
    assert masked._version > version


def test_masked_weight_precomputed_is_computed_under_compile(backend, generator):
    weight, scores, flags = _inputs((12, 5), torch.float32, generator)
    slots = _slots_for(scores)
    masked = gemminer_mask(weight, scores, flags)

    def forward(weight, scores):
        return gemminer_masked_weight(weight, scores, flags, slots=slots, masked=masked) * 2

    torch._dynamo.reset()
    got = torch.compile(forward, fullgraph=True, backend="aot_eager")(weight, scores)
    assert torch.equal(got, masked * 2)


def test_masked_weight_precomputed_under_inference_mode(backend, generator):
    weight, scores, flags = _inputs((12, 5), torch.float32, generator)
    masked = gemminer_mask(weight, scores, flags)
    with torch.inference_mode():
        out = gemminer_masked_weight(weight, scores, flags, slots=_slots_for(scores), masked=masked)
    assert torch.equal(out, masked)


def _bad_precomputed_calls():
    weight, scores = torch.randn(4, 3), torch.rand(4, 3, requires_grad=True)
    flags = torch.ones(4, 3, dtype=torch.bool)

    def call(masked, slots=True):
        layer_slots = MaskedWeightSlots(torch.zeros(4, 3), torch.zeros(1, dtype=torch.uint8)) if slots else None
        return gemminer_masked_weight(weight, scores, flags, slots=layer_slots, masked=masked)

    return [
        (lambda: call(torch.zeros(4, 3), slots=False), ValueError, "masked needs slots"),
        (lambda: call(torch.zeros(4, 3, dtype=torch.float16)), TypeError, "masked must be float32 on cpu"),
        (lambda: call(torch.zeros(3, 4)), ValueError, "masked must have the shape of weight"),
        (lambda: call(torch.zeros(3, 4).t()), ValueError, "masked must be laid out like scores"),
        (lambda: call([0.0] * 12), TypeError, "masked must be a torch.Tensor"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_precomputed_calls())))
def test_masked_weight_bad_precomputed_names_the_argument(backend, index):
    call, error, words = _bad_precomputed_calls()[index]
    with pytest.raises(error, match=words):
        call()


def test_step_masked_weights_of_nan_scores_are_zero(backend):
    """A NaN gradient makes a NaN score (kept as NaN through the clamp), which is not kept: its
    masked weight is 0, as is every pruned one whatever the weight holds."""
    nan, inf = float("nan"), float("inf")
    scores = torch.tensor([0.3, 0.7, 0.9, 0.9, 0.9])
    grads = torch.tensor([nan, 0.0, 0.0, 0.0, nan])
    weights = torch.tensor([1.0, nan, inf, -inf, 2.0])
    flags = torch.tensor([True, True, False, True, True])
    masked = torch.full((5,), 7.0)
    kept = gemminer_step_(scores, grads, torch.zeros(5), flags, lr=0.1, weights=weights, masked_out=masked)
    assert torch.isnan(scores[0]) and torch.isnan(scores[4]) and kept == 2
    assert _bits(masked[[0, 2, 4]]).tolist() == [0, 0, 0]
    assert torch.isnan(masked[1]) and masked[3] == -inf
