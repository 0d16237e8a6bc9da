"""pack_mask, unpack_mask, mask_distances: each kernel backend against the reference, exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import FLOAT_DTYPES, reference_run

from sparseticket.ops import mask_distances, pack_mask, unpack_mask

SIZES = [1, 7, 8, 9, 63, 4096, 4097, 10007]


@pytest.mark.parametrize("size", SIZES)
def test_pack_unpack_round_trip(backend, generator, size):
    mask = torch.rand(size, generator=generator) > 0.5
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.shape == ((size + 7) // 8,)
    assert torch.equal(packed, reference_run(pack_mask, mask))
    assert torch.equal(unpack_mask(packed, size), mask)


def test_bit_order_hand_computed(backend):
    mask = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 0, 1], dtype=torch.bool)
    assert pack_mask(mask).tolist() == [0b1000_0001, 0b10]
    assert unpack_mask(torch.tensor([5], dtype=torch.uint8), 3).tolist() == [True, False, True]


def test_pack_flattens_and_handles_empty(backend, generator):
    mask = torch.rand(3, 5, 7, generator=generator) > 0.5
    assert torch.equal(pack_mask(mask), reference_run(pack_mask, mask.reshape(-1)))
    assert pack_mask(mask.transpose(0, 2)).shape == (14,)
    assert torch.equal(pack_mask(mask.transpose(0, 2)), reference_run(pack_mask, mask.transpose(0, 2)))
    assert pack_mask(torch.empty(0, dtype=torch.bool)).numel() == 0
    assert unpack_mask(torch.empty(0, dtype=torch.uint8), 0).numel() == 0


def _history(size, rows, generator):
    masks = [torch.rand(size, generator=generator) > 0.5 for _ in range(rows)]
    if masks:
        return torch.stack([reference_run(pack_mask, mask) for mask in masks])
    return torch.empty(0, (size + 7) // 8, dtype=torch.uint8)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("rows", [0, 1, 5])
def test_mask_distances_matches_reference(backend, generator, size, rows):
    importance = torch.rand(size, generator=generator)
    history = _history(size, rows, generator)
    runs = torch.randint(0, 9, (size,), generator=generator, dtype=torch.int32)
    expected_runs = runs.clone()
    packed, distances = mask_distances(importance, 0.5, history, static_runs=runs)
    want_packed, want_distances = reference_run(
        mask_distances, importance, 0.5, history, static_runs=expected_runs)
    assert torch.equal(packed, want_packed)
    assert distances.dtype == torch.float32 and torch.equal(distances, want_distances)
    assert torch.equal(runs, expected_runs)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_mask_distances_dtypes_and_tensor_threshold(backend, generator, dtype):
    importance = torch.randn(3000, generator=generator).abs().to(dtype)
    threshold = importance.float().median()
    history = _history(3000, 4, generator)
    packed, distances = mask_distances(importance, threshold, history)
    assert torch.equal(packed, reference_run(pack_mask, importance.float() > threshold))
    want = reference_run(mask_distances, importance, threshold, history)
    assert torch.equal(distances, want[1])


def test_mask_distances_hand_computed(backend):
    importance = torch.tensor([0.9, 0.1, 0.7, 0.2, 0.8])  # threshold 0.5 -> 1 0 1 0 1
    older = torch.tensor([True, True, True, False, True])  # one bit differs
    newest = torch.tensor([True, False, True, False, True])  # identical
    history = torch.stack([pack_mask(older), pack_mask(newest)])
    runs = torch.tensor([3, 0, 1, 2, 5], dtype=torch.int32)
    packed, distances = mask_distances(importance, 0.5, history, static_runs=runs)
    assert packed.tolist() == [0b10101]
    assert distances.tolist() == [pytest.approx(0.2), 0.0]
    assert runs.tolist() == [4, 1, 2, 3, 6]
    flipped = torch.tensor([0.1, 0.9, 0.7, 0.2, 0.8])  # bits 0 and 1 change vs newest
    mask_distances(flipped, 0.5, history, static_runs=runs)
    assert runs.tolist() == [0, 0, 3, 4, 7]
    mask_distances(flipped, 0.5, history[:0], static_runs=runs)
    assert runs.tolist() == [0, 0, 0, 0, 0]
