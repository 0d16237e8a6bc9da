"""GemMiner: straight-through scores, the freezing schedule, exact final density, finish/fine-tune."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparseticket.builtin.models import vgg_small
from sparseticket.methods.gemminer import GemMiner, MiningWarning, freezing_steps


def _mine(model, miner, epochs, batches=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _epoch in range(1, epochs + 1):
        for _ in range(batches):
            images = torch.rand(16, 1, 8, 8, generator=generator)
            labels = torch.randint(0, 10, (16,), generator=generator)
            nn.functional.cross_entropy(model(images), labels).backward()
            miner.step()
            assert 0 <= miner.scores.min() and miner.scores.max() <= 1
        miner.epoch_end()
        history.append((miner.flags.clone(), miner.scores.detach().clone(), miner.density))
    return history


def test_straight_through_gradient_reaches_scores():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3, bias=False)
    weight = layer.weight.detach().clone()
    miner = GemMiner(nn.Sequential(layer), density=0.5, epochs=6, period=5, seed=1)
    miner.flags[[1, 5]] = False
    x = torch.randn(5, 4)
    out = layer(x)
    keep = (miner.scores.detach() > 0.5) & miner.flags
    assert torch.equal(out, x @ (weight * keep.view(3, 4)).t())
    out.sum().backward()
    upstream = x.sum(dim=0).expand(3, 4)  # d(sum of outputs)/d(effective weight)
    expected = (upstream * weight).reshape(-1) * miner.flags
    torch.testing.assert_close(miner.scores.grad, expected)
    assert layer.parametrizations.weight.original.grad is None  # weights frozen


def test_schedule_matches_formula_and_ends_at_density():
    torch.manual_seed(0)
    model = vgg_small(width=4)
    epochs, period, density = 21, 5, 0.05
    miner = GemMiner(model, density=density, epochs=epochs, period=period, seed=0)
    total = miner.flags.numel()
    steps = freezing_steps(epochs, period)
    assert steps == 4
    history = _mine(model, miner, epochs, batches=1)
    # the authors' epochs: after 0-based epochs 5, 10, 15, 20 (e % 5 == 0 and e != 0), i.e. after
    # the 6th, 11th, 16th and 21st epoch of training
    rounds_done = [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5 + [4]
    for (flags, _, _live), rounds in zip(history, rounds_done, strict=True):
        assert int(flags.sum()) == round(total * density ** (rounds / steps))
    assert int(miner.flags.sum()) == round(total * density)
    # each round froze a fraction close to the rate 1 - d^(1/K) of the active weights
    rate = 1 - density ** (1 / steps)
    assert abs(history[5][2] - (1 - rate)) < 1 / total + 1e-9


def test_frozen_weights_never_come_back_and_keep_their_scores():
    torch.manual_seed(1)
    model = vgg_small(width=4)
    miner = GemMiner(model, density=0.2, epochs=11, period=5, seed=3)
    history = _mine(model, miner, 11)
    for (earlier_flags, earlier_scores, _), (later_flags, later_scores, _) in zip(history, history[1:]):
        assert not (later_flags & ~earlier_flags).any()
        frozen = ~earlier_flags
        assert torch.equal(later_scores[frozen], earlier_scores[frozen])


def test_freezes_lowest_scores_with_exact_count_on_ties():
    model = nn.Sequential(nn.Linear(5, 2, bias=False))
    miner = GemMiner(model, density=0.5, epochs=6, period=5)
    with torch.no_grad():
        miner.scores.copy_(torch.tensor([0.3, 0.1, 0.3, 0.9, 0.3, 0.8, 0.3, 0.7, 0.6, 0.2]))
    for _ in range(5):  # period 5: nothing is frozen after epochs 1..5
        miner.epoch_end()
    assert miner.flags.all()
    miner.epoch_end()  # after the 6th epoch (0-based epoch 5), as the authors' code
    # 10 -> 5 active: 0.1, 0.2 and the first three 0.3 ties (by position) are frozen
    assert miner.flags.tolist() == [False, False, False, True, False, True, True, True, True, False]


def test_finish_restores_initial_weights_and_finetuning_keeps_zeros():
    torch.manual_seed(2)
    model = vgg_small(width=4)
    initial = copy.deepcopy(model.state_dict())
    miner = GemMiner(model, density=0.1, epochs=6, period=5, seed=0)
    _mine(model, miner, 6)
    ticket = miner.finish()
    assert abs(ticket.density() - 0.1) < 1e-3 and ticket.method == "gemminer" and ticket.scores
    for name, parameter in model.named_parameters():
        expected = initial[name] * ticket.masks[name] if name in ticket.masks else initial[name]
        assert torch.equal(parameter.detach(), expected) and parameter.requires_grad
    mask_gradients = ticket.gradient_mask(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.rand(8, 1, 8, 8)).sum().backward()
        mask_gradients()
        optimizer.step()
    parameters = dict(model.named_parameters())
    for name, mask in ticket.masks.items():
        assert (parameters[name].detach()[~mask] == 0).all()


def test_exclude_output_and_bad_arguments():
    model = vgg_small(width=4)
    miner = GemMiner(model, density=0.5, epochs=6, exclude=("output",))
    assert "15.weight" not in miner.slices and list(miner.slices)[-1] == "10.weight"  # 15 = classifier
    for bad in ({"density": 0.0}, {"density": 1.5}, {"epochs": 0}, {"period": 0}, {"lr": -1.0},
                {"epochs": 5, "period": 5}):
        arguments = {"density": 0.5, "epochs": 6, **bad}
        with pytest.raises(ValueError):
            GemMiner(vgg_small(width=4), **arguments)
    with pytest.raises(RuntimeError, match="no score gradient"):
        GemMiner(vgg_small(width=4), density=0.5, epochs=6).step()


def _mine_digits(lr: float) -> tuple[GemMiner, list]:
    import warnings

    from sparseticket.builtin.data import load_digits_split

    data = load_digits_split()
    torch.manual_seed(0)
    model = vgg_small(width=8)
    miner = GemMiner(model, density=0.2, epochs=6, period=5, lr=lr, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(6):
            for images, labels in data.train_loader(seed=epoch):
                nn.functional.cross_entropy(model(images), labels).backward()
                miner.step()
            miner.epoch_end()
    return miner, [warning for warning in caught if warning.category is MiningWarning]


def test_a_mask_still_at_its_random_start_is_warned_about():
    """Issue 26: at the paper's lr 0.1, 132 steps leave the mask at the initial scores' ranking
    (chance accuracy), silently. The lr for the run's length moves it, and nothing is said."""
    stuck, warned = _mine_digits(0.1)
    assert stuck.still_initial() > 0.9 and len(warned) == 1
    assert "barely moved" in str(warned[0].message) and "GemMiner.lr_for(S)" in str(warned[0].message)
    steps = 6 * 22  # 6 epochs of 22 digits batches
    moved, warned = _mine_digits(GemMiner.lr_for(steps))
    assert moved.still_initial() < 0.5 and warned == []
    assert GemMiner.lr_for(150 * 391) == pytest.approx(0.1)
