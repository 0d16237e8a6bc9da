"""Instability analysis: error barriers on the linear path between two trained networks."""

from __future__ import annotations

import copy
from functools import cache

import pytest
import torch
from torch import nn

from sparseticket.builtin.data import Split, load_digits_split
from sparseticket.builtin.models import vgg_small
from sparseticket.driver.training import accuracy, train_epoch
from sparseticket.methods.imp import IMP
from sparseticket.methods.stability import STABLE_BARRIER, Barrier, error_barrier, instability


@cache
def digits() -> Split:
    """The digits split, loaded once."""
    return load_digits_split()


def trained_vgg(init_seed: int, data_seed: int, epochs: int = 2) -> nn.Module:
    """vgg_small(width=8) from ``init_seed`` trained on digits with data order ``data_seed``."""
    torch.manual_seed(init_seed)
    model = vgg_small(width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = digits().train_loader(seed=data_seed)
    for _ in range(epochs):
        train_epoch(model, loader, optimizer)
    return model


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], bool]:
    """A copy of the state dict and the training flag, to check a model was not modified."""
    return copy.deepcopy(model.state_dict()), model.training


def assert_unchanged(model: nn.Module, before: tuple[dict[str, torch.Tensor], bool]) -> None:
    """The model's state and training flag equal the snapshot."""
    state, training = before
    assert model.training == training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def make_sgd(model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum, as the instability copies use."""
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_barrier_of_a_model_with_itself_is_zero():
    model = trained_vgg(0, 0, epochs=1)
    result = error_barrier(model, model, digits().test_loader(), points=5)
    assert result.barrier == 0.0
    assert len(set(result.errors)) == 1
    assert result.errors[0] == pytest.approx(1 - accuracy(model, digits().test_loader()))
    assert result.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert result.is_stable


def test_barrier_between_differently_trained_models_is_positive_and_inputs_unchanged():
    model_a, model_b = trained_vgg(0, 0), trained_vgg(1, 1)
    model_b.train()
    before_a, before_b = snapshot(model_a), snapshot(model_b)
    result = error_barrier(model_a, model_b, digits().test_loader(), points=30)
    assert_unchanged(model_a, before_a)
    assert_unchanged(model_b, before_b)
    assert len(result.errors) == len(result.alphas) == 30
    assert result.alphas[0] == 0.0 and result.alphas[-1] == 1.0
    assert result.errors[0] == pytest.approx(1 - accuracy(copy.deepcopy(model_a), digits().test_loader()))
    assert result.errors[-1] == pytest.approx(1 - accuracy(copy.deepcopy(model_b), digits().test_loader()))
    assert result.barrier == max(result.errors) - (result.errors[0] + result.errors[-1]) / 2
    assert result.barrier > STABLE_BARRIER and not result.is_stable


def test_midpoint_interpolates_parameters_and_batchnorm_statistics():
    model_a, model_b = trained_vgg(0, 0, epochs=1), trained_vgg(1, 1, epochs=1)
    midpoint = copy.deepcopy(model_a)
    midpoint.load_state_dict({key: (value + model_b.state_dict()[key]) / 2 if value.is_floating_point() else value
                              for key, value in model_a.state_dict().items()})
    result = error_barrier(model_a, model_b, digits().test_loader(), points=3)
    assert result.errors[1] == pytest.approx(1 - accuracy(midpoint, digits().test_loader()))


def test_mismatched_architectures_raise():
    loader = digits().test_loader()
    with pytest.raises(ValueError, match="same architecture"):
        error_barrier(vgg_small(width=8), vgg_small(width=4), loader)
    with pytest.raises(ValueError, match="same architecture"):
        error_barrier(vgg_small(width=8), nn.Sequential(*vgg_small(width=8)[:-1], nn.Identity()), loader)
    with pytest.raises(TypeError, match="model_b must be"):
        error_barrier(vgg_small(width=8), "model", loader)
    with pytest.raises(ValueError, match="points must be"):
        error_barrier(vgg_small(width=8), vgg_small(width=8), loader, points=1)
    with pytest.raises(ValueError, match="no examples"):
        error_barrier(vgg_small(width=8), vgg_small(width=8), [], points=2)


def test_instability_same_seed_is_exactly_stable_and_leaves_the_model():
    torch.manual_seed(0)
    model = vgg_small(width=8)
    before = snapshot(model)
    options = dict(make_optimizer=make_sgd, make_loader=lambda seed: digits().train_loader(seed=seed),
                   train_epoch=train_epoch, epochs=1, test_loader=digits().test_loader(), points=4)
    same = instability(model, seeds=(3, 3), **options)
    assert same.barrier == 0.0 and same.errors[0] < 0.8  # trained, and both copies identical
    different = instability(model, seeds=(1, 2), **options)
    assert different.errors != same.errors
    assert_unchanged(model, before)


def test_instability_of_a_sparse_network_keeps_its_masks():
    torch.manual_seed(0)
    model = vgg_small(width=8)
    imp = IMP(model, rate=0.5)
    imp.prune_round()
    before = snapshot(model)
    trained = []

    def train_and_keep(copy_: nn.Module, loader, optimizer) -> None:
        train_epoch(copy_, loader, optimizer)
        trained.append(copy_)

    result = instability(model, make_optimizer=make_sgd, make_loader=lambda seed: digits().train_loader(seed=seed),
                         train_epoch=train_and_keep, epochs=1, test_loader=digits().test_loader(), points=3,
                         ticket=imp.ticket())
    assert isinstance(result, Barrier) and len(trained) == 2
    assert_unchanged(model, before)
    for copy_ in trained:
        assert set(copy_.state_dict()) == set(model.state_dict())  # the prune masks were made permanent
        for name, mask in imp.ticket().masks.items():
            weight = copy_.get_parameter(name)
            assert (weight[~mask] == 0).all()
            assert not torch.equal(weight, model.get_parameter(name))  # trained


def test_instability_bad_arguments_raise():
    options = dict(make_optimizer=make_sgd, make_loader=lambda seed: [], train_epoch=train_epoch,
                   test_loader=digits().test_loader())
    with pytest.raises(ValueError, match="epochs must be"):
        instability(vgg_small(width=8), epochs=-1, **options)
    with pytest.raises(ValueError, match="seeds must hold two"):
        instability(vgg_small(width=8), epochs=1, seeds=(1,), **options)
