"""Test setup: Triton's interpreter on (before triton is imported), backend fixtures, tolerances.

Every op test runs on each CPU backend: the C++ kernels and the Triton kernels (through the
interpreter), compared with the plain-PyTorch reference. A backend that cannot run fails the
test loudly; none is skipped.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from sparseticket.ops import cpu_backend  # noqa: E402

KERNEL_BACKENDS = ("cpp", "triton")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request) -> str:
    """Run the test body with CPU tensors routed to one kernel backend."""
    with cpu_backend(request.param):
        yield request.param


@pytest.fixture
def generator() -> torch.Generator:
    """A generator with a fresh seed each run; the seed is printed, so a failure can be replayed
    with SPARSETICKET_TEST_SEED=<seed>."""
    seed = int(os.environ.get("SPARSETICKET_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"random inputs from seed {seed} (replay: SPARSETICKET_TEST_SEED={seed})")
    return torch.Generator().manual_seed(seed)


def reference_run(function, *args, **kwargs):
    """Run an op with the plain-PyTorch reference kernels."""
    with cpu_backend("reference"):
        return function(*args, **kwargs)


def assert_float_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to rounding of the tensor's dtype (fp32 math in both, maybe contracted)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.dtype == torch.float32:
        torch.testing.assert_close(actual, expected, rtol=2e-6, atol=1e-7)
    else:
        torch.testing.assert_close(actual, expected)


def layer_shapes(count: int, generator: torch.Generator) -> list[tuple[int, ...]]:
    """Shapes like a small CNN's: conv filters, BN vectors, linear layers, odd sizes included."""
    shapes: list[tuple[int, ...]] = []
    for index in range(count):
        channels = int(torch.randint(1, 40, (1,), generator=generator))
        kind = index % 4
        if kind == 0:
            shapes.append((channels, int(torch.randint(1, 9, (1,), generator=generator)), 3, 3))
        elif kind == 1:
            shapes.append((channels,))
        elif kind == 2:
            shapes.append((channels, int(torch.randint(1, 50, (1,), generator=generator))))
        else:
            shapes.append((channels, 1, 1, int(torch.randint(1, 5, (1,), generator=generator))))
    return shapes
