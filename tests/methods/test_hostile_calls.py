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


# ------------------------------------------------------------------ EarlyBird/WORM: NaN and ties
def _set_gammas(model: nn.Module, values: torch.Tensor) -> None:
    """Write ``values`` into the BN gammas of ``model`` in module order."""
    start = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(values[start:start + module.num_features])
                start += module.num_features


def _channels(model: nn.Module) -> int:
    return sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("method", ["EarlyBird", "WORM"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_diverged_model_is_refused_not_made_a_ticket(method, bad):
    torch.manual_seed(0)
    model = vgg_small(width=4)
    tracker = MAKERS[method](model)
    values = torch.rand(_channels(model)) + 0.5
    values[5] = bad
    _set_gammas(model, values)
    with pytest.raises(ValueError, match=r"scales of '.*' contain NaN or inf at epoch 1: training diverged"):
        tracker.epoch_end()


def _kept(tracker: EarlyBird) -> torch.Tensor:
    return torch.cat(list(tracker.channel_mask().values()))


def test_distinct_scales_prune_k_plus_one_as_the_authors_code():
    """int(n * ratio) = k: the k + 1 smallest |gamma| are pruned (the authors' y[k] threshold, kept > it)."""
    torch.manual_seed(0)
    model = vgg_small(width=4)
    n = _channels(model)
    values = torch.randperm(n).float() + 1.0
    _set_gammas(model, values)
    tracker = EarlyBird(model, ratio=0.5)
    tracker.epoch_end()
    k = int(n * 0.5)
    assert torch.equal(_kept(tracker), values > k + 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tied_scales_keep_the_requested_fraction_by_index_and_warn(dtype):
    """All gammas equal (bfloat16 gammas that never moved off 1.0, or an untrained model): the
    k + 1 tied channels of lowest index are pruned, the rest kept, and a warning says why."""
    torch.manual_seed(0)
    model = vgg_small(width=4).to(dtype)
    n = _channels(model)
    tracker = EarlyBird(model, ratio=0.5)
    match = "chosen by index" + (".*bfloat16: updates below its resolution are lost" if dtype == torch.bfloat16 else "")
    with pytest.warns(UserWarning, match=match):
        tracker.epoch_end()
    k = int(n * 0.5)
    expected = torch.arange(n) > k
    assert torch.equal(_kept(tracker), expected)
    assert 0 < int(expected.sum()) < n


def test_partial_ties_at_the_threshold_are_broken_by_index():
    """Scales 1..n with a run of ties across the threshold: exactly k + 1 pruned, the tied ones of
    lowest index first."""
    torch.manual_seed(0)
    model = vgg_small(width=4)
    n = _channels(model)
    k = int(n * 0.5)
    values = torch.arange(n, dtype=torch.float32) + 1.0
    values[k - 2:k + 3] = 100.0  # five ties around position k: 3 of them must go
    values[k + 3:] += 200.0
    _set_gammas(model, values)
    tracker = EarlyBird(model, ratio=0.5)
    tracker.epoch_end()
    kept = _kept(tracker)
    assert int((~kept).sum()) == k + 1
    assert torch.equal(kept[k - 2:k + 3], torch.tensor([False, False, False, True, True]))


def test_the_original_convention_prunes_every_tie_as_the_authors_code():
    torch.manual_seed(0)
    model = vgg_small(width=4)
    tracker = EarlyBird(model, ratio=0.5, convention="original")
    with pytest.warns(UserWarning, match="prunes every one of them"):
        tracker.epoch_end()
    assert not bool(_kept(tracker).any())
