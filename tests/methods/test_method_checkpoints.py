"""Method checkpoints: stop after k epochs, torch.save, resume on fresh objects == an uninterrupted run, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sparseticket.builtin.data import load_digits_split
from sparseticket.builtin.models import vgg_small
from sparseticket.methods import METHODS, WORM, EarlyBird, channel_methods
from sparseticket.methods.gemminer import GemMiner
from sparseticket.methods.imp import IMP

SEED = 0
SAMPLES, BATCH = 256, 32
DIGITS = load_digits_split(seed=SEED)
IMAGES, LABELS = DIGITS.train_images[:SAMPLES], DIGITS.train_labels[:SAMPLES]


@dataclass
class Run:
    """One training run: the model, the method, the optimizer/scheduler if any, per-epoch losses."""

    model: nn.Module
    method: Any
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any | None = None
    losses: list[float] = field(default_factory=list)


def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of ``epoch``: their order depends only on (SEED, epoch)."""
    order = torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(SEED * 1000 + epoch))
    return [(IMAGES[part], LABELS[part]) for part in order.split(BATCH)]


def sgd_epoch(run: Run, epoch: int, after_backward: Callable[[], None], after_step: Callable[[], None]) -> None:
    """One epoch of SGD with the method's hooks; the summed loss goes to ``run.losses``."""
    run.model.train()
    total = 0.0
    for images, labels in batches(epoch):
        run.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(run.model(images), labels)
        loss.backward()
        after_backward()
        run.optimizer.step()
        after_step()
        total += loss.item()
    run.losses.append(total)


def checkpoint(run: Run) -> dict[str, Any]:
    """What a CLI saves every epoch."""
    return {
        "model": run.model.state_dict(),
        "optimizer": None if run.optimizer is None else run.optimizer.state_dict(),
        "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
        "method": run.method.state_dict(),
        "losses": list(run.losses),
    }


def restore(run: Run, state: dict[str, Any]) -> None:
    """What a CLI does on ``--resume``, on freshly built objects."""
    run.model.load_state_dict(state["model"])
    if run.optimizer is not None:
        run.optimizer.load_state_dict(state["optimizer"])
    if run.scheduler is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    if isinstance(run.method, IMP):
        run.method.load_state_dict(state["method"], run.optimizer, run.scheduler)
    else:
        run.method.load_state_dict(state["method"])
    run.losses = state["losses"]


def run_with_resume(build: Callable[[], Run], step: Callable[[Run, int], None], total: int, stop: int,
                    path: Path) -> Run:
    """Run units [0, stop), checkpoint to ``path``, resume fresh objects from it, run [stop, total)."""
    run = build()
    for unit in range(stop):
        step(run, unit)
    torch.save(checkpoint(run), path)
    resumed = build()
    restore(resumed, torch.load(path, weights_only=True))
    for unit in range(stop, total):
        step(resumed, unit)
    return resumed


def run_through(build: Callable[[], Run], step: Callable[[Run, int], None], total: int) -> Run:
    """The uninterrupted reference run."""
    run = build()
    for unit in range(total):
        step(run, unit)
    return run


def assert_identical(actual: Any, expected: Any, where: str = "state") -> None:
    """Nested dicts/lists/tensors/values equal exactly (tensors: same dtype, shape and bits)."""
    assert type(actual) is type(expected), where
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{where}[{index}]")
    else:
        assert actual == expected, where


def assert_same_run(resumed: Run, reference: Run) -> None:
    """Same weights, buffers, optimizer/scheduler state, method state and losses."""
    assert_identical(checkpoint(resumed), checkpoint(reference))


def fresh_model(width: int = 8) -> nn.Module:
    """vgg_small with a fixed initialization."""
    torch.manual_seed(SEED)
    return vgg_small(width=width)


# ------------------------------------------------------------------ EarlyBird / WORM
EB_EPOCHS = 8
EB_SETTINGS = {"ratio": 0.5, "l1": 1e-3, "queue": 3, "eps": 0.1}


def build_earlybird(cls: type[EarlyBird]) -> Run:
    """vgg_small, SGD with momentum and a channel tracker of class ``cls``."""
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    settings = {**EB_SETTINGS, "trigger": 0.15, "truncate_filters": True} if cls is WORM else EB_SETTINGS
    return Run(model, cls(model, **settings), optimizer)


def earlybird_epoch(run: Run, epoch: int) -> None:
    """Train one epoch with the L1/truncation hook, then record the epoch's mask."""
    sgd_epoch(run, epoch, run.method.after_backward, lambda: None)
    run.method.epoch_end()


@pytest.mark.parametrize("cls", [METHODS[name] for name in channel_methods()], ids=channel_methods())
@pytest.mark.parametrize("stop", [1, 3, 5, 7])
def test_earlybird_and_worm_resume_bit_for_bit(cls, stop, tmp_path):
    build = partial(build_earlybird, cls)
    reference = run_through(build, earlybird_epoch, EB_EPOCHS)
    assert reference.method.found_epoch is not None and reference.method.found_epoch < EB_EPOCHS
    if cls is WORM:
        assert reference.method.trigger_epoch is not None and reference.method.trigger_epoch < EB_EPOCHS
    resumed = run_with_resume(build, earlybird_epoch, EB_EPOCHS, stop, tmp_path / "run.pt")
    assert_same_run(resumed, reference)
    assert resumed.method.found_epoch == reference.method.found_epoch
    assert resumed.method.history == reference.method.history
    assert_identical(resumed.method.channel_mask(), reference.method.channel_mask())
    if cls is WORM:
        assert resumed.method.trigger_epoch == reference.method.trigger_epoch
        assert_identical(resumed.method.static_channels(), reference.method.static_channels())


def test_earlybird_several_ratios_resume(tmp_path):
    def build() -> Run:
        model = fresh_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return Run(model, EarlyBird(model, **{**EB_SETTINGS, "ratio": [0.3, 0.5]}), optimizer)

    reference = run_through(build, earlybird_epoch, 5)
    resumed = run_with_resume(build, earlybird_epoch, 5, 2, tmp_path / "run.pt")
    assert_same_run(resumed, reference)
    assert resumed.method.found_epoch == reference.method.found_epoch


def test_earlybird_state_mismatches_raise():
    model = fresh_model()
    eb_state = EarlyBird(model, **EB_SETTINGS).state_dict()
    worm_state = WORM(model, **EB_SETTINGS).state_dict()
    with pytest.raises(ValueError, match="WORM.load_state_dict: state of method 'earlybird'"):
        WORM(fresh_model(), **EB_SETTINGS).load_state_dict(eb_state)
    with pytest.raises(ValueError, match="EarlyBird.load_state_dict: state of method 'worm'"):
        EarlyBird(fresh_model(), **EB_SETTINGS).load_state_dict(worm_state)
    with pytest.raises(ValueError, match="state of method 'Tensor'"):
        EarlyBird(fresh_model(), **EB_SETTINGS).load_state_dict(torch.zeros(3))
    with pytest.raises(ValueError, match="mismatch"):
        EarlyBird(fresh_model(width=4), **EB_SETTINGS).load_state_dict(eb_state)
    with pytest.raises(ValueError, match="mismatch"):
        EarlyBird(fresh_model(), **{**EB_SETTINGS, "ratio": [0.5, 0.7]}).load_state_dict(eb_state)
    with pytest.raises(ValueError, match="mismatch"):
        EarlyBird(fresh_model(), **{**EB_SETTINGS, "queue": 4}).load_state_dict(eb_state)


# ------------------------------------------------------------------ GemMiner
GM_EPOCHS = 6


def build_gemminer(width: int = 8) -> Run:
    """vgg_small under Gem-Miner scores (two freezing rounds: after epochs 2 and 4)."""
    model = fresh_model(width)
    return Run(model, GemMiner(model, density=0.2, epochs=GM_EPOCHS, period=2, seed=SEED))


def gemminer_epoch(run: Run, epoch: int) -> None:
    """One epoch of fused score steps, then the freezing schedule."""
    run.model.train()
    total = 0.0
    for images, labels in batches(epoch):
        loss = nn.functional.cross_entropy(run.model(images), labels)
        loss.backward()
        run.method.step()
        total += loss.item()
    run.losses.append(total)
    run.method.epoch_end()


@pytest.mark.parametrize("stop", [1, 2, 3, 5])
def test_gemminer_resume_bit_for_bit(stop, tmp_path):
    reference = run_through(build_gemminer, gemminer_epoch, GM_EPOCHS)
    assert reference.method.density == pytest.approx(0.2, abs=1e-3)
    resumed = run_with_resume(build_gemminer, gemminer_epoch, GM_EPOCHS, stop, tmp_path / "run.pt")
    assert_same_run(resumed, reference)
    assert any(".parametrizations.weight.original" in key for key in checkpoint(resumed)["model"])
    assert_identical(resumed.method.ticket().masks, reference.method.ticket().masks)
    assert_identical(resumed.method.ticket().scores, reference.method.ticket().scores)


def test_gemminer_state_mismatches_raise():
    state = build_gemminer().method.state_dict()
    with pytest.raises(ValueError, match="mismatch: scores"):
        build_gemminer(width=4).method.load_state_dict(state)
    with pytest.raises(ValueError, match="GemMiner.load_state_dict: state of method 'earlybird'"):
        build_gemminer().method.load_state_dict(EarlyBird(fresh_model()).state_dict())
    with pytest.raises(ValueError, match="IMP.load_state_dict: state of method 'gemminer'"):
        IMP(fresh_model()).load_state_dict(state)


# ------------------------------------------------------------------ IMP
IMP_EPOCHS, IMP_ROUNDS, REWIND_EPOCH = 3, 3, 1
# (round, epoch) of every training epoch: later rounds restart at the rewind epoch
IMP_SCHEDULE = [(0, epoch) for epoch in range(IMP_EPOCHS)] + [
    (round_, epoch) for round_ in range(1, IMP_ROUNDS) for epoch in range(REWIND_EPOCH, IMP_EPOCHS)]


def build_imp(width: int = 8) -> Run:
    """vgg_small, SGD with momentum and weight decay, a StepLR schedule, IMP rewinding to epoch 1."""
    model = fresh_model(width)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return Run(model, IMP(model, rate=0.3, rewind_step=REWIND_EPOCH * SAMPLES // BATCH), optimizer, scheduler)


def imp_epoch(run: Run, unit: int) -> None:
    """Schedule entry ``unit``: capture at the rewind epoch of round 0; prune and rewind at a round's end."""
    round_, epoch = IMP_SCHEDULE[unit]
    assert run.method.round == round_
    if round_ == 0 and epoch == REWIND_EPOCH:
        run.method.capture(run.optimizer, run.scheduler)
    sgd_epoch(run, epoch, run.method.after_backward, run.method.after_step)
    run.scheduler.step()
    if epoch == IMP_EPOCHS - 1:
        run.method.prune_round()
        if round_ < IMP_ROUNDS - 1:
            run.method.rewind()


@pytest.mark.parametrize("stop", [1, 2, 3, 4, 6])
def test_imp_resume_bit_for_bit(stop, tmp_path):
    total = len(IMP_SCHEDULE)
    reference = run_through(build_imp, imp_epoch, total)
    assert reference.method.round == IMP_ROUNDS
    resumed = run_with_resume(build_imp, imp_epoch, total, stop, tmp_path / "run.pt")
    assert_same_run(resumed, reference)
    assert_identical(resumed.method.ticket().masks, reference.method.ticket().masks)
    assert resumed.method.density == reference.method.density < 0.5


def test_imp_state_mismatches_raise():
    run = build_imp()
    run.method.capture(run.optimizer, run.scheduler)
    state = run.method.state_dict()
    with pytest.raises(ValueError, match="mismatch: masks"):
        build_imp(width=4).method.load_state_dict(state)
    with pytest.raises(ValueError, match="pass the optimizer"):
        IMP(fresh_model()).load_state_dict(state)
    with pytest.raises(ValueError, match="IMP.load_state_dict: state of method 'gemminer'"):
        IMP(fresh_model()).load_state_dict({**state, "method": "gemminer"})
    captured_other = {**state, "captured": {**state["captured"], "model": {}}}
    with pytest.raises(ValueError, match="captured model state"):
        IMP(fresh_model()).load_state_dict(captured_other, run.optimizer, run.scheduler)
