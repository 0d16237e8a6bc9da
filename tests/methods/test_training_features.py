"""The training features of the README's "Use it with your trainer": a compiled model, loss scaling
in a plain loop (unscale before the hook), and one hook API for every method."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparseticket
from sparseticket import METHODS, EarlyBird, GemMiner, Ticket
from sparseticket.builtin.models import vgg_small
from sparseticket.methods.protocol import METHOD_HOOKS

# the keywords a registered method needs besides the model (the others use their defaults)
REQUIRED = {"gemminer": {"density": 0.5, "epochs": 2, "period": 1}}
# settings that make every hook act within a few steps; then what prepares the method before training
COMPILED_SETTINGS = {"earlybird": {"l1": 1e-2}, "worm": {"trigger": 1.0, "queue": 2}, "gemminer": {"seed": 0},
                     "imp": {"rate": 0.5}}
PREPARE = {"imp": lambda imp: imp.prune_round()}


def batches(count: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(5)
    return [(torch.randn(8, 1, 8, 8, generator=generator), torch.randint(0, 10, (8,), generator=generator))
            for _ in range(count)]


def train(model: nn.Module, method, network: nn.Module | None = None) -> None:
    """SGD+momentum over fixed batches with the method's hooks; ``network`` is what runs forward."""
    network = network or model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    for images, labels in batches():
        optimizer.zero_grad()
        nn.functional.cross_entropy(network(images), labels).backward()
        method.after_backward()
        optimizer.step()
        method.after_step()
    method.epoch_end()


@pytest.mark.parametrize("name", list(METHODS))
def test_methods_on_a_compiled_model_match_eager(name):
    torch.manual_seed(0)
    eager = vgg_small(width=8)
    compiled_model = copy.deepcopy(eager)
    results = []
    for model, network in ((eager, eager), (compiled_model, torch.compile(compiled_model, backend="aot_eager"))):
        # made on the bare module: the compiled wrapper shares its parameters
        method = METHODS[name](model, **{**REQUIRED.get(name, {}), **COMPILED_SETTINGS.get(name, {})})
        if name in PREPARE:
            PREPARE[name](method)
        train(model, method, network)
        train(model, method, network)
        results.append(model.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[1][key], results[0][key], rtol=1e-4, atol=1e-6)


def test_loss_scaling_unscale_before_the_hook_gives_the_fp32_update():
    """The README's order: scaler.unscale_(optimizer) before after_backward. With the scale at 2**16,
    the L1 term then lands on the true gradient, as in an unscaled loop; called before unscaling it
    would be divided by 2**16."""
    torch.manual_seed(0)
    reference = vgg_small(width=8)
    scaled, wrong_order = copy.deepcopy(reference), copy.deepcopy(reference)
    images, labels = batches(1)[0]
    gammas = {}
    for name, model in (("reference", reference), ("scaled", scaled), ("wrong_order", wrong_order)):
        eb = EarlyBird(model, l1=1e-2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=name != "reference")
        loss = nn.functional.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        if name == "scaled":
            scaler.unscale_(optimizer)  # +  before the hook
        eb.after_backward()
        scaler.step(optimizer)
        scaler.update()
        gammas[name] = torch.cat([layer.gamma.detach().clone() for layer in eb.layers])
    torch.testing.assert_close(gammas["scaled"], gammas["reference"], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(gammas["wrong_order"], gammas["reference"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_the_same_hooks(name):
    cls = METHODS[name]
    assert getattr(sparseticket, cls.__name__) is cls is getattr(sparseticket.methods, cls.__name__)  # exports
    model = vgg_small(width=8)
    method = cls(model, **REQUIRED.get(name, {}))
    for hook in METHOD_HOOKS:
        assert callable(getattr(method, hook)), hook
    images, labels = batches(1)[0]
    for epoch in (1, 2):
        nn.functional.cross_entropy(model(images), labels).backward()
        method.after_backward()
        method.after_step()
        method.epoch_end()
        assert method.epoch == epoch  # counted inside
    assert isinstance(method.drawn, bool)
    ticket = method.ticket()
    assert isinstance(ticket, Ticket) and ticket.method == name
    assert ticket.masks or ticket.channel_masks


def test_top_level_exports_load_lazily_and_reject_unknown_names():
    for name in ("error_barrier", "random_ticket", "snip_ticket", "attach_slimming", "prune_model"):
        assert getattr(sparseticket, name) is getattr(sparseticket.methods, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sparseticket.nope  # noqa: B018


def test_gemminer_epoch_count_survives_a_checkpoint():
    miner = GemMiner(vgg_small(width=8), density=0.5, epochs=4, period=2, seed=0)
    miner.epoch_end()
    miner.epoch_end()
    assert miner.epoch == 2 and miner.freezes_done == 0  # the one round comes after 0-based epoch 2
    restored = GemMiner(vgg_small(width=8), density=0.5, epochs=4, period=2, seed=1)
    restored.load_state_dict(miner.state_dict())
    assert restored.epoch == 2
    assert restored.epoch_end() and restored.freezes_done == 1  # the restored count puts the round here
    assert not restored.epoch_end()
    assert restored.epoch == 4 and restored.drawn and restored.freezes_done == 1  # floor((4 - 1) / 2) freezes
