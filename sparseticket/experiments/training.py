"""A plain training loop for the experiments, with hooks where the methods plug in."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    after_backward: Callable[[], None] | None = None,
) -> float:
    """One epoch of cross-entropy training; ``after_backward`` runs between backward and step."""
    model.train()
    total, count = 0.0, 0
    for images, labels in loader:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        total += loss.item() * len(labels)
        count += len(labels)
    return total / max(count, 1)


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Fraction of correctly classified examples, in eval mode."""
    model.eval()
    correct, count = 0, 0
    for images, labels in loader:
        correct += int((model(images).argmax(dim=1) == labels).sum())
        count += len(labels)
    return correct / max(count, 1)
