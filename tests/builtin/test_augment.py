"""The harder digits task's distortions: bounds of the affine, the noise level, determinism, and
that augmenting leaves the loaders' data order alone."""

from __future__ import annotations

import math

import pytest
import torch

from sparseticket.builtin.augment import augment_digits, distorted_test_images
from sparseticket.builtin.data import Split
from sparseticket.builtin.datasets import load_dataset


def _lit_pixel(count: int, size: int, row: int, column: int) -> torch.Tensor:
    images = torch.zeros(count, 1, size, size)
    images[:, 0, row, column] = 1.0
    return images


def _centre_of_mass(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mass, x, y) of each image, in pixel coordinates (column, row)."""
    rows, columns = torch.meshgrid(torch.arange(images.shape[-2], dtype=torch.float64),
                                   torch.arange(images.shape[-1], dtype=torch.float64), indexing="ij")
    plane = images[:, 0].double()
    mass = plane.sum((1, 2))
    return mass, (plane * columns).sum((1, 2)) / mass, (plane * rows).sum((1, 2)) / mass


def test_no_distortion_is_the_identity():
    images = torch.rand(5, 2, 8, 6)
    same = augment_digits(images, torch.Generator().manual_seed(0), shift=0, rotation=0, noise=0)
    torch.testing.assert_close(same, images, atol=1e-6, rtol=0)


def test_same_seed_same_distortion_other_seed_another():
    images = load_dataset().train_images[:64]
    first = augment_digits(images, torch.Generator().manual_seed(7))
    assert torch.equal(first, augment_digits(images, torch.Generator().manual_seed(7)))
    assert not torch.allclose(first, augment_digits(images, torch.Generator().manual_seed(8)))


def test_shift_moves_a_lit_pixel_by_at_most_one_pixel_per_axis():
    images = _lit_pixel(2000, 8, 3, 4)  # interior: a 1 px move keeps all its mass in the image
    moved = augment_digits(images, torch.Generator().manual_seed(1), rotation=0, noise=0)
    mass, x, y = _centre_of_mass(moved)
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-5, rtol=0)  # bilinear keeps the mass
    dx, dy = (x - 4).abs(), (y - 3).abs()
    assert dx.max() <= 1 + 1e-5 and dy.max() <= 1 + 1e-5
    assert dx.max() > 0.95 and dy.max() > 0.95  # the whole +-1 px range is drawn
    assert (x - 4).mean().abs() < 0.05 and (y - 3).mean().abs() < 0.05  # symmetric


def test_rotation_turns_a_lit_pixel_by_at_most_15_degrees_about_the_centre():
    size, row, column = 33, 16, 26  # centre (16, 16); the pixel 10 px right of it, angle 0
    turned = augment_digits(_lit_pixel(500, size, row, column), torch.Generator().manual_seed(2), shift=0, noise=0)
    _, x, y = _centre_of_mass(turned)
    centre = (size - 1) / 2
    angles = torch.rad2deg(torch.atan2(y - centre, x - centre)).abs()
    radii = torch.hypot(x - centre, y - centre)
    assert angles.max() <= 15.3  # bilinear sampling of a single pixel blurs the angle a little
    assert angles.max() > 13.5  # and the range is used
    torch.testing.assert_close(radii, torch.full_like(radii, 10.0), atol=0.1, rtol=0)


def test_a_lit_digit_pixel_moves_at_most_about_two_pixels():
    corner = _lit_pixel(2000, 8, 1, 1)  # 2.5 px from the centre in each axis: the rotation moves it most
    _, x, y = _centre_of_mass(augment_digits(corner, torch.Generator().manual_seed(3), noise=0))
    bound = math.sqrt(2) + 2 * math.hypot(2.5, 2.5) * math.sin(math.radians(15) / 2)  # shift + chord of 15 deg
    assert torch.hypot(x - 1, y - 1).max() <= bound + 0.05


def test_noise_is_gaussian_with_std_0_1():
    noise = augment_digits(torch.zeros(400, 1, 8, 8), torch.Generator().manual_seed(4), shift=0, rotation=0)
    assert abs(noise.std().item() - 0.1) < 0.002 and abs(noise.mean().item()) < 0.002  # 25,600 pixels
    assert abs((noise.abs() < 0.1).double().mean().item() - 0.6827) < 0.01  # one-sigma mass of a normal


def test_bad_inputs_name_the_argument():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="images"):
        augment_digits(torch.zeros(8, 8), generator)
    with pytest.raises(ValueError, match="rotation"):
        augment_digits(torch.zeros(1, 1, 8, 8), generator, rotation=-1.0)


def test_distorted_test_set_is_fixed_and_distorted():
    split = load_dataset(augment=True)
    again = load_dataset(augment=True)
    assert torch.equal(split.distorted_test_images, again.distorted_test_images)
    assert torch.equal(split.distorted_test_images, distorted_test_images(split.test_images))
    assert not torch.allclose(split.distorted_test_images, split.test_images)
    plain = load_dataset()
    assert plain.distorted_test_images is None and not plain.augment
    assert torch.equal(plain.test_images, split.test_images) and torch.equal(plain.train_images, split.train_images)
    with pytest.raises(ValueError, match="distorted test set"):
        plain.distorted_test_loader()


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images, labels) for images, labels in loader]


def test_augmentation_keeps_the_data_order_and_is_fixed_by_the_loader_seed():
    plain = load_dataset()
    augmented = plain.augmented()
    # labels (a fingerprint of the order) and the undistorted images in the same order
    index = {image.numpy().tobytes(): i for i, image in enumerate(plain.train_images)}
    for loader_of in (lambda split: split.sharded_loader(64, seed=5), lambda split: split.train_loader(seed=5)):
        clean, distorted = _batches(loader_of(plain)), _batches(loader_of(augmented))
        assert [labels.tolist() for _, labels in clean] == [labels.tolist() for _, labels in distorted]
        order = torch.tensor([index[image.numpy().tobytes()] for images, _ in clean for image in images])
        expected = augmented.training_images(5)[order]
        assert torch.equal(torch.cat([images for images, _ in distorted]), expected)
        assert not torch.allclose(expected, plain.train_images[order])
        again = _batches(loader_of(augmented))
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(distorted, again))
    assert not torch.allclose(augmented.training_images(6), augmented.training_images(5))  # another seed, others


def test_ranks_union_is_the_single_process_batch_with_augmentation():
    plain = load_dataset()
    split = Split(plain.train_images[:1344], plain.train_labels[:1344], plain.test_images, plain.test_labels,
                  plain.classes).augmented()  # 1344 = 21 global batches of 64: no padding by the sampler
    single = _batches(split.sharded_loader(64, seed=9))
    ranks = [_batches(split.sharded_loader(64, seed=9, rank=rank, world_size=2)) for rank in range(2)]

    def examples(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, bytes]]:
        return sorted(zip(labels.tolist(), (image.numpy().tobytes() for image in images)))

    for step, (images, labels) in enumerate(single):  # the sampler deals a global batch out round-robin
        union = examples(torch.cat([ranks[0][step][0], ranks[1][step][0]]),
                         torch.cat([ranks[0][step][1], ranks[1][step][1]]))
        assert union == examples(images, labels)
