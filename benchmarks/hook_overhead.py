"""Where the per-step hook's time goes: a breakdown of one EarlyBird L1 + WORM truncation call.

``python benchmarks/hook_overhead.py`` prints two parts (CPU, 2 threads):

1. Hot (the same call repeated), 53 BN layers of ResNet-50 (26,560 channels): ``TruncationPlan()``
   against its pieces (the backend check, the C++ call alone, the same channels as one tensor, a
   1-element plan: the fixed cost of a call) and against the op through the dispatcher.
2. Cold, the way a training loop calls it: right after the backward of the small VGG on digits,
   the EarlyBird hook, the plan, the C++ call alone, ``torch.empty(0)`` and a Python no-op,
   each timed in its own step (medians of 200 steps).
"""

from __future__ import annotations

import statistics
import sys
import time
import timeit
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import resnet50_shapes  # noqa: E402

import sparseticket.ops as ops  # noqa: E402
from sparseticket._kernels.cpp import cpp_extension  # noqa: E402
from sparseticket.builtin.data import load_digits_split  # noqa: E402
from sparseticket.builtin.models import vgg_small  # noqa: E402
from sparseticket.methods import EarlyBird  # noqa: E402


def hot_us(function, number: int = 20000) -> float:
    """Best of 7 repeats, microseconds a call."""
    function()
    return min(timeit.repeat(function, number=number, repeat=7)) / number * 1e6


def hot_breakdown() -> None:
    shapes = resnet50_shapes()["bn"]
    params = [nn.Parameter(torch.randn(shape)) for shape in shapes]
    for param in params:
        param.grad = torch.randn_like(param)
    keep = [torch.rand(shape) > 0.5 for shape in shapes]
    plan = ops.TruncationPlan(params, keep, scale=0.003, l1=1e-4)
    channels = sum(param.numel() for param in params)
    flat = nn.Parameter(torch.randn(channels))
    flat.grad = torch.randn(channels)
    native = cpp_extension().NativeTruncationPlan
    one_tensor = native([flat], [torch.rand(channels) > 0.5], [flat], 0.003, 1e-4)
    one_element = native([nn.Parameter(torch.randn(1))], [torch.ones(1, dtype=torch.bool)], [], 1.0, 0.0)
    grads = [param.grad for param in params]
    print(f"1. hot, {len(params)} BN layers, {channels} channels (microseconds a call)")
    rows = [
        ("TruncationPlan()", plan),
        ("  backend check (cpp_runs_cpu_ops)", ops.cpp_runs_cpu_ops),
        ("  the C++ call alone (NativeTruncationPlan)", plan._native),
        ("  the same channels as one tensor (kernel + fixed cost)", one_tensor),
        ("  a 1-element plan (the fixed cost of a call)", one_element),
        ("[p.grad for p in params]", lambda: [param.grad for param in params]),
        ("torch.ops.sparseticket.truncate_grads_ (dispatcher + Python kernel route)",
         lambda: torch.ops.sparseticket.truncate_grads_(grads, keep, params, 0.003, 1e-4)),
        ("torch.ops.sparseticket_cpu.truncate_grads_ (dispatcher, list conversion, C++ checks)",
         lambda: torch.ops.sparseticket_cpu.truncate_grads_(grads, keep, params, 0.003, 1e-4)),
    ]
    for name, function in rows:
        print(f"   {name:90s} {hot_us(function, 3000 if 'torch.ops' in name else 20000):7.2f}")


def cold_breakdown(steps: int = 200) -> None:
    data = load_digits_split()
    images, labels = data.train_images[:64], data.train_labels[:64]
    model = vgg_small()
    tracker = EarlyBird(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    tracker.after_backward()
    plan = tracker._l1_plan
    calls = {"EarlyBird.after_backward()": tracker.after_backward, "TruncationPlan()": plan,
             "the C++ call alone": plan._native, "torch.empty(0)": lambda: torch.empty(0),
             "a Python no-op": lambda: None}
    times: dict[str, list[float]] = {name: [] for name in calls}

    def step(name: str) -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        start = time.perf_counter()
        calls[name]()
        times[name].append(time.perf_counter() - start)
        optimizer.step()

    for _ in range(5):
        step("EarlyBird.after_backward()")
    for values in times.values():
        values.clear()
    for _ in range(steps):
        for name in calls:
            step(name)
    print(f"2. cold: right after the backward of the small VGG ({len(tracker.layers)} BN layers), "
          f"median of {steps} steps (microseconds)")
    for name, values in times.items():
        print(f"   {name:40s} {statistics.median(values) * 1e6:7.2f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    hot_breakdown()
    cold_breakdown()
