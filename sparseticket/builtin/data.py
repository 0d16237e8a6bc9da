"""The ``Split`` of a data set into train/test tensors, and scikit-learn's bundled digits (1,797 8x8 images,
10 classes): real data that needs no download."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from sparseticket.builtin.augment import augment_digits, distorted_test_images

AUGMENT_SEED_OFFSET = 0x5EED_A06  # the distortions of a loader seeded s come from seed s + this


class DatasetUnavailable(Exception):
    """The dataset cannot be loaded here: a package it needs is missing, or its files are missing or unreadable."""


@dataclass
class Split:
    """Train and test tensors of one dataset: inputs [N, C, ...] (digits: images [N, 1, 8, 8] in [0, 1];
    MNIST-1D: signals [N, 1, 40]), int64 labels [N] in [0, classes). The attribute names say "images"
    whatever the inputs are.

    With ``augment`` on (images [N, C, H, W] only), every training loader yields distorted copies of
    the training images (``augment_digits``, drawn from the loader's seed: the same seed gives the
    same batches), and ``distorted_test_images`` holds a fixed distorted copy of the test set.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: int
    augment: bool = False
    distorted_test_images: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Split:
        """The same split with every tensor on ``device``."""
        distorted = None if self.distorted_test_images is None else self.distorted_test_images.to(device)
        return Split(self.train_images.to(device), self.train_labels.to(device), self.test_images.to(device),
                     self.test_labels.to(device), self.classes, self.augment, distorted)

    def augmented(self) -> Split:
        """The same split with training-time distortions on and a distorted copy of the test set.

        ValueError unless the inputs are images [N, C, H, W] (the distortions are 2-D affine maps).
        """
        if self.train_images.dim() != 4:
            raise ValueError(f"augment distorts images [N, C, H, W] (random affine and noise); these inputs are "
                             f"[N, {', '.join(map(str, self.train_images.shape[1:]))}]")
        return replace(self, augment=True, distorted_test_images=distorted_test_images(self.test_images))

    def training_images(self, seed: int) -> torch.Tensor:
        """What the loaders of ``seed`` train on: the images, or (``augment``) their distorted copy for that seed."""
        if not self.augment:
            return self.train_images
        generator = torch.Generator().manual_seed(seed + AUGMENT_SEED_OFFSET)
        return augment_digits(self.train_images, generator)

    def train_loader(self, batch_size: int = 64, seed: int = 0) -> DataLoader:
        """Shuffled training batches; the order (and, with ``augment``, the distortions) is fixed by ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(self.training_images(seed), self.train_labels), batch_size=batch_size,
                          shuffle=True, generator=generator)

    def sharded_loader(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> DataLoader:
        """This rank's part of shuffled global batches of ``batch_size`` (``DistributedSampler``).

        The shuffled order depends on ``seed`` only, not on ``world_size``: the union of the ranks'
        i-th batches is the i-th batch of a single-process run (``world_size=1``) with the same seed
        (when the training set divides evenly; else the sampler repeats up to ``world_size - 1``
        samples so that every rank gets as many). With ``augment``, every rank distorts the whole
        training set from the same seed, so each example's distortion does not depend on the rank either.
        """
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if batch_size < world_size or batch_size % world_size:
            raise ValueError(f"batch_size (the global batch) must be a multiple of the number of processes "
                             f"({world_size}), got {batch_size}")
        dataset = TensorDataset(self.training_images(seed), self.train_labels)
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        return DataLoader(dataset, batch_size=batch_size // world_size, sampler=sampler)

    def test_loader(self, batch_size: int = 512) -> DataLoader:
        """Test batches in order."""
        return DataLoader(TensorDataset(self.test_images, self.test_labels), batch_size=batch_size)

    def distorted_test_loader(self, batch_size: int = 512) -> DataLoader:
        """Batches of the distorted test set in order; ValueError if the split has none (``augmented()``)."""
        if self.distorted_test_images is None:
            raise ValueError("this split has no distorted test set: build it with Split.augmented() "
                             "(the CLI's --augment)")
        return DataLoader(TensorDataset(self.distorted_test_images, self.test_labels), batch_size=batch_size)


def split_by_seed(images: torch.Tensor, labels: torch.Tensor, classes: int, seed: int, test_fraction: float) -> Split:
    """A Split holding out ``max(1, int(N * test_fraction))`` samples, chosen by a permutation drawn from ``seed``."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test_count = max(1, int(len(labels) * test_fraction))
    test, train = order[:test_count], order[test_count:]
    return Split(images[train], labels[train], images[test], labels[test], classes=classes)


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> Split:
    """The digits set, scaled to [0, 1], split into train/test by a seeded permutation."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test_count = int(len(labels) * test_fraction)
    test, train = order[:test_count], order[test_count:]
    return Split(images[train], labels[train], images[test], labels[test], classes=10)
