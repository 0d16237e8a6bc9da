"""BatchNorm recalibration against hand-computed statistics, and accuracy at pruning on a copy."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparseticket.builtin.data import Split
from sparseticket.driver.training import accuracy, accuracy_at_pruning, recalibrate_batchnorm


def _tiny(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 5), nn.BatchNorm1d(5), nn.Linear(5, 4))
    with torch.no_grad():  # non-trivial affine parameters and stale statistics to overwrite
        for norm in (model[1], model[5]):
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
            norm.running_mean.fill_(100.0)
            norm.running_var.fill_(50.0)
    return model.eval()


def _stats(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, biased variance, unbiased variance) per channel, by the textbook formulas in float64."""
    x = x.double()
    count = x.numel() // x.shape[1]
    mean = x.sum(dims) / count
    shape = [1, -1] + [1] * (x.dim() - 2)
    squares = ((x - mean.reshape(shape)) ** 2).sum(dims)
    return mean, squares / count, squares / (count - 1)


def _hand_statistics(model: nn.Sequential, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(running mean, running var) of both BN layers: the average over batches of each batch's mean and
    unbiased variance, the first layer's output normalised by its batch statistics (train mode)."""
    first, second = [], []
    for batch in batches:
        with torch.no_grad():
            conv = model[0](batch)
            mean, biased, unbiased = _stats(conv, (0, 2, 3))
            first.append((mean, unbiased))
            normalised = ((conv.double() - mean.reshape(1, -1, 1, 1)) / torch.sqrt(biased.reshape(1, -1, 1, 1) + 1e-5)
                          * model[1].weight.double().reshape(1, -1, 1, 1) + model[1].bias.double().reshape(1, -1, 1, 1))
            hidden = model[4](torch.relu(normalised).flatten(1).float())
            mean, _, unbiased = _stats(hidden, (0,))
            second.append((mean, unbiased))
    return [(torch.stack([m for m, _ in layer]).mean(0), torch.stack([v for _, v in layer]).mean(0))
            for layer in (first, second)]


@pytest.mark.parametrize("count, batch_size, sizes", [(12, 256, [12]), (10, 4, [4, 3, 3])])
def test_recalibration_equals_hand_computed_statistics(count, batch_size, sizes):
    model = _tiny()
    images = torch.randn(count, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    parameters = copy.deepcopy(dict(model.named_parameters()))
    model[5].train()  # a module left in train mode stays so
    assert recalibrate_batchnorm(model, images, batch_size=batch_size) is model
    batches = list(torch.split(images, sizes))
    for norm, (mean, var) in zip((model[1], model[5]), _hand_statistics(_tiny(), batches)):
        torch.testing.assert_close(norm.running_mean.double(), mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(norm.running_var.double(), var, atol=1e-5, rtol=1e-5)
        assert norm.momentum == 0.1 and norm.num_batches_tracked.item() == len(sizes)
    assert not model.training and not model[1].training and model[5].training
    for name, parameter in model.named_parameters():  # no gradient step, no gradient
        assert torch.equal(parameter, parameters[name]) and parameter.grad is None


def test_recalibration_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        recalibrate_batchnorm(_tiny(), torch.zeros(4, 1, 4, 4), batch_size=0)
    with pytest.raises(ValueError, match="images"):
        recalibrate_batchnorm(_tiny(), torch.zeros(0, 1, 4, 4))


def _split(seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(64, 1, 4, 4, generator=generator)
    labels = torch.randint(0, 4, (64,), generator=generator)
    return Split(images[:48], labels[:48], images[48:], labels[48:], classes=4)


def test_accuracy_at_pruning_zeroes_channels_on_a_copy():
    model, data = _tiny(), _split(2)
    before = copy.deepcopy(model.state_dict())
    masks = {"1": torch.tensor([True, False, True]), "5": torch.tensor([True, True, False, True, False])}
    measured = accuracy_at_pruning(model, masks, data)
    for key, value in model.state_dict().items():  # the searched model is untouched
        assert torch.equal(value, before[key]), key
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            by_hand.get_submodule(name).weight[~mask] = 0
            by_hand.get_submodule(name).bias[~mask] = 0
    assert measured["accuracy_at_pruning"] == accuracy(by_hand, data.test_loader())
    recalibrate_batchnorm(by_hand, data.train_images)
    assert measured["accuracy_at_pruning_recalibrated"] == accuracy(by_hand, data.test_loader())
    keep_all = {name: torch.ones_like(mask) for name, mask in masks.items()}
    assert accuracy_at_pruning(model, keep_all, data)["accuracy_at_pruning"] == accuracy(model, data.test_loader())
