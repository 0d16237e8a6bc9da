"""Hypothesis strategies for the op fuzz suite: awkward tensors, and ways to make a call wrong.

Tensor values come from a drawn seed (drawing every element through Hypothesis would be slow);
their sizes, dtypes, layouts and special values (NaN, +-inf, +-0, 0.5, denormals, huge) are drawn
directly, so that Hypothesis explores and shrinks those.

Budget: ``SPARSETICKET_FUZZ_EXAMPLES`` examples per test (default 200, derandomised: CI runs the
same cases every time). Long mode: ``SPARSETICKET_FUZZ_EXAMPLES=2000`` (and
``SPARSETICKET_FUZZ_RANDOM=1`` for fresh cases rather than the derandomised sequence).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("SPARSETICKET_FUZZ_EXAMPLES", "200"))
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=os.environ.get("SPARSETICKET_FUZZ_RANDOM") != "1",
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# Empty, one element, sizes around multiples of 8 (bits per byte), 64 (C++ groups) and the Triton
# block sizes (2048, 4096), and primes.
SIZES = (0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 257, 1000, 2047, 2049, 4097)
SPECIALS = (float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 0.5, 1e-45, 1e-40, 3e38, -3e38, 1.0)

sizes = st.sampled_from(SIZES)
small_sizes = st.sampled_from(SIZES[:16])
float_dtypes = st.sampled_from(FLOATS)


MAX_ELEMENTS = 5000  # per tensor: enough for several Triton blocks, small enough for the interpreter


@st.composite
def shapes(draw, max_dims: int = 4, small: bool = False) -> tuple[int, ...]:
    """A shape of 0 to ``max_dims`` dimensions (the first may be large, the others up to 9)."""
    dims = draw(st.integers(0, max_dims))
    shape = [draw(small_sizes if small or index else sizes) for index in range(dims)]
    shape[1:] = [min(size, 9) for size in shape[1:]]
    while len(shape) > 1 and torch.Size(shape).numel() > MAX_ELEMENTS:
        shape.pop()
    return tuple(shape)


@dataclass
class Values:
    """How to fill a float tensor: a seed, a magnitude, and special values at some positions."""

    seed: int
    magnitude: float
    specials: list[float] = field(default_factory=list)
    in_unit: bool = False  # scores live in [0, 1]


@st.composite
def values(draw, in_unit: bool = False) -> Values:
    """A recipe for float contents, sometimes with NaN/inf/signed zeros/denormals among them."""
    specials = draw(st.lists(st.sampled_from(SPECIALS), max_size=4)) if draw(st.booleans()) else []
    magnitude = draw(st.sampled_from((1.0, 1.0, 1e-3, 1e-38, 1e30)))
    return Values(draw(st.integers(0, 2**31 - 1)), magnitude, specials, in_unit)


def make_float(shape: tuple[int, ...], dtype: torch.dtype, recipe: Values) -> torch.Tensor:
    """A contiguous float tensor filled from ``recipe``."""
    generator = torch.Generator().manual_seed(recipe.seed)
    if recipe.in_unit:
        flat = torch.rand(int(torch.Size(shape).numel()), generator=generator)
    else:
        flat = torch.randn(int(torch.Size(shape).numel()), generator=generator) * recipe.magnitude
    if flat.numel():
        positions = torch.randint(0, flat.numel(), (len(recipe.specials),), generator=generator)
        for position, special in zip(positions.tolist(), recipe.specials):
            flat[position] = special
    return flat.to(dtype).reshape(shape)


def make_bool(shape: tuple[int, ...], seed: int, density: float = 0.5) -> torch.Tensor:
    """A bool tensor with about ``density`` True."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) < density


def strided_copy(tensor: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous view (every other element of a twice-as-long last dim)."""
    if tensor.dim() == 0:
        return tensor  # a 0-d tensor is always contiguous
    wide = torch.empty((*tensor.shape[:-1], 2 * tensor.shape[-1]), dtype=tensor.dtype)
    view = wide[..., ::2]
    view.copy_(tensor)
    return view


def maybe_strided(tensor: torch.Tensor, strided: bool) -> torch.Tensor:
    """``tensor`` or a non-contiguous view of the same values."""
    return strided_copy(tensor) if strided else tensor


def wrong_dtype(tensor: torch.Tensor, choice: int) -> torch.Tensor:
    """``tensor`` converted to a dtype its argument does not take."""
    if tensor.dtype == torch.bool:
        return tensor.to((torch.float32, torch.uint8, torch.int64)[choice % 3])
    if tensor.dtype == torch.uint8:
        return tensor.to((torch.int8, torch.int32, torch.float32)[choice % 3])
    if tensor.dtype == torch.int32:
        return tensor.to((torch.int64, torch.float32, torch.int16)[choice % 3])
    return tensor.to((torch.float64, torch.int64, torch.bool)[choice % 3])


def wrong_shape(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor of the same dtype with one element more."""
    return torch.zeros(tensor.numel() + 1, dtype=tensor.dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN payloads and signed zeros included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        integer = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(integer), b.contiguous().view(integer))
    return torch.equal(a, b)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, exact: bool = False) -> None:
    """Equal within the op's documented tolerance: fp32 math, maybe FMA-contracted, so 1 ulp of
    fp32 before rounding to the tensor's dtype; NaN where the reference has NaN."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual.dtype, expected.dtype)
    if exact or not actual.dtype.is_floating_point:
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)
        return
    eps = torch.finfo(actual.dtype).eps
    tiny = 1e-6 if actual.dtype == torch.float32 else float(eps)
    torch.testing.assert_close(actual, expected, rtol=2 * eps, atol=tiny, equal_nan=True)
