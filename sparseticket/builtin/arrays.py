"""Users' own data, read with NumPy only (no torchvision): a ``.npz`` of arrays, or MNIST-style IDX files.

- ``.npz``: arrays ``x`` (inputs [N, ...]) and ``y`` (labels [N]), optionally ``x_test`` and
  ``y_test``; without them a seeded 25% of the samples is held out for testing.
- IDX (the MNIST / Fashion-MNIST format): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` in one folder, each plain or gzipped
  (``.gz``, as Debian's ``dataset-fashion-mnist`` installs them).

Inputs become float32 tensors: uint8 is scaled to [0, 1], floats are kept as they are; [N, L]
becomes [N, 1, L], [N, H, W] becomes [N, 1, H, W], [N, C, H, W] stays. Labels must be integers
0..C-1 (C = the largest label + 1). A bad file raises ``DatasetUnavailable`` naming the file and
what is wrong with it.
"""

from __future__ import annotations

import gzip
import math
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from sparseticket.builtin.data import DatasetUnavailable, Split, split_by_seed

NPZ_ARRAYS = ("x", "y", "x_test", "y_test")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# IDX type codes (the third byte of the magic number) and their big-endian NumPy types
IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
TEST_FRACTION = 0.25


def inputs_tensor(array: np.ndarray, where: str) -> torch.Tensor:
    """``array`` [N, ...] as float32 [N, C, ...] (uint8 / 255; [N, L] -> [N, 1, L]; [N, H, W] -> [N, 1, H, W]).

    DatasetUnavailable (naming ``where``) for another dtype, fewer than 2 or more than 4 dimensions, no
    samples, or NaN / infinite values.
    """
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype.kind == "f":
        values = array.astype(np.float32)
    else:
        raise DatasetUnavailable(f"{where}: inputs must be float or uint8, got {array.dtype}")
    if not 2 <= values.ndim <= 4:
        raise DatasetUnavailable(f"{where}: inputs must be [N, L], [N, H, W] or [N, C, H, W], got shape "
                                 f"{tuple(values.shape)}")
    if len(values) == 0:
        raise DatasetUnavailable(f"{where}: no samples (shape {tuple(values.shape)})")
    finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
    if not finite.all():
        raise DatasetUnavailable(f"{where}: {int((~finite).sum())} sample(s) hold NaN or infinite values "
                                 f"(the first: sample {int(np.argmin(finite))})")
    if values.ndim in (2, 3):
        values = values[:, None]
    return torch.from_numpy(np.ascontiguousarray(values))


def labels_tensor(array: np.ndarray, where: str) -> torch.Tensor:
    """Integer labels [N] >= 0 as int64; DatasetUnavailable (naming ``where``) otherwise."""
    if array.dtype.kind not in "iu":
        raise DatasetUnavailable(f"{where}: labels must be integers 0..C-1, got dtype {array.dtype} "
                                 "(convert them with .astype(int))")
    if array.ndim != 1:
        raise DatasetUnavailable(f"{where}: labels must be one-dimensional [N], got shape {tuple(array.shape)}")
    if len(array) and array.min() < 0:
        raise DatasetUnavailable(f"{where}: labels must be integers 0..C-1, found {int(array.min())} "
                                 f"(at index {int(np.argmin(array))})")
    return torch.from_numpy(array.astype(np.int64))


def _pair(images: torch.Tensor, labels: torch.Tensor, where: str, names: tuple[str, str]) -> None:
    """DatasetUnavailable unless there is one label per input."""
    if len(images) != len(labels):
        raise DatasetUnavailable(f"{where}: {names[0]} has {len(images)} samples but {names[1]} has "
                                 f"{len(labels)} labels")


def _assemble(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor] | None,
              seed: int, where: str) -> Split:
    """A Split of the train (and test) tensors; without a test set, a seeded ``TEST_FRACTION`` of train."""
    images, labels = train
    if test is None:
        if len(labels) < 2:
            raise DatasetUnavailable(f"{where}: {len(labels)} sample(s) and no test arrays: at least 2 are needed "
                                     "to hold some out for testing")
        classes = int(labels.max()) + 1
        return split_by_seed(images, labels, classes, seed, TEST_FRACTION)
    test_images, test_labels = test
    if test_images.shape[1:] != images.shape[1:]:
        raise DatasetUnavailable(f"{where}: test inputs are {tuple(test_images.shape[1:])} per sample, training "
                                 f"inputs {tuple(images.shape[1:])}")
    classes = int(max(labels.max(), test_labels.max())) + 1
    return Split(images, labels, test_images, test_labels, classes=classes)


def load_npz(path: str | Path, seed: int = 0) -> Split:
    """The arrays of ``.npz`` file ``path`` as a Split (see the module docstring); ``seed`` fixes the held-out
    25% when the file has no ``x_test``/``y_test``."""
    path = Path(path)
    expected = "a .npz file with arrays x, y (and optionally x_test, y_test)"
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise DatasetUnavailable(f"dataset 'npz': {str(path)!r} {what}; --data-dir names {expected}")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DatasetUnavailable(f"{path}: a single .npy array, not {expected}")
        with archive:
            names = set(archive.files)
            unknown, missing = sorted(names - set(NPZ_ARRAYS)), [name for name in ("x", "y") if name not in names]
            halves = {"x_test", "y_test"} & names
            if unknown or missing or len(halves) == 1:
                problem = (f"unknown {', '.join(unknown)}" if unknown else f"no {' or '.join(missing)}" if missing
                           else f"{halves.pop()} without its partner")
                raise DatasetUnavailable(f"{path}: has arrays {', '.join(sorted(names)) or '(none)'} ({problem}); "
                                         f"expected x, y and optionally both x_test and y_test")
            arrays = {name: archive[name] for name in sorted(names)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DatasetUnavailable(f"{path}: cannot be read as a .npz archive ({type(error).__name__}: {error}); "
                                 f"expected {expected}") from error
    train = (inputs_tensor(arrays["x"], f"{path} (x)"), labels_tensor(arrays["y"], f"{path} (y)"))
    _pair(*train, str(path), ("x", "y"))
    test = None
    if "x_test" in arrays:
        test = (inputs_tensor(arrays["x_test"], f"{path} (x_test)"),
                labels_tensor(arrays["y_test"], f"{path} (y_test)"))
        _pair(*test, str(path), ("x_test", "y_test"))
    return _assemble(train, test, seed, str(path))


def read_idx(path: str | Path) -> np.ndarray:
    """The array in IDX file ``path`` (gzipped when its name ends in ``.gz``), read with NumPy.

    The format: two zero bytes, a type code (``IDX_TYPES``), the number of dimensions D, D big-endian
    uint32 sizes, then the values, big-endian. DatasetUnavailable naming the file for a bad magic
    number, a truncated file or bytes after the data.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DatasetUnavailable(f"{path}: cannot be read ({type(error).__name__}: {error})") from error
    if len(data) < 4:
        raise DatasetUnavailable(f"{path}: truncated: {len(data)} bytes, shorter than the 4-byte IDX magic number")
    magic, kind, dims = int.from_bytes(data[:4], "big"), data[2], data[3]
    if data[:2] != b"\0\0" or kind not in IDX_TYPES or dims == 0:
        raise DatasetUnavailable(f"{path}: bad magic number 0x{magic:08X}, not an IDX file (expected 0x0000TTDD: "
                                 "type TT 08/09/0B/0C/0D/0E, DD > 0 dimensions; MNIST images 0x00000803, labels "
                                 "0x00000801)")
    header = 4 + 4 * dims
    if len(data) < header:
        raise DatasetUnavailable(f"{path}: truncated: {len(data)} bytes, shorter than its {header}-byte header "
                                 f"({dims} dimensions)")
    shape = struct.unpack(f">{dims}I", data[4:header])
    dtype = IDX_TYPES[kind]
    count = math.prod(shape)
    needed, found = count * dtype.itemsize, len(data) - header
    if found < needed:
        raise DatasetUnavailable(f"{path}: truncated: its header announces {'x'.join(map(str, shape))} values of "
                                 f"{dtype.name} ({needed} bytes) but {found} bytes follow")
    if found > needed:
        raise DatasetUnavailable(f"{path}: {found - needed} bytes follow the {'x'.join(map(str, shape))} values "
                                 "its header announces: not an IDX file of that shape")
    return np.frombuffer(data, dtype, count=count, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def idx_file(root: Path, name: str) -> Path | None:
    """``root/name`` or ``root/name.gz``, whichever exists (plain first); None if neither."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx(root: str | Path) -> Split:
    """The four MNIST-style IDX files in folder ``root`` (``IDX_FILES``, plain or ``.gz``) as a Split:
    images [N, 1, H, W] in [0, 1] (uint8 / 255), int64 labels; the t10k files are the test set."""
    root = Path(root)
    found = {name: idx_file(root, name) for name in IDX_FILES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise DatasetUnavailable(f"dataset 'idx': {str(root)!r} lacks {', '.join(f'{n}[.gz]' for n in missing)}; "
                                 f"expected the four MNIST / Fashion-MNIST files {', '.join(IDX_FILES)} (plain or "
                                 ".gz) there")
    parts = []
    for images_name, labels_name in (IDX_FILES[:2], IDX_FILES[2:]):
        images_path, labels_path = found[images_name], found[labels_name]
        images = inputs_tensor(read_idx(images_path), str(images_path))
        labels = labels_tensor(read_idx(labels_path), str(labels_path))
        if len(images) != len(labels):
            raise DatasetUnavailable(f"dataset 'idx': {images_path.name} holds {len(images)} images but "
                                     f"{labels_path.name} {len(labels)} labels (in {root})")
        parts.append((images, labels))
    return _assemble(parts[0], parts[1], 0, str(root))
