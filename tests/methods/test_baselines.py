"""Pruning-at-initialization baselines and ticket sanity checks, against hand and NumPy references."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sparseticket.builtin.data import load_digits_split
from sparseticket.builtin.models import vgg_small
from sparseticket.methods.baselines import (
    grasp_scores,
    grasp_ticket,
    magnitude_ticket,
    random_ticket,
    smart_ratio_ticket,
    snip_scores,
    snip_ticket,
    synflow_scores,
    synflow_ticket,
)
from sparseticket.methods.sanity import inverted_ticket, reinitialized, sanity_checks, shuffled_ticket
from sparseticket.methods.ticket import Ticket

DENSITIES = (0.2, 0.05, 0.014)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """64 digits images and labels."""
    split = load_digits_split()
    return split.train_images[:64], split.train_labels[:64]


@pytest.fixture
def model() -> nn.Sequential:
    """vgg_small(width=8): 4 convs and a linear, 4,264 prunable weights."""
    torch.manual_seed(0)
    return vgg_small(width=8)


def small_cnn() -> nn.Sequential:
    """3 convs (36, 288, 576 weights) and a linear (80 weights): 980 prunable weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 8, 3, bias=False), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def kept(ticket: Ticket) -> int:
    """Number of kept weights over all layers."""
    return sum(int(mask.sum()) for mask in ticket.masks.values())


def counts(ticket: Ticket) -> list[int]:
    """Kept weights per layer, in mask order."""
    return [int(mask.sum()) for mask in ticket.masks.values()]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer."""
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def flat(tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """All values, layer after layer, as one float64 NumPy vector."""
    return np.concatenate([tensor.detach().double().flatten().numpy() for tensor in tensors.values()])


def top_reference(values: np.ndarray, keep: int) -> np.ndarray:
    """Bool vector keeping the ``keep`` largest values (ties: lower index first), by a global argsort."""
    chosen = np.zeros(values.size, dtype=bool)
    chosen[np.argsort(-values, kind="stable")[:keep]] = True
    return chosen


def flat_mask(ticket: Ticket) -> np.ndarray:
    """The ticket's masks as one bool vector."""
    return np.concatenate([mask.flatten().numpy() for mask in ticket.masks.values()])


BUILDERS = {
    "random": lambda model, batch, density: random_ticket(model, density, seed=3),
    "smart_ratio": lambda model, batch, density: smart_ratio_ticket(model, density, seed=3),
    "magnitude": lambda model, batch, density: magnitude_ticket(model, density),
    "snip": lambda model, batch, density: snip_ticket(model, F.cross_entropy, batch, density),
    "grasp": lambda model, batch, density: grasp_ticket(model, F.cross_entropy, batch, density),
    "synflow": lambda model, batch, density: synflow_ticket(model, (1, 1, 8, 8), density, iterations=20),
}


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("method", BUILDERS)
def test_exact_global_count_and_model_untouched(method, density, model, batch):
    before, training = state(model), model.training
    ticket = BUILDERS[method](model, batch, density)
    assert ticket.method == method and ticket.hyperparameters["density"] == density
    assert list(ticket.masks) == ["0.weight", "3.weight", "7.weight", "10.weight", "15.weight"]
    parameters = dict(model.named_parameters())
    assert all(mask.shape == parameters[name].shape for name, mask in ticket.masks.items())
    assert kept(ticket) == round(density * 4264)
    after = state(model)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert model.training == training
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize("method", BUILDERS)
def test_density_one_keeps_everything(method, model, batch):
    assert kept(BUILDERS[method](model, batch, 1.0)) == 4264


@pytest.mark.parametrize("density", [0, -0.1, 1.5, math.nan, math.inf])
def test_bad_density_raises(density, model, batch):
    for builder in BUILDERS.values():
        with pytest.raises(ValueError, match="density"):
            builder(model, batch, density)
    with pytest.raises(ValueError, match="density"):
        inverted_ticket({"w": torch.rand(5)}, density)


def test_density_must_be_a_number(model):
    with pytest.raises(TypeError, match="density"):
        magnitude_ticket(model, "0.5")


# ----------------------------------------------------------------- random ratios
def test_random_ticket_follows_layer_densities(model):
    source = magnitude_ticket(model, 0.1)
    ticket = random_ticket(model, source.density(), layer_densities=source.density_per_layer(), seed=1)
    assert counts(ticket) == counts(source)
    assert not all(torch.equal(ticket.masks[name], source.masks[name]) for name in source.masks)
    chosen = {"0.weight": 0.5, "3.weight": 0.25, "7.weight": 0.1, "10.weight": 0.03, "15.weight": 1.0}
    sizes = [72, 576, 1152, 2304, 160]
    expected = [36, 144, 115, 69, 160]  # round(d * n): 36, 144, 115.2, 69.12, 160
    assert [round(d * n) for d, n in zip(chosen.values(), sizes)] == expected
    assert counts(random_ticket(model, 524 / 4264, layer_densities=chosen)) == expected


def test_random_ticket_rejects_inconsistent_layer_densities(model):
    layer_densities = dict.fromkeys(dict(magnitude_ticket(model, 0.5).masks), 0.5)
    with pytest.raises(ValueError, match="does not match"):
        random_ticket(model, 0.2, layer_densities=layer_densities)
    with pytest.raises(ValueError, match="one entry per prunable weight"):
        random_ticket(model, 0.5, layer_densities={"0.weight": 0.5})


def test_random_ticket_uniform_and_seeded(model):
    ticket = random_ticket(model, 0.2, seed=5)
    for name, density in ticket.density_per_layer().items():
        assert abs(density - 0.2) <= 1 / ticket.masks[name].numel()
    again, other = random_ticket(model, 0.2, seed=5), random_ticket(model, 0.2, seed=6)
    assert all(torch.equal(ticket.masks[name], again.masks[name]) for name in ticket.masks)
    assert not all(torch.equal(ticket.masks[name], other.masks[name]) for name in ticket.masks)


def test_smart_ratio_matches_hand_computation():
    # L = 4; shares (L-l+1)^2 + (L-l+1): 20, 12, 6 for the convs; the linear keeps round(0.3 * 80) = 24.
    # density 0.2: keep round(196) = 196, 172 left for the convs; scale = 172 / (20*36 + 12*288 + 6*576)
    # = 172 / 7632: counts 36*20*172/7632 = 16.23, 288*12*172/7632 = 77.89, 576*6*172/7632 = 77.89,
    # floors 16 + 77 + 77 = 170, the 2 left go to the largest remainders (layers 2 and 3).
    ticket = smart_ratio_ticket(small_cnn(), 0.2)
    assert counts(ticket) == [16, 78, 78, 24]
    assert int(ticket.masks["7.weight"].sum()) == 24  # 30% of the 80 linear weights
    # density 0.9: keep 882, 858 for the convs; 20*858/7632 = 2.25 > 1, so layer 1 is full (36);
    # then 12*822/6912 = 1.43 > 1, layer 2 full (288); layer 3 takes the rest, 882 - 24 - 36 - 288 = 534.
    assert counts(smart_ratio_ticket(small_cnn(), 0.9)) == [36, 288, 534, 24]
    # density 0.014: keep round(13.72) = 14 < 24, so the linear takes all 14 (30% is not feasible).
    assert counts(smart_ratio_ticket(small_cnn(), 0.014)) == [0, 0, 0, 14]


@pytest.mark.parametrize("density", DENSITIES)
def test_smart_ratio_on_vgg_keeps_30_percent_of_the_linear(density, model):
    ticket = smart_ratio_ticket(model, density)
    assert int(ticket.masks["15.weight"].sum()) == 48
    per_layer = list(ticket.density_per_layer().values())[:4]
    assert per_layer == sorted(per_layer, reverse=True)


# ----------------------------------------------------------------- scored baselines
@pytest.mark.parametrize("density", DENSITIES)
def test_magnitude_keeps_the_largest_weights(density, model):
    ticket = magnitude_ticket(model, density)
    magnitudes = flat({name: parameter.abs() for name, parameter in model.named_parameters()
                       if name in ticket.masks})
    assert np.array_equal(flat_mask(ticket), top_reference(magnitudes, round(density * 4264)))


def test_ties_go_to_the_earlier_layer_then_the_lower_index():
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)
    ticket = magnitude_ticket(model, 14 / 18)
    assert ticket.masks["0.weight"].all()
    assert ticket.masks["1.weight"].flatten().tolist() == [True, True, False, False, False, False]


def test_snip_scores_equal_plain_autograd(model, batch):
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(batch[0]), batch[1]).backward()
    expected = {name: (parameter.grad * parameter).abs() for name, parameter in reference.named_parameters()
                if name.endswith("weight") and parameter.dim() > 1}
    scores = snip_scores(model, F.cross_entropy, batch)
    assert list(scores) == list(expected)
    for name in expected:
        torch.testing.assert_close(scores[name], expected[name])
    ticket = snip_ticket(model, F.cross_entropy, batch, 0.05)
    assert np.array_equal(flat_mask(ticket), top_reference(flat(expected), round(0.05 * 4264)))


def tiny_mlp() -> nn.Sequential:
    """Linear-tanh-linear in float64, for second derivatives."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_scores_match_functional_hvp(temperature):
    model = tiny_mlp()
    inputs = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    names = ["0.weight", "2.weight"]
    parameters = dict(model.named_parameters())

    def loss(*weights: torch.Tensor) -> torch.Tensor:
        outputs = functional_call(model, {**parameters, **dict(zip(names, weights))}, (inputs,))
        return F.cross_entropy(outputs / temperature, labels)

    weights = tuple(parameters[name].detach() for name in names)
    gradient = torch.autograd.grad(loss(*(weight.requires_grad_() for weight in weights)), weights)
    _, hessian_gradient = torch.autograd.functional.hvp(loss, weights, gradient)
    scores = grasp_scores(model, F.cross_entropy, (inputs, labels), temperature=temperature)
    for name, weight, product in zip(names, weights, hessian_gradient):
        torch.testing.assert_close(scores[name], -(weight.detach() * product))


def test_grasp_keeps_the_lowest_scores(model, batch):
    scores = grasp_scores(model, F.cross_entropy, batch)
    ticket = grasp_ticket(model, F.cross_entropy, batch, 0.05)
    assert ticket.hyperparameters["temperature"] == 200.0
    assert np.array_equal(flat_mask(ticket), top_reference(-flat(scores), round(0.05 * 4264)))


def linear_chain() -> nn.Sequential:
    """3 -> 2 -> 1 linear chain without biases, with signed weights."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-3.0, 0.25, 1.0]]))
        model[1].weight.copy_(torch.tensor([[-0.5, 2.0]]))
    return model


def test_synflow_single_pass_equals_hand_computation():
    # R = 1^T |W2| |W1| 1: dR/dW1[i, j] = |W2[0, i]|, dR/dW2[0, i] = sum_j |W1[i, j]|.
    scores = synflow_scores(linear_chain(), (1, 3))
    expected_first = torch.tensor([[0.5 * 1.0, 0.5 * 2.0, 0.5 * 0.5], [2.0 * 3.0, 2.0 * 0.25, 2.0 * 1.0]])
    expected_second = torch.tensor([[0.5 * 3.5, 2.0 * 4.25]])
    torch.testing.assert_close(scores["0.weight"], expected_first.double())
    torch.testing.assert_close(scores["1.weight"], expected_second.double())
    # keep 3 of 8 in one step: 8.5 (W2[0, 1]), 6.0 (W1[1, 0]), then 2.0 (W1[1, 2]).
    ticket = synflow_ticket(linear_chain(), (1, 3), 3 / 8, iterations=1)
    assert ticket.masks["0.weight"].tolist() == [[False, False, False], [True, False, True]]
    assert ticket.masks["1.weight"].tolist() == [[False, True]]


def test_synflow_pruned_weights_stay_pruned_and_bn_model_untouched(model):
    before = state(model)
    two_steps = synflow_ticket(model, (1, 1, 8, 8), 0.05, iterations=2)
    first_step = synflow_ticket(model, (1, 1, 8, 8), 0.05 ** 0.5, iterations=1)
    assert kept(two_steps) == round(0.05 * 4264)
    assert not (flat_mask(two_steps) & ~flat_mask(first_step)).any()
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert model.training


# ----------------------------------------------------------------- sanity checks
def test_shuffled_keeps_layer_densities_and_moves_the_mask(model):
    ticket = magnitude_ticket(model, 0.2)
    shuffled = shuffled_ticket(ticket, seed=1)
    assert counts(shuffled) == counts(ticket)
    assert all(not torch.equal(shuffled.masks[name], ticket.masks[name]) for name in ticket.masks)
    assert shuffled.hyperparameters["source"] == "magnitude"
    again = shuffled_ticket(ticket, seed=1)
    assert all(torch.equal(shuffled.masks[name], again.masks[name]) for name in ticket.masks)


def test_reinitialized_differs_and_is_deterministic(model):
    before, rng = state(model), torch.random.get_rng_state()
    first, second, other = reinitialized(model, seed=4), reinitialized(model, seed=4), reinitialized(model, 5)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    for name, parameter in model.named_parameters():
        if parameter.dim() > 1:
            assert not torch.equal(dict(first.named_parameters())[name], parameter)
            assert not torch.equal(dict(first.named_parameters())[name], dict(other.named_parameters())[name])
    assert all(torch.equal(first.state_dict()[name], second.state_dict()[name]) for name in before)


def test_inverted_keeps_the_lowest_scores():
    generator = torch.Generator().manual_seed(7)
    scores = {"a.weight": torch.rand(4, 6, generator=generator), "b.weight": torch.rand(10, generator=generator)}
    ticket = inverted_ticket(scores, 0.25)
    assert kept(ticket) == round(0.25 * 34)
    assert np.array_equal(flat_mask(ticket), top_reference(-flat(scores), round(0.25 * 34)))
    kept_scores = torch.cat([scores[name][ticket.masks[name]] for name in scores])
    pruned_scores = torch.cat([scores[name][~ticket.masks[name]] for name in scores])
    assert kept_scores.max() < pruned_scores.min()


def test_sanity_checks_variants(model, batch):
    scores = snip_scores(model, F.cross_entropy, batch)
    ticket = snip_ticket(model, F.cross_entropy, batch, 0.1)
    variants = sanity_checks(ticket, model, scores=scores, seed=2)
    assert list(variants) == ["original", "shuffled", "reinitialized", "inverted"]
    assert variants["original"][0] is ticket and variants["reinitialized"][0] is ticket
    assert all(network is not model for _, network in variants.values())
    assert counts(variants["shuffled"][0]) == counts(ticket)
    inverted = variants["inverted"][0]
    assert kept(inverted) == kept(ticket)
    assert not (flat_mask(inverted) & flat_mask(ticket)).any()
    assert list(sanity_checks(ticket, model)) == ["original", "shuffled", "reinitialized"]
    with pytest.raises(ValueError, match="one entry per ticket mask"):
        sanity_checks(ticket, model, scores={"0.weight": scores["0.weight"]})
