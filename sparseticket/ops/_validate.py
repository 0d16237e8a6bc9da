"""Argument checks shared by the public ops: errors name the argument and what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEVICE_TYPES = ("cpu", "cuda", "meta")  # meta: shape inference through the fake kernels


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} on {tensor.device}"


def check_tensor(
    name: str,
    value: object,
    dtypes: tuple[torch.dtype, ...],
    device: torch.device | None = None,
) -> torch.Tensor:
    """``value`` must be a tensor of one of ``dtypes`` (and on ``device`` when given)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in dtypes or (device is not None and value.device != device):
        wanted = "/".join(str(dtype).removeprefix("torch.") for dtype in dtypes)
        where = f" on {device}" if device is not None else ""
        raise TypeError(f"{name} must be {wanted}{where}, got {_describe(value)}")
    if value.device.type not in DEVICE_TYPES:
        raise ValueError(f"{name} must be on a cpu, cuda or meta device, got {value.device}")
    return value


def require_tensors(**named: object) -> None:
    """Each value must be a tensor (before an op's schema would reject it less clearly)."""
    for name, value in named.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def check_tensor_list(
    name: str,
    values: object,
    dtypes: tuple[torch.dtype, ...],
    device: torch.device | None = None,
) -> list[torch.Tensor]:
    """A list or tuple of tensors with one dtype (from ``dtypes``) and one device."""
    if isinstance(values, torch.Tensor) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(values).__name__}")
    tensors = list(values)
    for index, tensor in enumerate(tensors):
        check_tensor(f"{name}[{index}]", tensor, dtypes, device)
        if index and tensor.dtype != tensors[0].dtype:
            raise TypeError(f"{name} must all have one dtype: {name}[0] is "
                            f"{tensors[0].dtype}, {name}[{index}] is {tensor.dtype}")
        device = tensor.device if device is None else device
    return tensors


def check_same_shape(name: str, tensor: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    """``tensor`` must have the shape of ``like``."""
    if tensor.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}, "
                         f"got {tuple(tensor.shape)}")


def check_contiguous(name: str, tensor: torch.Tensor) -> None:
    """In-place targets must be contiguous (a copy would silently drop the update)."""
    if not tensor.is_contiguous():
        raise ValueError(f"{name} must be contiguous (it is updated in place); "
                         f"call .contiguous() on it first")


def memory_order(tensor: torch.Tensor) -> str | None:
    """How a tensor lays out its elements when a kernel may treat its memory as one flat range:
    ``"row-major"``, ``"channels_last"`` or ``"channels_last_3d"`` (dim 0, the output channels,
    stays outermost, so per-channel masks still apply); None for any other strides. A tensor in
    both orders (size-1 dims) is row-major: two tensors of one shape then compare equal exactly
    when their element orders agree."""
    if tensor.is_contiguous():
        return "row-major"
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    if tensor.dim() == 5 and tensor.is_contiguous(memory_format=torch.channels_last_3d):
        return "channels_last_3d"
    return None


def check_flat_dense(name: str, tensor: torch.Tensor) -> None:
    """In-place targets must be contiguous or channels_last (a copy would silently drop the update)."""
    if memory_order(tensor) is None:
        raise ValueError(f"{name} must be contiguous or channels_last (it is updated in place); "
                         f"call .contiguous() on it first")


def in_order_of(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A read-only input (``like``'s shape, or flat with its numel in row-major order) laid out in
    ``like``'s memory order: the tensor itself when it already is (no copy), else a copy."""
    order = memory_order(like)
    if tensor.shape == like.shape and order is not None and memory_order(tensor) == order:
        return tensor
    if order in (None, "row-major"):
        return tensor if tensor.is_contiguous() else tensor.contiguous()
    return torch.empty_like(like, dtype=tensor.dtype).copy_(tensor.reshape(like.shape))


def check_float(name: str, value: object) -> float:
    """A finite Python number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """A Python int in [low, high) (high None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a Python int, got a tensor (call .item() on it)")
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value >= high):
        upper = f", {high})" if high is not None else ", inf)"
        raise ValueError(f"{name} must be in [{low}{upper}, got {value}")
    return value
