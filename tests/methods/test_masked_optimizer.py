"""The fused masked optimizer (``imp.optimizer``, ``ticket.optimizer``): a drop-in swap that gives
the same training as the two-pass hooks, with pruned weights and state at exactly 0."""

from __future__ import annotations

import copy
import importlib
import warnings

import pytest
import torch
from torch import nn

from sparseticket import IMP
from sparseticket.methods.masked_optimizer import masked_optimizer


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 5))


def batches(seed: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 20, generator=generator), torch.randint(0, 5, (16,), generator=generator))
            for _ in range(count)]


def train(model, optimizer, data, imp=None, scheduler=None) -> None:
    for inputs, labels in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        if imp is not None:
            imp.after_backward()
        optimizer.step()
        if imp is not None:
            imp.after_step()
        if scheduler is not None:
            scheduler.step()


def imp_rounds(make_optimizer, fused: bool, rounds: int = 3) -> tuple[nn.Module, IMP]:
    """IMP with rewinding to step 4 over ``rounds`` rounds of 12 steps, with the fused swap or the hooks."""
    model = mlp()
    imp = IMP(model, rate=0.3, rewind_step=4)
    optimizer = make_optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    if fused:
        optimizer = imp.optimizer(optimizer)
    data = batches(0, 12)
    train(model, optimizer, data[:4], imp, scheduler)
    imp.capture(optimizer, scheduler)
    train(model, optimizer, data[4:], imp, scheduler)
    for _ in range(rounds - 1):
        imp.prune_round()
        imp.rewind()
        train(model, optimizer, data[4:], imp, scheduler)
    return model, imp


def sgd(parameters):
    return torch.optim.SGD(parameters, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)


def test_imp_with_the_fused_sgd_is_the_two_pass_imp_bit_for_bit():
    fused_model, fused_imp = imp_rounds(sgd, fused=True)
    hooked_model, hooked_imp = imp_rounds(sgd, fused=False)
    assert fused_imp.density < 0.6
    for mask_a, mask_b in zip(fused_imp.masks, hooked_imp.masks):
        assert torch.equal(mask_a, mask_b)
    for (name, got), want in zip(fused_model.named_parameters(), hooked_model.parameters()):
        assert torch.equal(got, want), name
    for weight, mask in zip(fused_imp.weights, fused_imp.masks):
        assert not weight.detach()[~mask].any()


@pytest.mark.parametrize("make", [
    lambda parameters: torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.05),
    lambda parameters: torch.optim.Adam(parameters, lr=1e-2, weight_decay=1e-3, amsgrad=True),
])
def test_imp_with_the_fused_adam_follows_the_two_pass_imp(make):
    """Adam's kernel rounds as torch's fused step, the hooks' Adam as its for-loop: equal up to rounding."""
    fused_model, fused_imp = imp_rounds(make, fused=True)
    hooked_model, _ = imp_rounds(make, fused=False)
    for got, want in zip(fused_model.parameters(), hooked_model.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for weight, mask in zip(fused_imp.weights, fused_imp.masks):
        assert not weight.detach()[~mask].any()
        state = fused_imp._optimizer.state[weight]
        assert not state["exp_avg"][~mask].any() and not state["exp_avg_sq"][~mask].any()


def test_swap_keeps_the_object_its_scheduler_and_its_state_dict_format():
    model = mlp()
    imp = IMP(model, rate=0.5)
    optimizer = sgd(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)  # made before the swap
    fused = imp.optimizer(optimizer)
    assert fused is optimizer and isinstance(fused, torch.optim.SGD) and type(fused).__name__ == "MaskedSGD"
    imp.prune_round()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()" warning
        train(model, fused, batches(1, 3), scheduler=scheduler)
    assert fused.param_groups[0]["lr"] == pytest.approx(0.05 / 8)
    # its state_dict is torch's: a plain SGD loaded from it continues exactly as the fused one does
    plain_model = mlp()
    plain_model.load_state_dict(model.state_dict())
    plain = sgd(plain_model.parameters())
    plain.load_state_dict(copy.deepcopy(fused.state_dict()))  # a copy: load_state_dict keeps the tensors
    data = batches(2, 4)
    imp_plain = IMP(plain_model, rate=0.5)
    for mask, source in zip(imp_plain.masks, imp.masks):
        mask.copy_(source)
    train(model, fused, data)
    train(plain_model, plain, data, imp_plain)
    for got, want in zip(model.parameters(), plain_model.parameters()):
        assert torch.equal(got, want)


def test_hooks_do_nothing_under_the_swap_and_pruned_gradients_can_still_be_zeroed():
    model = mlp()
    imp = IMP(model, rate=0.5)
    optimizer = imp.optimizer(sgd(model.parameters()))
    imp.prune_round()
    nn.functional.cross_entropy(model(torch.randn(4, 20)), torch.zeros(4, dtype=torch.long)).backward()
    imp.after_backward()
    assert any(weight.grad[~mask].any() for weight, mask in zip(imp.weights, imp.masks))
    imp.zero_pruned_gradients()
    assert not any(weight.grad[~mask].any() for weight, mask in zip(imp.weights, imp.masks))
    optimizer.step()


def test_a_known_torch_optimizer_needs_no_after_step_pass_once_its_state_is_masked():
    """With the optimizer passed to capture, prune_round/rewind mask its state: masked gradients alone
    then keep pruned weights at 0 (after_step is skipped), also for Adam's moments."""
    for make in (sgd, lambda parameters: torch.optim.Adam(parameters, lr=1e-2)):
        model = mlp()
        imp = IMP(model, rate=0.5, rewind_step=2)
        optimizer = make(model.parameters())
        train(model, optimizer, batches(0, 2), imp)
        imp.capture(optimizer)
        train(model, optimizer, batches(1, 5), imp)
        imp.prune_round()
        imp.rewind()
        before = [weight.detach().clone() for weight in imp.weights]
        imp.after_step()  # a no-op now: it would not change anything anyway
        assert all(torch.equal(a, b) for a, b in zip(before, imp.weights))
        for inputs, labels in batches(2, 5):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            imp.after_backward()
            optimizer.step()  # no after_step
        for weight, mask in zip(imp.weights, imp.masks):
            assert not weight.detach()[~mask].any()


def test_an_unknown_optimizer_keeps_the_after_step_pass():
    model = mlp()
    imp = IMP(model, rate=0.5)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.9)
    imp.capture(optimizer)
    imp.prune_round()
    with torch.no_grad():
        imp.weights[0].add_(1.0)
    imp.after_step()
    assert not imp.weights[0].detach()[~imp.masks[0]].any()
    with pytest.raises(TypeError, match="torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW"):
        imp.optimizer(optimizer)


def test_ticket_optimizer_fine_tunes_as_the_gradient_mask_does():
    source = mlp()
    imp = IMP(source, rate=0.6)
    imp.prune_round()
    ticket = imp.ticket()
    results = []
    for fused in (True, False):
        model = mlp(1)
        optimizer = sgd(model.parameters())
        if fused:
            optimizer = ticket.optimizer(model, optimizer)
            train(model, optimizer, batches(3, 6))
        else:
            ticket.apply_(model)
            hook = ticket.gradient_mask(model)
            for inputs, labels in batches(3, 6):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(inputs), labels).backward()
                hook()
                optimizer.step()
        results.append(model)
    for got, want in zip(results[0].parameters(), results[1].parameters()):
        assert torch.equal(got, want)
    weights = dict(results[0].named_parameters())
    for name, mask in ticket.masks.items():
        assert not weights[name].detach()[~mask].any()


def test_closures_missing_gradients_and_uneven_adam_steps():
    model = mlp()
    optimizer = masked_optimizer(torch.optim.Adam(model.parameters(), lr=1e-2), {})
    reference_model = mlp()
    reference = torch.optim.Adam(reference_model.parameters(), lr=1e-2, fused=True)
    inputs, labels = batches(4, 1)[0]
    for step in range(3):
        for net, opt in ((model, optimizer), (reference_model, reference)):
            def closure(net=net, opt=opt, step=step):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(net(inputs), labels)
                loss.backward()
                if step == 1:
                    net[4].bias.grad = None  # skipped this step: its step count falls behind
                return loss

            assert torch.isfinite(opt.step(closure))
    assert optimizer.state[model[4].bias]["step"].item() == 2 and optimizer.state[model[0].weight]["step"].item() == 3
    for got, want in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_bad_input():
    model = mlp()
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        masked_optimizer(object(), {})

    class MySGD(torch.optim.SGD):
        pass

    with pytest.raises(TypeError, match="exactly those classes"):
        masked_optimizer(MySGD(model.parameters(), lr=0.1), {})
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not in the optimizer's param groups"):
        masked_optimizer(optimizer, {model[2].weight: torch.ones_like(model[2].weight, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool tensor of its parameter's shape"):
        masked_optimizer(optimizer, {model[0].weight: torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="differentiable=True"):
        masked_optimizer(torch.optim.SGD(model.parameters(), lr=0.1, differentiable=True), {})


def test_the_step_reads_packed_masks_made_once_and_again_after_each_edit(monkeypatch):
    """The masks are packed (one bit per weight) at the first step, reused while unchanged, packed again
    after an in-place edit (what prune_round does), and the step follows the edited mask."""
    module = importlib.import_module("sparseticket.methods.masked_optimizer")  # the package exports the function
    packs = []
    real_pack = module.pack_optimizer_mask

    def counting_pack(mask, param):
        packs.append(param)
        return real_pack(mask, param)

    monkeypatch.setattr(module, "pack_optimizer_mask", counting_pack)
    model = mlp()
    imp = IMP(model, rate=0.5)
    optimizer = imp.optimizer(sgd(model.parameters()))
    data = batches(5, 3)
    train(model, optimizer, data[:2])
    everything = list(model.parameters())  # the biases step with an all-ones mask, packed once too
    assert len(packs) == len(everything) and {id(param) for param in packs} == {id(param) for param in everything}
    packed = optimizer._packed_masks[id(imp.weights[0])][-1]
    assert packed.dtype == torch.uint8 and packed.numel() == (imp.weights[0].numel() + 7) // 8
    assert torch.equal(packed, module.pack_optimizer_mask(imp.masks[0], imp.weights[0]))
    packs.clear()
    imp.prune_round()  # edits every mask in place
    train(model, optimizer, data[2:])
    assert len(packs) == len(imp.weights) and {id(param) for param in packs} == {id(weight) for weight in imp.weights}
    assert torch.equal(optimizer._packed_masks[id(imp.weights[0])][-1], real_pack(imp.masks[0], imp.weights[0]))
    for weight, mask in zip(imp.weights, imp.masks):
        assert not weight.detach()[~mask].any() and weight.detach()[mask].any()
    packs.clear()
    imp.masks[1][0, :3] = False  # a user's own in-place edit
    train(model, optimizer, data[:1])
    assert len(packs) == 1 and packs[0] is imp.weights[1]
    assert not imp.weights[1].detach()[0, :3].any()


def test_ticket_optimizer_on_a_channels_last_conv_net_packs_in_memory_order():
    """Conv weights in channels_last: each packed mask counts the weights in memory (NHWC) order, so the
    fused fine-tuning equals the gradient_mask hook's, bit for bit."""
    def convnet(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.Flatten(), nn.LazyLinear(4))
        net(torch.randn(1, 3, 8, 8))
        return net.to(memory_format=torch.channels_last)

    source = convnet(0)
    imp = IMP(source, rate=0.5)
    imp.prune_round()
    ticket = imp.ticket()
    generator = torch.Generator().manual_seed(7)
    data = [(torch.randn(4, 3, 8, 8, generator=generator).to(memory_format=torch.channels_last),
             torch.randint(0, 4, (4,), generator=generator)) for _ in range(4)]
    results = []
    for fused in (True, False):
        model = convnet(1)
        optimizer = sgd(model.parameters())
        hook = None
        if fused:
            optimizer = ticket.optimizer(model, optimizer)
        else:
            ticket.apply_(model)
            hook = ticket.gradient_mask(model)
        for inputs, labels in data:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            if hook is not None:
                hook()
            optimizer.step()
        results.append(model)
    assert results[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    for got, want in zip(results[0].parameters(), results[1].parameters()):
        assert torch.equal(got, want)
    weights = dict(results[0].named_parameters())
    for name, mask in ticket.masks.items():
        assert not weights[name].detach()[~mask].any()
