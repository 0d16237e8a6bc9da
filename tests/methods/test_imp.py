"""IMP with rewinding: exact global masks (NumPy reference), densities, rewinding, pinned zeros."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from sparseticket.builtin.data import load_digits_split
from sparseticket.builtin.models import vgg_small
from sparseticket.driver.training import train_epoch
from sparseticket.methods.imp import IMP


def mlp(seed: int = 0) -> nn.Sequential:
    """Linear(6->12)-ReLU-Linear(12->9)-ReLU-Linear(9->4): three prunable weights, the last the output."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4))


def reference_masks(weights: list[np.ndarray], rate: float, rounds: int) -> list[np.ndarray]:
    """Global magnitude pruning by a stable sort of all |w| (pruned = inf), ties by global index."""
    sizes = [weight.size for weight in weights]
    magnitudes = np.concatenate([np.abs(weight).ravel() for weight in weights])
    keep = np.ones(magnitudes.size, dtype=bool)
    for _ in range(rounds):
        count = math.ceil(rate * int(keep.sum()))
        order = np.argsort(np.where(keep, magnitudes, np.inf), kind="stable")
        keep[order[:count]] = False
    splits = np.split(keep, np.cumsum(sizes)[:-1])
    return [split.reshape(weight.shape) for split, weight in zip(splits, weights)]


def set_tied_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Random weights from a few distinct magnitudes and signs, so many entries tie."""
    with torch.no_grad():
        for parameter in model.parameters():
            values = torch.randint(1, 6, parameter.shape, generator=generator).float() / 8
            signs = torch.randint(0, 2, parameter.shape, generator=generator).float() * 2 - 1
            parameter.copy_(values * signs)


@pytest.mark.parametrize("exclude", [(), ("output",)])
@pytest.mark.parametrize("tied", [False, True])
def test_masks_match_numpy_global_sort(exclude, tied, generator):
    model = mlp()
    if tied:
        set_tied_weights(model, generator)
    layers = [model[0], model[2], model[4]][: 3 - len(exclude)]
    initial = [layer.weight.detach().numpy().copy() for layer in layers]
    imp = IMP(model, rate=0.3, exclude=exclude)
    for rounds in range(1, 6):
        imp.prune_round()
        expected = reference_masks(initial, 0.3, rounds)
        for mask, reference in zip(imp.masks, expected):
            np.testing.assert_array_equal(mask.numpy(), reference)
    assert len(imp.masks) == len(layers)
    if exclude:
        assert (model[4].weight != 0).all()


@pytest.mark.parametrize("rate", [0.2, 0.35, 0.5])
def test_density_follows_the_rate_exactly(rate):
    model = vgg_small(width=8)
    imp = IMP(model, rate=rate)
    total = sum(mask.numel() for mask in imp.masks)
    survivors = total
    for rounds in range(1, 9):
        survivors -= math.ceil(rate * survivors)
        assert imp.prune_round() == survivors / total
        assert imp.survivors() == survivors and imp.round == rounds
        assert sum(int((layer.weight == 0).sum()) for layer in [model[0], model[3], model[7], model[10]]) \
            == total - survivors


def test_prunes_down_to_nothing_then_refuses():
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    imp = IMP(model, rate=0.5, exclude=())
    assert imp.prune_round() == 0.5
    assert imp.prune_round() == 0.0
    with pytest.raises(ValueError, match="no surviving weights"):
        imp.prune_round()


def sgd_steps(model: nn.Module, imp: IMP, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    """``steps`` regression steps on random data with the IMP hooks."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        inputs = torch.randn(16, 6, generator=generator)
        targets = torch.randn(16, 4, generator=generator)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        imp.after_backward()
        optimizer.step()
        imp.after_step()


def test_rewind_restores_weights_and_optimizer_state():
    model = mlp()
    imp = IMP(model, rate=0.2, rewind_step=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    sgd_steps(model, imp, optimizer, 3, seed=0)
    scheduler.step()
    imp.capture(optimizer, scheduler)
    captured = copy.deepcopy(model.state_dict())
    captured_optimizer = copy.deepcopy(optimizer.state_dict())
    sgd_steps(model, imp, optimizer, 20, seed=1)
    scheduler.step()
    imp.prune_round()
    imp.rewind()
    for mask, layer in zip(imp.masks, [model[0], model[2]]):
        name = "0.weight" if layer is model[0] else "2.weight"
        assert torch.equal(layer.weight[mask], captured[name][mask])
        assert (layer.weight[~mask] == 0).all() and (~mask).any()
    for key in ("0.bias", "2.bias", "4.weight", "4.bias"):
        assert torch.equal(model.state_dict()[key], captured[key])
    assert scheduler.last_epoch == 1 and optimizer.param_groups[0]["lr"] == 0.025
    # the captured momentum, with the entries of the weights pruned since then zeroed
    masks = {index: mask for index, mask in zip((0, 2), imp.masks)}  # 0.weight, 2.weight in parameter order
    expected = {index: state["momentum_buffer"] * masks[index] if index in masks else state["momentum_buffer"]
                for index, state in captured_optimizer["state"].items()}
    assert any((state["momentum_buffer"][~masks[index]] != 0).any() for index, state
               in captured_optimizer["state"].items() if index in masks)  # there was momentum to mask
    for index, buffer in expected.items():
        assert torch.equal(optimizer.state_dict()["state"][index]["momentum_buffer"], buffer)
    # a second round rewinds to the same state: training after the first rewind did not edit it
    sgd_steps(model, imp, optimizer, 5, seed=2)
    imp.rewind()
    for index, buffer in expected.items():
        assert torch.equal(optimizer.state_dict()["state"][index]["momentum_buffer"], buffer)


def test_rewinding_a_scheduler_alone_restores_its_learning_rate():
    """capture(None, scheduler): rewind() must put the LR back with the schedule's position, not
    leave the optimizer at its end-of-round rate (issue 25)."""
    model = mlp()
    imp = IMP(model, rate=0.2, rewind_step=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(2):
        sgd_steps(model, imp, optimizer, 1, seed=0)
        scheduler.step()
    imp.capture(None, scheduler)  # LR 0.1 at step 2
    for _ in range(5):
        sgd_steps(model, imp, optimizer, 1, seed=1)
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.4 * 0.5 ** 7
    imp.prune_round()
    imp.rewind()
    assert scheduler.last_epoch == 2 and optimizer.param_groups[0]["lr"] == 0.1
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.05  # the schedule goes on from step 2


def test_capturing_a_scheduler_that_does_not_record_its_rates_needs_the_optimizer():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.4)

    class Bare:  # a scheduler-like object whose state holds no _last_lr
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def state_dict(self):
            return {"position": 0}

    with pytest.raises(ValueError, match="pass its optimizer too"):
        IMP(model).capture(None, Bare(optimizer))
    IMP(model).capture(optimizer, Bare(optimizer))  # with its optimizer: the rates come from there


def test_pruned_weights_stay_exactly_zero_under_momentum_and_weight_decay():
    model = mlp()
    imp = IMP(model, rate=0.5, rewind_step=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sgd_steps(model, imp, optimizer, 5, seed=0)
    imp.capture(optimizer)  # momentum buffers of soon-pruned weights are nonzero here
    sgd_steps(model, imp, optimizer, 10, seed=1)
    imp.prune_round()
    imp.rewind()
    sgd_steps(model, imp, optimizer, 100, seed=2)
    for mask, layer in zip(imp.masks, [model[0], model[2]]):
        assert (layer.weight[~mask] == 0).all()
        assert (layer.weight.grad[~mask] == 0).all()
        assert (layer.weight[mask] != 0).all()


def test_after_step_is_needed_when_imp_does_not_know_the_optimizer():
    model = mlp()
    imp = IMP(model, rate=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sgd_steps(model, imp, optimizer, 5, seed=0)
    imp.prune_round()  # the optimizer's momentum is not IMP's to mask: nobody passed it
    optimizer.zero_grad()
    model(torch.randn(8, 6)).sum().backward()
    imp.after_backward()
    optimizer.step()
    assert (model[0].weight[~imp.masks[0]] != 0).any()  # the momentum moved them despite zero gradients
    imp.after_step()
    assert (model[0].weight[~imp.masks[0]] == 0).all()


def test_a_captured_optimizer_has_its_momentum_masked_at_rewind():
    """The rewound momentum of pruned weights is zeroed with them: zero gradients then keep them at 0."""
    model = mlp()
    imp = IMP(model, rate=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sgd_steps(model, imp, optimizer, 5, seed=0)
    imp.capture(optimizer)
    imp.prune_round()
    imp.rewind()
    assert (optimizer.state[model[0].weight]["momentum_buffer"][~imp.masks[0]] == 0).all()
    optimizer.zero_grad()
    model(torch.randn(8, 6)).sum().backward()
    imp.after_backward()
    optimizer.step()  # no after_step
    assert (model[0].weight[~imp.masks[0]] == 0).all()


def test_ticket_applied_to_a_fresh_model_gives_the_same_weights():
    split = load_digits_split()
    torch.manual_seed(0)
    model = vgg_small(width=8)
    initial = copy.deepcopy(model)
    imp = IMP(model, rate=0.2)
    imp.capture()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_epoch(model, split.train_loader(seed=0), optimizer, after_backward=imp.after_backward)
    imp.prune_round()
    imp.prune_round()
    imp.rewind()
    ticket = imp.ticket()
    assert ticket.method == "imp"
    assert ticket.hyperparameters == {"rate": 0.2, "rewind_step": 0, "rounds": 2, "exclude": ["output"],
                                      "convention": "default"}
    assert set(ticket.masks) == {"0.weight", "3.weight", "7.weight", "10.weight"}
    assert ticket.density() == imp.density == pytest.approx(0.64, abs=1e-3)
    ticket.apply(initial)
    for (name, expected), actual in zip(model.state_dict().items(), initial.state_dict().values()):
        assert torch.equal(actual, expected), name


def test_bad_arguments_raise():
    model = mlp()
    for rate in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="rate must be in"):
            IMP(model, rate=rate)
    with pytest.raises(TypeError, match="rate must be a float"):
        IMP(model, rate="0.2")
    with pytest.raises(ValueError, match="rewind_step must be >= 0"):
        IMP(model, rewind_step=-1)
    with pytest.raises(TypeError, match="rewind_step must be an int"):
        IMP(model, rewind_step=1.5)
    with pytest.raises(TypeError, match="exclude must be"):
        IMP(model, exclude="output")
    with pytest.raises(ValueError, match="exclude: 'nope'"):
        IMP(model, exclude=("nope",))
    with pytest.raises(TypeError, match="model must be"):
        IMP("model")
    with pytest.raises(TypeError, match="float32/float16/bfloat16"):
        IMP(mlp().double())
    with pytest.raises(ValueError, match="call capture"):
        IMP(model).rewind()
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        IMP(model, rate=0.9).prune_round()


def test_min_density_makes_the_last_round_land_on_the_target():
    """Rounds prune ceil(rate * survivors) until that would pass round(min_density * total): then
    exactly down to it (smallest |w| first, as the NumPy reference), then nothing more."""
    target, rate = 0.2, 0.3
    imp = IMP(mlp(), rate=rate)
    weights = [weight.detach().numpy().copy() for weight in imp.weights]
    magnitudes = np.concatenate([np.abs(weight).ravel() for weight in weights])
    floor = round(target * magnitudes.size)
    keep = np.ones(magnitudes.size, dtype=bool)
    for round_index in range(7):
        count = min(math.ceil(rate * int(keep.sum())), int(keep.sum()) - floor)
        if count > 0:
            order = np.argsort(np.where(keep, magnitudes, np.inf), kind="stable")
            keep[order[:count]] = False
        density = imp.prune_round(min_density=target)
        assert density == int(keep.sum()) / magnitudes.size, round_index
        found = np.concatenate([mask.numpy().ravel() for mask in imp.masks])
        np.testing.assert_array_equal(found, keep, err_msg=str(round_index))
    assert imp.survivors() == floor and imp.round == 5  # 5 rounds pruned, the last two did nothing


@pytest.mark.parametrize("value, error", [(0.0, ValueError), (1.5, ValueError), (True, TypeError), ("0.1", TypeError)])
def test_min_density_must_be_a_fraction(value, error):
    with pytest.raises(error, match="min_density"):
        IMP(mlp()).prune_round(min_density=value)


def _docstring_example(module_doc: str) -> str:
    """The code block after the first ``::`` of a module docstring, dedented."""
    import textwrap

    block = module_doc.split("::\n", 1)[1].split("\n\n", 1)[0]
    return textwrap.dedent(block.strip("\n"))


def test_the_module_docstring_loop_runs_as_written_and_trains_steps_k_to_T_after_each_rewind():
    """imp.py's example, executed: round 1 trains steps 0..T-1, later rounds k..T-1 (as open_lth and
    the CLI), and after the last rewind the model holds the step-k weights under the final masks."""
    import sparseticket.methods.imp as imp_module

    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 6, generator=generator), torch.randn(8, 4, generator=generator)) for _ in range(6)]
    seen, at_capture = [], {}

    def batch(step):
        seen.append(step)
        if step == 2 and not at_capture:  # the weights the round-1 capture stores (before step 2 trains)
            at_capture.update(copy.deepcopy(model.state_dict()))
        return data[step]

    namespace = {"IMP": IMP, "model": model, "optimizer": optimizer, "scheduler": scheduler, "batch": batch,
                 "loss_fn": nn.functional.mse_loss, "rounds": 3, "steps": 6, "k": 2}
    exec(_docstring_example(imp_module.__doc__), namespace)  # noqa: S102 - the documented example, as written
    assert seen == list(range(6)) + list(range(2, 6)) * 2
    ticket, imp = namespace["ticket"], namespace["imp"]
    assert imp.round == 3 and math.isclose(ticket.density(), imp.density)
    for name, mask in ticket.masks.items():
        weight = model.state_dict()[name]
        assert torch.equal(weight[mask], at_capture[name][mask]) and (weight[~mask] == 0).all()
    assert scheduler.last_epoch == 2 and optimizer.param_groups[0]["lr"] == 0.025
