"""Training-time distortions of the digits task: a random affine (shift, rotation) and Gaussian noise.

Every image gets its own translation (uniform in ±``shift`` pixels along each axis), rotation
(uniform in ±``rotation`` degrees about the image centre; bilinear sampling, zero padding) and
additive Gaussian noise of standard deviation ``noise`` (not clipped). The random draws come from
the given ``torch.Generator`` on its own device and are then moved to the images' device, so a
CPU generator gives the same distortion on the CPU and on a GPU.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

SHIFT_PIXELS = 1.0
ROTATION_DEGREES = 15.0
NOISE_STD = 0.1
DISTORTION_SEED = 20_240_615  # the fixed seed of the distorted test set


def augment_digits(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    shift: float = SHIFT_PIXELS,
    rotation: float = ROTATION_DEGREES,
    noise: float = NOISE_STD,
) -> torch.Tensor:
    """A distorted copy of ``images`` [N, C, H, W]: per-image random affine then Gaussian noise."""
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor [N, C, H, W], got {images.dtype} of shape "
                         f"{tuple(images.shape)}")
    for name, value in (("shift", shift), ("rotation", rotation), ("noise", noise)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    count, channels, height, width = images.shape
    if count == 0:
        return images.clone()
    draw = {"generator": generator, "device": generator.device}
    angles = (torch.rand(count, **draw) * 2 - 1) * math.radians(rotation)
    shifts = (torch.rand(count, 2, **draw) * 2 - 1) * shift  # pixels along x (width) and y (height)
    theta = _pixel_affine(angles, shifts, height, width).to(images.device, images.dtype)
    grid = functional.affine_grid(theta, [count, channels, height, width], align_corners=False)
    moved = functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if noise > 0:
        moved = moved + torch.randn(moved.shape, **draw).to(images.device, images.dtype) * noise
    return moved


def distorted_test_images(images: torch.Tensor, seed: int = DISTORTION_SEED) -> torch.Tensor:
    """A fixed distorted copy of a test set (the training distortions, drawn once from ``seed``)."""
    return augment_digits(images, torch.Generator().manual_seed(seed))


def _pixel_affine(angles: torch.Tensor, shifts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``affine_grid`` matrices [N, 2, 3] of a rotation by ``angles`` and a shift in pixels.

    The rotation is built in pixel units and rescaled to the normalised [-1, 1] coordinates, so a
    non-square image rotates without shearing; a shift of ``s`` pixels is ``2 s / size`` there.
    """
    cos, sin = torch.cos(angles), torch.sin(angles)
    x_scale, y_scale = width / 2.0, height / 2.0  # normalised -> pixels
    theta = torch.empty(len(angles), 2, 3, dtype=torch.float32, device=angles.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * y_scale / x_scale
    theta[:, 1, 0] = sin * x_scale / y_scale
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = shifts[:, 0] / x_scale
    theta[:, 1, 2] = shifts[:, 1] / y_scale
    return theta
