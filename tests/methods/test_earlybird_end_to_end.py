"""EarlyBird and WORM end to end on real data (scikit-learn digits) with a small VGG-style CNN."""

from __future__ import annotations

import pytest
import torch

from sparseticket.builtin.data import load_digits_split
from sparseticket.builtin.models import vgg_small
from sparseticket.driver.training import accuracy, train_epoch
from sparseticket.methods import WORM, EarlyBird


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def _search(method, digits, seed: int = 0, epochs: int = 25):
    torch.manual_seed(seed)
    model = vgg_small(width=16)
    tracker = method(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for epoch in range(epochs):
        train_epoch(model, digits.train_loader(seed=epoch), optimizer, after_backward=tracker.after_backward)
        if tracker.epoch_end():
            break
    return model, tracker


@pytest.mark.parametrize("method", [EarlyBird, WORM])
def test_ticket_found_pruned_and_retrained(digits, method):
    model, tracker = _search(method, digits)
    assert tracker.found_epoch is not None and tracker.found_epoch >= 5
    assert max(tracker.distances) <= 0.1
    example = digits.test_images[:8]
    pruned = tracker.prune(example_inputs=example, measure_latency=False)
    report = tracker.prune_report
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    kept = sum(int(mask.sum()) for mask in report.kept_channels.values())
    assert kept < sum(mask.numel() for mask in report.kept_channels.values())
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.05, momentum=0.9)
    for epoch in range(5):
        train_epoch(pruned, digits.train_loader(seed=100 + epoch), optimizer)
    assert accuracy(pruned, digits.test_loader()) > 0.8
    assert accuracy(model, digits.test_loader()) > 0.8  # the dense model is untouched by prune


def test_worm_truncates_before_the_ticket(digits):
    _, worm = _search(WORM, digits)
    assert worm.truncating and worm.trigger_epoch is not None
    assert worm.trigger_epoch <= worm.found_epoch
