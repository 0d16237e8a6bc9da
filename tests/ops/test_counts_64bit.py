"""Counts past 2**31 (a model of several billion weights under IMP or SNIP) stay exact.

Allocating 2**31 elements is out of reach in CI, so these tests drive the accumulation paths of
the Triton radix select (through the interpreter) with counts that already sit near 2**31: a
histogram pre-filled just below the int32 limit, and a select over bins holding billions.
"""

from __future__ import annotations

import torch

from sparseticket.reference.kth import order_keys
from sparseticket.triton_kernels import kth as triton_kth
from sparseticket.triton_kernels._common import block_table, triton_dtype

NEAR_INT32_LIMIT = 2**31 - 5


def _histogram_pass(values: torch.Tensor, histogram: torch.Tensor, shift: int = 24, prefix: int = 0) -> None:
    table = block_table([[values]], [1], triton_kth.BLOCK, values.device)
    state = torch.tensor([prefix, 0], dtype=torch.int64)
    triton_kth.digit_histogram_kernel[(table.blocks,)](
        table.pointers[0], table.numels, table.block_first, table.block_tensor, state, histogram,
        DTYPE=triton_dtype(values.dtype), SHIFT=shift, ALIGNED=True, BLOCK=triton_kth.BLOCK)


def test_histogram_counts_past_int32_into_prefilled_bins():
    values = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    histogram = torch.full((256,), NEAR_INT32_LIMIT, dtype=torch.int64)
    _histogram_pass(values, histogram)
    counts = torch.bincount(order_keys(values) >> 24, minlength=256)
    assert torch.equal(histogram, NEAR_INT32_LIMIT + counts)
    assert int(histogram.max()) > 2**31  # an int32 total would have wrapped negative here


def _select(histogram: torch.Tensor, rank: int, prefix: int = 0) -> tuple[int, int]:
    state = torch.tensor([prefix, rank], dtype=torch.int64)
    result = torch.empty((), dtype=torch.float32)
    triton_kth.select_digit_kernel[(1,)](state, histogram, result, FINAL=False)
    return int(state[0]), int(state[1])


def test_select_digit_with_billions_per_bin():
    histogram = torch.zeros(256, dtype=torch.int64)
    histogram[3] = 3_000_000_000
    histogram[200] = 5_000_000_000
    histogram[255] = 7
    for rank, digit, within in ((0, 3, 0), (2_999_999_999, 3, 2_999_999_999), (3_000_000_000, 200, 0),
                                (7_999_999_999, 200, 4_999_999_999), (8_000_000_006, 255, 6)):
        assert _select(histogram, rank) == (digit, within), rank


def test_select_extends_a_large_prefix():
    histogram = torch.zeros(256, dtype=torch.int64)
    histogram[17] = 2**33
    assert _select(histogram, 2**32 + 1, prefix=0xABCDEF) == ((0xABCDEF << 8) | 17, 2**32 + 1)


class _RecordingKernel:
    """Stands in for a Triton kernel: records the histogram buffers it is launched with."""

    def __init__(self, kernel, histograms: list[torch.Tensor]) -> None:
        self.kernel, self.histograms = kernel, histograms

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.histograms.append(args[5])
            return self.kernel[grid](*args, **kwargs)
        return launch


def test_launchers_accumulate_in_int64(monkeypatch):
    histograms: list[torch.Tensor] = []
    monkeypatch.setattr(triton_kth, "digit_histogram_kernel",
                        _RecordingKernel(triton_kth.digit_histogram_kernel, histograms))
    values = [torch.randn(5000, generator=torch.Generator().manual_seed(1))]
    assert float(triton_kth.kth_value(values, 123)) == float(torch.sort(values[0]).values[123])
    triton_kth.digit_histogram(values, 24, 0)
    assert len(histograms) == 5 and all(h.dtype == torch.int64 for h in histograms)
