"""The one training loop (with hooks where the methods plug in), evaluation and BatchNorm recalibration."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from sparseticket.builtin.data import Split
from sparseticket.methods import Ticket

Hook = Callable[[], object]


def train_steps(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    after_backward: Sequence[Hook] = (),
    after_step: Sequence[Hook] = (),
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
) -> tuple[float, int]:
    """The training loop every search, fine-tuning and study runs: one step per batch.

    Each step: zero the gradients, forward, loss, backward, the ``after_backward`` hooks (a
    method's gradient edits; Gem-Miner's score step), ``optimizer.step()``, ``scheduler.step()``,
    the ``after_step`` hooks. Without an optimizer the hooks do all the updating. Returns (sum of
    the batch losses weighted by batch size, examples) on this process.
    """
    model.train()
    total, count = 0.0, 0
    for inputs, targets in batches:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        loss = loss_function(model(inputs), targets)
        loss.backward()
        for hook in after_backward:
            hook()
        if optimizer is not None:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for hook in after_step:
            hook()
        total += loss.item() * len(targets)
        count += len(targets)
    return total, count


def train_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    after_backward: Hook | None = None,
) -> float:
    """One epoch of ``train_steps`` over ``loader``; the mean loss."""
    total, count = train_steps(model, loader, optimizer=optimizer,
                               after_backward=() if after_backward is None else (after_backward,))
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


def evaluate(model: nn.Module, data: Split, ndigits: int | None = None) -> dict[str, float]:
    """``test_accuracy`` on the clean test set, and ``test_accuracy_distorted`` when the split has a
    distorted one; rounded to ``ndigits`` decimals if given."""
    metrics = {"test_accuracy": accuracy(model, data.test_loader())}
    if data.distorted_test_images is not None:
        metrics["test_accuracy_distorted"] = accuracy(model, data.distorted_test_loader())
    return metrics if ndigits is None else {key: round(value, ndigits) for key, value in metrics.items()}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Recompute every BatchNorm's running mean and variance on ``images``; no gradient step.

    The statistics are reset, then the model runs forward in train mode over ``images`` in
    near-equal batches of at most ``batch_size`` with ``momentum=None``, so each running statistic is the plain
    average of the batches' statistics (the batch variance unbiased, as BatchNorm keeps it). Each
    module's momentum and train/eval mode are restored afterwards. Returns ``model``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("images must hold at least one example to recalibrate BatchNorm statistics")
    norms = [module for module in model.modules() if isinstance(module, _BatchNorm) and module.track_running_stats]
    if not norms:
        return model
    modes = {module: module.training for module in model.modules()}
    momenta = {norm: norm.momentum for norm in norms}
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    try:
        for batch in torch.tensor_split(images, math.ceil(len(images) / batch_size)):  # sizes differ by <= 1
            model(batch)
    finally:
        for norm, momentum in momenta.items():
            norm.momentum = momentum
        for module, training in modes.items():
            module.training = training
    return model


def accuracy_at_pruning(model: nn.Module, channel_masks: dict[str, torch.Tensor], data: Split) -> dict[str, float]:
    """Test accuracy of a copy of ``model`` with the masked-out channels zeroed (gamma and beta),
    raw and after ``recalibrate_batchnorm`` on the (undistorted) training images; ``model`` is untouched.

    Keys: ``accuracy_at_pruning`` and ``accuracy_at_pruning_recalibrated``.
    """
    pruned = Ticket({}, "channels", {}, channel_masks=channel_masks).apply_(copy.deepcopy(model))
    raw = accuracy(pruned, data.test_loader())
    recalibrate_batchnorm(pruned, data.train_images)
    return {"accuracy_at_pruning": raw, "accuracy_at_pruning_recalibrated": accuracy(pruned, data.test_loader())}
