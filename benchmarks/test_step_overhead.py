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
from sparseticket.methods import IMP, WORM, EarlyBird, GemMiner


def _worm_truncating(model: nn.Module) -> WORM:
    worm = WORM(model, queue=2, trigger=1.0)
    worm.epoch_end()
    worm.epoch_end()  # full queue of identical masks: triggered
    assert worm.truncating
    return worm


@pytest.mark.parametrize("hook", ["none", "earlybird", "worm_truncating", "earlybird_hook_only",
                                  "worm_truncating_hook_only", "imp", "imp_hook_only", "gemminer"])
def test_training_step(benchmark, hook):
    torch.manual_seed(0)
    data = load_digits_split()
    images, labels = data.train_images[:64], data.train_labels[:64]
    model = vgg_small(width=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    benchmark.group = "training step, small VGG, batch 64 (digits)"
    method = hook.removesuffix("_hook_only")
    if method == "gemminer":  # scores instead of weights: masked forward, fused score step
        miner = GemMiner(model, density=0.05, epochs=10)

        def mining_step():
            nn.functional.cross_entropy(model(images), labels).backward()
            miner.step()

        benchmark(mining_step)
        return
    if method == "imp":
        imp = IMP(model)
        imp.prune_round()

        def imp_hooks():
            imp.after_backward()
            imp.after_step()

        after_backward = imp_hooks
    else:
        after_backward = {"none": lambda: None, "earlybird": EarlyBird(model).after_backward,
                          "worm_truncating": _worm_truncating(model).after_backward}[method]
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
