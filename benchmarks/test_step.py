"""The whole training step with each method attached, against the same dense step, at real model sizes (CPU).

Run: ``pytest benchmarks/test_step.py --benchmark-only`` (or ``python benchmarks/run.py``, which
writes the table into RESULTS.md).

Each test builds one model twice from the same initialization: a dense copy and a copy with the
method attached, each with ``SGD(momentum=0.9, weight_decay=1e-4, fused=True)`` (torch's fastest
SGD step on CPU). A step is
``zero_grad``, forward, loss, backward, the method's hooks and ``optimizer.step()``; Gem-Miner's
mining step is forward, backward and ``gm.step()`` (its fused score update replaces the optimizer;
``defer_backward=True``, as the search driver runs it).

The two steps are interleaved (pytest-benchmark's untimed ``setup`` of every round runs and times
one dense step), so slow drifts of the machine hit both alike. ``extra_info`` keeps:

- ``overhead``: median over rounds of (method step / dense step of the same round) - 1, with its
  quartiles ``overhead_q1``/``overhead_q3`` (the spread across rounds) and ``overhead_ci``, a
  distribution-free 95% confidence interval of that median (IMP's fused swap runs ``IMP_ROUNDS``, enough
  rounds for an interval about as narrow as its 0.5% target);
- ``hook_share``: the median time of the method's per-step hooks, timed inside its own steps
  (where they run), over the dense step's median: the overhead free of whole-step noise, for hooks
  far below it;
- ``optimizer_step_ratio``: the median time of the method's optimizer step over the dense step's,
  both timed inside their whole steps (IMP's swap: the fused masked SGD step against torch's fused one);
- ``parts_overhead`` (with ``parts_overhead_ci``): per round, (the method's optimizer step + its hooks -
  the dense optimizer step) over that round's dense step, median and 95% interval; only where the
  forward and backward run the dense model's code (``same_forward``), so that these are the only
  parts that differ: the overhead without the forward and backward's step-to-step noise.

IMP runs two ways: ``imp``, with ``imp.optimizer(optimizer)`` (the fused masked SGD step replaces
torch's: no hook runs), and ``imp_two_pass``, torch's SGD plus the two masking passes (zero the pruned
gradients, zero the pruned weights after the step) that any other optimizer still needs.

Models (batch and input kept small so a step stays well under a second on 2 cores):
ResNet-50 (Hugging Face ``ResNetForImageClassification``, 1000 classes, batch 4 at 64x64; also
in ``channels_last``),
BERT-base shapes (the package's transformer with 12 blocks, width 768, 12 heads, FFN 3072, 128
tokens, batch 1; EarlyBird/WORM slim it with ``attach_slimming``), ResNet-20 (batch 64 at 32x32)
the built-in small VGG (digits, batch 64) and, for IMP, MLP-32 (32 Linear(256, 256) layers, batch 8).
``test_gemminer_step_by_depth`` sets Gem-Miner against the dense step of a width-256 MLP (batch 8)
of 2, 8 and 32 layers.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from conftest import median_with_interval
from torch import nn

from sparseticket.builtin.data import load_digits_split
from sparseticket.builtin.models import resnet20, vgg_small
from sparseticket.builtin.transformer_model import TinyTransformer
from sparseticket.methods import IMP, WORM, EarlyBird, GemMiner, attach_slimming

ROUNDS = {"resnet50": 30, "resnet50_channels_last": 30, "bert_base": 16, "resnet20": 30, "vgg_small": 300,
          "mlp32": 300}
# IMP's whole-step target (<= 0.5%) is below the step-to-step spread (quartiles about +-4% at ResNet-50):
# its fused-swap rows take enough rounds that the median's 95% interval is about +-0.5%.
IMP_ROUNDS = {"resnet50": 300, "resnet50_channels_last": 60, "bert_base": 120, "resnet20": 60, "vgg_small": 600,
              "mlp32": 2000}
METHODS = ("earlybird", "worm_truncating", "imp", "imp_two_pass", "gemminer")


@dataclass
class Case:
    """A model factory and one batch."""

    build: Callable[[], nn.Module]
    inputs: torch.Tensor
    labels: torch.Tensor
    transformer: bool = False


def _resnet50() -> Case:
    from transformers import ResNetConfig, ResNetForImageClassification

    generator = torch.Generator().manual_seed(0)

    class Logits(nn.Module):  # the Hugging Face output object -> plain logits
        def __init__(self) -> None:
            super().__init__()
            self.net = ResNetForImageClassification(ResNetConfig(num_labels=1000))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(pixel_values=x).logits

    return Case(Logits, torch.randn(4, 3, 64, 64, generator=generator),
                torch.randint(0, 1000, (4,), generator=generator))


def _resnet50_channels_last() -> Case:
    """ResNet-50 as above in ``channels_last`` (weights and inputs): the methods' masks follow."""
    case = _resnet50()
    return Case(lambda: case.build().to(memory_format=torch.channels_last),
                case.inputs.to(memory_format=torch.channels_last), case.labels)


def _bert_base() -> Case:
    generator = torch.Generator().manual_seed(0)
    tokens, token_dim = 128, 64

    def build() -> nn.Module:
        return TinyTransformer(tokens * token_dim, 2, dim=768, heads=12, ffn=3072, layers=12, tokens=tokens)

    return Case(build, torch.randn(1, tokens * token_dim, generator=generator),
                torch.randint(0, 2, (1,), generator=generator), transformer=True)


def _resnet20() -> Case:
    generator = torch.Generator().manual_seed(0)
    return Case(resnet20, torch.randn(64, 3, 32, 32, generator=generator),
                torch.randint(0, 10, (64,), generator=generator))


def _vgg_small() -> Case:
    data = load_digits_split()
    return Case(vgg_small, data.train_images[:64], data.train_labels[:64])


def _mlp(layers: int) -> Case:
    """An MLP of ``layers`` Linear(256, 256)+ReLU blocks and a Linear(256, 10) head, batch 8."""
    generator = torch.Generator().manual_seed(0)
    return Case(lambda: nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.ReLU()) for _ in range(layers)],
                                      nn.Linear(256, 10)),
                torch.randn(8, 256, generator=generator), torch.randint(0, 10, (8,), generator=generator))


CASES = {"resnet50": _resnet50, "resnet50_channels_last": _resnet50_channels_last, "bert_base": _bert_base,
         "resnet20": _resnet20, "vgg_small": _vgg_small, "mlp32": lambda: _mlp(32)}


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """torch's fastest SGD here: ``fused=True`` (one multi-tensor kernel; faster than foreach on CPU)."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                           weight_decay=1e-4, fused=True)


def _training_step(model: nn.Module, case: Case, hooks: Callable[[], None] | None = None,
                   after_step: Callable[[], None] | None = None,
                   hook_times: list[float] | None = None,
                   optimizer: torch.optim.Optimizer | None = None,
                   step_times: list[float] | None = None) -> Callable[[], None]:
    """zero_grad, forward, loss, backward, ``hooks``, optimizer step, ``after_step``; the time spent
    in the hooks (both) is appended to ``hook_times``, the optimizer step's to ``step_times``, at every step."""
    optimizer = optimizer if optimizer is not None else _optimizer(model)

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(case.inputs), case.labels).backward()
        spent = 0.0
        if hooks is not None:
            start = time.perf_counter()
            hooks()
            spent += time.perf_counter() - start
        start = time.perf_counter()
        optimizer.step()
        if step_times is not None:
            step_times.append(time.perf_counter() - start)
        if after_step is not None:
            start = time.perf_counter()
            after_step()
            spent += time.perf_counter() - start
        if hook_times is not None:
            hook_times.append(spent)

    return step


def _worm_truncating(model: nn.Module) -> WORM:
    worm = WORM(model, queue=2, trigger=1.0)
    worm.epoch_end()
    worm.epoch_end()  # a full queue of identical masks: triggered
    assert worm.truncating
    return worm


@dataclass
class TimedStep:
    """A whole training step and the lists it appends its parts' times to, each step (None: not timed)."""

    step: Callable[[], None]
    hook_times: list[float] | None = None
    step_times: list[float] | None = None  # the optimizer step's own time


def _dense_step(model: nn.Module, case: Case) -> TimedStep:
    """The dense step: torch's fused SGD, its optimizer step timed."""
    step_times: list[float] = []
    return TimedStep(_training_step(model, case, step_times=step_times), None, step_times)


def _method_step(method: str, model: nn.Module, case: Case) -> TimedStep:
    """The whole step with ``method`` attached to ``model``, its hooks and optimizer step timed."""
    if method == "gemminer":
        miner = GemMiner(model, density=0.05, epochs=10, defer_backward=True)  # as the search driver runs it

        def mining_step() -> None:
            nn.functional.cross_entropy(model(case.inputs), case.labels).backward()
            miner.step()

        return TimedStep(mining_step)
    hook_times: list[float] = []
    step_times: list[float] = []
    if method == "imp":  # the fused masked SGD step in place of the optimizer's: no hooks at all
        imp = IMP(model)
        imp.prune_round()
        fused = imp.optimizer(_optimizer(model))
        return TimedStep(_training_step(model, case, imp.after_backward, imp.after_step, hook_times, fused,
                                        step_times), hook_times, step_times)
    if method == "imp_two_pass":  # torch's SGD and IMP's two masking passes (any optimizer; IMP before the swap)
        imp = IMP(model)
        imp.prune_round()
        return TimedStep(_training_step(model, case, imp.zero_pruned_gradients, imp.apply_masks, hook_times,
                                        step_times=step_times), hook_times, step_times)
    if case.transformer:
        attach_slimming(model)
    tracker = EarlyBird(model) if method == "earlybird" else _worm_truncating(model)
    return TimedStep(_training_step(model, case, tracker.after_backward, hook_times=hook_times,
                                    step_times=step_times), hook_times, step_times)


def same_forward(case: Case, method: str) -> bool:
    """Whether the method's forward and backward run the dense model's code, so that only its optimizer
    step and hooks differ: not for Gem-Miner (masked weights), nor for EarlyBird/WORM on a transformer
    (slimming coefficients are attached to it)."""
    return method != "gemminer" and not (case.transformer and method in ("earlybird", "worm_truncating"))


def _measure(benchmark, dense: TimedStep, attached: TimedStep, rounds: int, same: bool, **info: object) -> None:
    """Time ``attached.step`` with pytest-benchmark, one dense step in the untimed setup of every round,
    and keep in ``extra_info``: the paired ratios' median with its 95% interval and quartiles, the
    hooks' own time (measured inside the method's steps, where they run: right after that model's
    backward and optimizer step) and the method's optimizer step over the dense one's."""
    for _ in range(2):  # warm-up: allocations, the plans' first calls
        dense.step()
        attached.step()
    dense_times: list[float] = []
    for times in (attached.hook_times, attached.step_times, dense.step_times):
        if times is not None:
            times.clear()

    def time_dense_step() -> None:
        start = time.perf_counter()
        dense.step()
        dense_times.append(time.perf_counter() - start)

    benchmark.pedantic(attached.step, setup=time_dense_step, rounds=rounds, iterations=1, warmup_rounds=0)
    method_times = list(benchmark.stats.stats.data)
    overhead = median_with_interval([m / d - 1 for m, d in zip(method_times, dense_times[-len(method_times):])])
    dense_median = statistics.median(dense_times)
    hook_median = statistics.median(attached.hook_times) if attached.hook_times else None
    step_ratio, parts = None, None
    if attached.step_times and dense.step_times:
        step_ratio = statistics.median(attached.step_times) / statistics.median(dense.step_times)
    if attached.step_times and dense.step_times and same:
        # the parts of the step that differ (optimizer step and hooks; the forward and backward run the same
        # code), per round over that round's dense step: the overhead without the forward/backward's noise
        count = len(method_times)
        hooks = attached.hook_times[-count:] if attached.hook_times else [0.0] * count
        parts = median_with_interval([(step + hook - dense_step) / whole for step, hook, dense_step, whole in zip(
            attached.step_times[-count:], hooks, dense.step_times[-count:], dense_times[-count:])])
    benchmark.extra_info.update({
        **info, "rounds": rounds,
        "dense_median": dense_median, "method_median": statistics.median(method_times),
        "overhead": overhead["median"], "overhead_q1": overhead["q1"], "overhead_q3": overhead["q3"],
        "overhead_ci": [overhead["ci_low"], overhead["ci_high"]],
        "hook_median": hook_median, "hook_share": hook_median / dense_median if hook_median else None,
        "optimizer_step_ratio": step_ratio,
        "parts_overhead": None if parts is None else parts["median"],
        "parts_overhead_ci": None if parts is None else [parts["ci_low"], parts["ci_high"]],
    })


@pytest.mark.parametrize(("model_name", "method"), [
    (model_name, method) for model_name in CASES for method in METHODS
    if model_name != "mlp32" or method.startswith("imp")])  # no BN for EarlyBird/WORM; Gem-Miner's below
def test_training_step(benchmark, model_name, method):
    case = CASES[model_name]()
    torch.manual_seed(0)
    dense_model = case.build()
    method_model = copy.deepcopy(dense_model)
    benchmark.group = f"training step: {model_name}"
    rounds = IMP_ROUNDS[model_name] if method == "imp" else ROUNDS[model_name]
    _measure(benchmark, _dense_step(dense_model, case), _method_step(method, method_model, case), rounds,
             same_forward(case, method), method=method, model=model_name)


@pytest.mark.parametrize("layers", [2, 8, 32])
def test_gemminer_step_by_depth(benchmark, layers):
    """Gem-Miner's mining step against the dense step of an MLP (width 256, batch 8) of 2, 8 and 32
    layers: the cost per layer must not grow with the depth (it did: each layer's score slice once
    zero-filled a gradient the size of all the scores)."""
    case = _mlp(layers)
    torch.manual_seed(0)
    dense_model = case.build()
    method_model = copy.deepcopy(dense_model)
    benchmark.group = "training step: mlp by depth"
    _measure(benchmark, _dense_step(dense_model, case), _method_step("gemminer", method_model, case), 400,
             False, method="gemminer", model=f"mlp{layers}")
