"""Calls that used to be silent or fail late: meta-device models, hooks before backward, a miner
finished before its mask reached the density asked (issue: hostile input at the API level)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from sparseticket.builtin.models import vgg_small
from sparseticket.methods import IMP, WORM, EarlyBird, GemMiner
from sparseticket.methods.gemminer import MiningWarning

MAKERS = {
    "IMP": lambda model: IMP(model),
    "EarlyBird": lambda model: EarlyBird(model),
    "WORM": lambda model: WORM(model),
    "GemMiner": lambda model: GemMiner(model, density=0.5, epochs=3, period=1),
}


@pytest.mark.parametrize("method", list(MAKERS))
def test_a_meta_device_model_is_refused_at_construction(method):
    with torch.device("meta"):
        model = vgg_small(width=4)
    with pytest.raises(ValueError, match=rf"{method}: the model's parameter '.*' is on the meta device"):
        MAKERS[method](model)


@pytest.mark.parametrize("method", list(MAKERS))
def test_a_materialized_model_is_accepted(method):
    with torch.device("meta"):
        model = vgg_small(width=4)
    model.to_empty(device="cpu")
    for parameter in model.parameters():
        nn.init.normal_(parameter)
    for buffer in model.buffers():
        buffer.zero_()
    MAKERS[method](model)


def _batch(model: nn.Module) -> None:
    torch.manual_seed(0)
    nn.functional.cross_entropy(model(torch.rand(4, 1, 8, 8)), torch.tensor([0, 1, 2, 3])).backward()


@pytest.mark.parametrize("method", ["IMP", "EarlyBird", "WORM"])
def test_after_backward_before_any_backward_raises(method):
    torch.manual_seed(0)
    model = vgg_small(width=4)
    tracker = MAKERS[method](model)
    if method == "IMP":
        tracker.prune_round()
    with pytest.raises(RuntimeError, match="after loss.backward"):
        tracker.after_backward()
    _batch(model)
    tracker.after_backward()  # with gradients: fine


def test_imp_after_backward_masks_the_gradients_that_exist():
    """Some weights without a gradient (frozen layers) are not an error; the others are masked."""
    torch.manual_seed(0)
    model = vgg_small(width=4)
    imp = IMP(model)
    imp.prune_round()
    first = imp.weights[0]
    first.requires_grad_(False)
    _batch(model)
    imp.after_backward()
    assert first.grad is None
    for weight, mask in zip(imp.weights[1:], imp.masks[1:]):
        assert (weight.grad[~mask] == 0).all()


def test_gemminer_finished_early_warns_and_says_how_far_it_got():
    torch.manual_seed(0)
    model = vgg_small(width=4)
    miner = GemMiner(model, density=0.1, epochs=3, period=1)
    with pytest.warns(MiningWarning, match=r"keeps 1\.0000 of the weights, not the 0\.1 asked: 0 of 2 freezing"):
        ticket = miner.finish()
    assert ticket.density() == 1.0


def test_gemminer_finished_on_schedule_does_not_warn():
    torch.manual_seed(0)
    model = vgg_small(width=4)
    miner = GemMiner(model, density=0.1, epochs=3, period=1)
    for _ in range(3):
        _batch(model)
        miner.step()
        miner.epoch_end()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MiningWarning)
        ticket = miner.finish()
    assert ticket.density() <= 0.1 + 1e-3
