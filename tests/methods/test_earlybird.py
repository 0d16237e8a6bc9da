"""EarlyBird and WORM on hand-built gamma trajectories: exact masks, distances, stop and trigger epochs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseticket.methods import WORM, EarlyBird


def two_bn_model() -> nn.Sequential:
    """Conv(1->4)-BN(4)-ReLU-Conv(4->4)-BN(4): eight tracked channels."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))


def set_gammas(model: nn.Module, values: list[float]) -> None:
    """Give the 8 channels these gammas (first BN, then second)."""
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(values[:4]))
        model[4].weight.copy_(torch.tensor(values[4:]))


# With ratio 0.5 and 8 distinct |gamma| in 1..8 the threshold is the 5th smallest (5): the mask
# keeps the channels holding 6, 7, 8. Each trajectory row is one epoch.
A = [8, 7, 6, 5, 4, 3, 2, 1]  # keeps channels 0,1,2
B = [8, 7, 5, 6, 4, 3, 2, 1]  # keeps 0,1,3  (2 bits differ from A)
C = [1, 2, 3, 4, 5, 6, 7, 8]  # keeps 5,6,7  (6 bits differ from A)


def distances_between(first: list[float], second: list[float]) -> float:
    keep_first = [value > 5 for value in first]
    keep_second = [value > 5 for value in second]
    return sum(a != b for a, b in zip(keep_first, keep_second)) / 8


def run(tracker, model, trajectory):
    fired = []
    for values in trajectory:
        set_gammas(model, values)
        fired.append(tracker.epoch_end())
    return fired


def test_masks_and_distances_are_exact():
    model = two_bn_model()
    eb = EarlyBird(model, ratio=0.5, eps=0.1)
    trajectory = [C, A, B, A, B, B]
    for epoch, values in enumerate(trajectory):
        set_gammas(model, values)
        eb.epoch_end()
        older = trajectory[max(0, epoch - 4):epoch]
        assert eb.distances == [pytest.approx(distances_between(values, o)) for o in older]
    masks = eb.channel_mask()
    assert masks["1"].tolist() == [True, True, False, True] and masks["4"].tolist() == [False] * 4
    assert len(eb.history) == 6 and eb.history[0] == []


def test_never_fires_before_the_queue_is_full():
    model = two_bn_model()
    eb = EarlyBird(model, ratio=0.5, eps=0.1, queue=5)
    assert run(eb, model, [A, A, A, A]) == [False] * 4 and eb.found_epoch is None
    assert run(eb, model, [A]) == [True] and eb.found_epoch == 5
    assert run(eb, model, [A, A]) == [False, False] and eb.found_epoch == 5  # True only once


def test_fires_at_the_first_stable_window():
    model = two_bn_model()
    eb = EarlyBird(model, ratio=0.5, eps=0.25)  # 2 differing bits of 8 are within eps
    # epoch 5: window C,A,B,A,B has C (6 bits away) -> no; epoch 6: A,B,A,B,B -> max 0.25 -> yes
    assert run(eb, model, [C, A, B, A, B, B]) == [False] * 5 + [True]
    assert eb.found_epoch == 6
    strict = EarlyBird(two_bn_model(), ratio=0.5, eps=0.1)
    assert not any(run(strict, strict.model, [C, A, B, A, B, B]))


def test_several_ratios_tracked_at_once():
    model = two_bn_model()
    eb = EarlyBird(model, ratio=[0.5, 0.25], eps=0.0, queue=3)
    # ratio 0.25: threshold = 3rd smallest (3): keeps 4..8; A and B keep the same 5 channels.
    run(eb, model, [A, B, A])
    assert eb.found_epoch == {0.5: None, 0.25: 3}
    assert eb.distances[0.5] == [0.0, 0.25] and eb.distances[0.25] == [0.0, 0.0]
    assert eb.channel_mask(0.25)["1"].tolist() == [True, True, True, True]
    with pytest.raises(ValueError, match="ratio 0.7 is not tracked"):
        eb.channel_mask(0.7)


def test_after_backward_adds_l1_subgradient_to_gamma_only():
    model = two_bn_model()
    set_gammas(model, [1, -2, 0, 3, -1, 1, 2, -3])
    model(torch.randn(2, 1, 5, 5)).sum().backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    EarlyBird(model, l1=0.5).after_backward()
    for name, parameter in model.named_parameters():
        if name in ("1.weight", "4.weight"):
            expected = before[name] + 0.5 * torch.sign(parameter.detach())
            torch.testing.assert_close(parameter.grad, expected, rtol=0, atol=1e-6)
        else:
            assert torch.equal(parameter.grad, before[name])


def test_frozen_layers_and_models_without_bn():
    model = two_bn_model()
    model[1].requires_grad_(False)
    model(torch.randn(2, 1, 5, 5)).sum().backward()
    EarlyBird(model, l1=0.1).after_backward()  # frozen BN has no grad: skipped, no error
    assert model[1].weight.grad is None
    with pytest.raises(ValueError, match="no BatchNorm layer with affine weights"):
        EarlyBird(nn.Sequential(nn.Linear(3, 3)))


@pytest.mark.parametrize("bad", [{"ratio": 1.0}, {"ratio": []}, {"queue": 1}, {"eps": 2.0}, {"l1": -1.0}])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        EarlyBird(two_bn_model(), **bad)


def test_worm_trigger_epoch_and_static_channels():
    model = two_bn_model()
    worm = WORM(model, ratio=0.5, eps=0.0, trigger=0.2, queue=3)
    # epoch 3: B vs C, A -> [0.75, 0.25] (mean 0.5) -> not yet; epoch 4: A vs A, B -> mean 0.125 < 0.2
    run(worm, model, [C, A, B])
    assert not worm.truncating
    run(worm, model, [A])
    assert worm.truncating and worm.trigger_epoch == 4 and worm.found_epoch is None
    static = worm.static_channels()
    assert static["1"].tolist() == [False, False, False, True] and static["4"].tolist() == [True] * 4


def _worm_gradients(static: str):
    model = two_bn_model()
    worm = WORM(model, ratio=0.5, eps=0.0, trigger=0.3, queue=3, chi=0.003, l1=1e-2, static=static,
                truncate_filters=True)
    run(worm, model, [B, A, A])  # triggers at epoch 3 (mean distance 0.125)
    assert worm.truncating
    set_gammas(model, A)
    model(torch.randn(2, 1, 5, 5)).sum().backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    worm.after_backward()
    return model, worm, before


@pytest.mark.parametrize("static", ["newest", "queue"])
def test_worm_scales_gradients_of_static_channels(static):
    model, worm, before = _worm_gradients(static)
    newest = torch.tensor([value > 5 for value in A])
    # queue: static only where pruned in every mask of the queue (B, A, A): channel 3 was kept in B
    static_flat = ~newest if static == "newest" else ~newest & torch.tensor([True, True, True, False] + [True] * 4)
    assert torch.equal(torch.cat(list(worm.static_channels().values())), static_flat)
    for bn_index, conv_index, channels in ((1, 0, slice(0, 4)), (4, 3, slice(4, 8))):
        m = (~static_flat[channels]).float()
        factor = m + 0.003 * (1 - m)
        gamma = model[bn_index].weight.detach()
        expected = (before[f"{bn_index}.weight"] + 1e-2 * torch.sign(gamma)) * factor
        torch.testing.assert_close(model[bn_index].weight.grad, expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(model[bn_index].bias.grad, before[f"{bn_index}.bias"] * factor)
        torch.testing.assert_close(model[conv_index].weight.grad,
                                   before[f"{conv_index}.weight"] * factor.view(-1, 1, 1, 1))


def test_worm_arguments():
    with pytest.raises(ValueError, match="one ratio"):
        WORM(two_bn_model(), ratio=[0.5, 0.3])
    with pytest.raises(ValueError, match="static must be one of"):
        WORM(two_bn_model(), static="always")
    with pytest.raises(ValueError, match="no Conv/Linear with 4 outputs"):
        WORM(nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(4)), truncate_filters=True)


def test_worm_on_transformer_slimming_coefficients():
    from sparseticket.builtin.transformer_model import TinyTransformer
    from sparseticket.methods import attach_slimming

    torch.manual_seed(0)
    model = TinyTransformer(64, 10, dim=16, heads=4, ffn=8, layers=2)
    names = attach_slimming(model)
    worm = WORM.for_transformers(model, trigger=1.0)
    assert (worm.queue, worm.eps, worm.chi) == (3, 0.01, 0.01)
    with torch.no_grad():  # distinct coefficients: a well-defined mask
        for index, name in enumerate(names):
            coefficients = model.get_submodule(name).weight
            coefficients.copy_(torch.linspace(0.1, 1.0, coefficients.numel()) + index)
    for _ in range(3):
        worm.epoch_end()
    assert worm.truncating
    model(torch.rand(4, 1, 8, 8)).sum().backward()
    before = {name: model.get_submodule(name).weight.grad.clone() for name in names}
    worm.after_backward()
    static = worm.static_channels()
    for name in names:
        coefficients = model.get_submodule(name).weight
        factor = torch.where(static[name], 0.01, 1.0)
        expected = (before[name] + 1e-4 * torch.sign(coefficients.detach())) * factor
        torch.testing.assert_close(coefficients.grad, expected, rtol=1e-6, atol=1e-8)
    assert any(mask.any() for mask in static.values())


def test_editing_l1_or_chi_between_steps_takes_effect():
    """The methods cache a TruncationPlan; changing eb.l1 / worm.chi must still act on the next step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    earlybird = EarlyBird(model, l1=1e-4)

    def step_grads(method) -> list[torch.Tensor]:
        for bn in bns:
            bn.weight.grad = torch.zeros_like(bn.weight)
            bn.bias.grad = torch.ones_like(bn.bias)
        method.after_backward()
        return [bn.weight.grad.clone() for bn in bns] + [bn.bias.grad.clone() for bn in bns]

    step_grads(earlybird)
    earlybird.l1 = 0.5
    grads = step_grads(earlybird)
    for bn, grad in zip(bns, grads):
        assert torch.equal(grad, 0.5 * torch.sign(bn.weight.detach()))
    worm = WORM(model, queue=2, trigger=1.0, l1=0.0, chi=0.5)
    worm.epoch_end()
    worm.epoch_end()
    assert worm.truncating
    before = step_grads(worm)
    worm.chi = 0.25
    after = step_grads(worm)
    static = [b != 1.0 for b in before[len(bns):]]  # beta grads were ones: static channels got chi
    assert any(s.any() for s in static)
    for b, a, s in zip(before[len(bns):], after[len(bns):], static):
        assert torch.equal(a[s], torch.full_like(a[s], 0.25)) and torch.equal(b[s], torch.full_like(b[s], 0.5))
