"""Per-step overhead of the methods' hooks: a CPU training step of the small VGG on digits with
and without ``after_backward``, and the hook alone (its median over the plain step's median is
the overhead; whole-step differences drown in this machine's noise).

Run: ``pytest benchmarks/test_step_overhead.py --benchmark-only --benchmark-group-by=group``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseticket.experiments.data import load_digits_split
from sparseticket.experiments.models import vgg_small
from sparseticket.methods import WORM, EarlyBird


def _worm_truncating(model: nn.Module) -> WORM:
    worm = WORM(model, queue=2, trigger=1.0)
    worm.epoch_end()
    worm.epoch_end()  # full queue of identical masks: triggered
    assert worm.truncating
    return worm


@pytest.mark.parametrize("hook", ["none", "earlybird", "worm_truncating", "earlybird_hook_only",
                                  "worm_truncating_hook_only"])
def test_training_step(benchmark, hook):
    torch.manual_seed(0)
    data = load_digits_split()
    images, labels = data.train_images[:64], data.train_labels[:64]
    model = vgg_small(width=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    method = hook.removesuffix("_hook_only")
    after_backward = {"none": lambda: None, "earlybird": EarlyBird(model).after_backward,
                      "worm_truncating": _worm_truncating(model).after_backward}[method]
    benchmark.group = "training step, small VGG, batch 64 (digits)"
    if hook.endswith("_hook_only"):  # the hook alone, on the gradients of one real step
        nn.functional.cross_entropy(model(images), labels).backward()
        benchmark(after_backward)
        return

    def step():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        after_backward()
        optimizer.step()

    benchmark(step)
