"""The user's own data without torchvision: a .npz of arrays (--data npz) and MNIST-style IDX files (--data idx),
on small generated files, and a clear error for every kind of bad file."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseticket.builtin.arrays import IDX_FILES, read_idx
from sparseticket.builtin.data import DatasetUnavailable
from sparseticket.builtin.datasets import DATASETS, describe, load_dataset

IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` in the IDX format: 0x0000, type code, dimensions, big-endian sizes, big-endian values."""
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, IDX_CODES[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def mnist_like(folder: Path, *, gz: bool | tuple[bool, ...] = False, train: int = 6, test: int = 3,
               size: tuple[int, int] = (5, 4)) -> dict[str, np.ndarray]:
    """The four IDX files of a tiny MNIST (values i + pixel, labels i % 3), plain or gzipped per file."""
    folder.mkdir(parents=True, exist_ok=True)
    gzipped = gz if isinstance(gz, tuple) else (gz,) * 4
    arrays = {}
    for index, (name, count) in enumerate(zip(IDX_FILES, (train, train, test, test))):
        if "images" in name:
            array = (np.arange(count * size[0] * size[1]).reshape(count, *size) % 256).astype(np.uint8)
        else:
            array = (np.arange(count) % 3).astype(np.uint8)
        arrays[name] = array
        write_idx(folder / (name + (".gz" if gzipped[index] else "")), array)
    return arrays


# ----------------------------------------------------------------------------- npz
def test_npz_with_test_arrays(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(8, 12)).astype(np.float64)
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(8) % 4, x_test=x[:3], y_test=np.array([0, 1, 5]))
    split = load_dataset("npz", data_dir=tmp_path / "data.npz")
    assert {"npz", "idx"} <= set(DATASETS)
    assert describe(split) == {"input_shape": (1, 12), "classes": 6, "train_size": 8, "test_size": 3}
    assert split.train_images.dtype == torch.float32 and split.train_labels.dtype == torch.int64
    torch.testing.assert_close(split.train_images[:, 0], torch.from_numpy(x).float())
    assert split.test_labels.tolist() == [0, 1, 5]


def test_npz_without_test_arrays_holds_out_a_seeded_quarter(tmp_path) -> None:
    path = tmp_path / "data.npz"
    np.savez_compressed(path, x=np.arange(40, dtype=np.uint8).reshape(20, 2) * 6, y=np.arange(20) % 2)
    split = load_dataset("npz", data_dir=path, seed=1)
    assert describe(split) == {"input_shape": (1, 2), "classes": 2, "train_size": 15, "test_size": 5}
    assert float(split.train_images.max()) <= 1.0  # uint8 / 255
    values = torch.cat([split.train_images, split.test_images]).flatten() * 255
    assert sorted(torch.round(values).int().tolist()) == [6 * v for v in range(40)]
    assert torch.equal(load_dataset("npz", data_dir=path, seed=1).test_images, split.test_images)
    assert not torch.equal(load_dataset("npz", data_dir=path, seed=2).test_images, split.test_images)


@pytest.mark.parametrize("shape,expected", [((6, 5, 4), (1, 5, 4)), ((6, 3, 5, 4), (3, 5, 4)), ((6, 7), (1, 7))])
def test_npz_input_ranks(tmp_path, shape, expected) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros(shape, np.float32), y=np.zeros(6, np.int32))
    assert describe(load_dataset("npz", data_dir=tmp_path / "d.npz"))["input_shape"] == expected


def _good() -> dict[str, np.ndarray]:
    return {"x": np.zeros((6, 4), np.float32), "y": np.arange(6) % 2}


NPZ_CASES = {
    "wrong array names": ({"X": np.zeros((6, 4)), "labels": np.zeros(6, int)}, r"has arrays X, labels \(unknown "
                                                                                 r"X, labels\); expected x, y"),
    "no y": ({"x": np.zeros((6, 4))}, r"has arrays x \(no y\)"),
    "x_test alone": ({**_good(), "x_test": np.zeros((2, 4), np.float32)}, "x_test without its partner"),
    "length mismatch": ({"x": np.zeros((6, 4), np.float32), "y": np.zeros(5, int)},
                        "x has 6 samples but y has 5 labels"),
    "test length mismatch": ({**_good(), "x_test": np.zeros((2, 4), np.float32), "y_test": np.zeros(3, int)},
                             "x_test has 2 samples but y_test has 3 labels"),
    "float labels": ({"x": np.zeros((6, 4), np.float32), "y": np.zeros(6)},
                     r"\(y\): labels must be integers 0..C-1, got dtype float64"),
    "negative labels": ({"x": np.zeros((6, 4), np.float32), "y": np.array([0, 1, -1, 0, 1, 0])},
                        r"\(y\): labels must be integers 0..C-1, found -1 \(at index 2\)"),
    "labels 2-d": ({"x": np.zeros((6, 4), np.float32), "y": np.zeros((6, 1), int)}, r"one-dimensional \[N\]"),
    "nan": ({"x": np.where(np.eye(6, 4) > 0, np.nan, 0.0), "y": np.zeros(6, int)},
            r"\(x\): 4 sample\(s\) hold NaN or infinite values \(the first: sample 0\)"),
    "inf in test": ({**_good(), "x_test": np.array([[0, 0, 0, np.inf]]), "y_test": np.zeros(1, int)},
                    r"\(x_test\): 1 sample\(s\) hold NaN"),
    "int inputs": ({"x": np.zeros((6, 4), np.int32), "y": np.zeros(6, int)},
                   "inputs must be float or uint8, got int32"),
    "1-d inputs": ({"x": np.zeros(6, np.float32), "y": np.zeros(6, int)}, r"inputs must be \[N, L\].*got shape \(6,\)"),
    "5-d inputs": ({"x": np.zeros((6, 1, 1, 2, 2), np.float32), "y": np.zeros(6, int)}, "got shape"),
    "no samples": ({"x": np.zeros((0, 4), np.float32), "y": np.zeros(0, int)}, "no samples"),
    "test shape": ({**_good(), "x_test": np.zeros((2, 5), np.float32), "y_test": np.zeros(2, int)},
                   r"test inputs are \(1, 5\) per sample, training inputs \(1, 4\)"),
    "one sample": ({"x": np.zeros((1, 4), np.float32), "y": np.zeros(1, int)}, "at least 2 are needed"),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_bad_npz_arrays(tmp_path, case: str) -> None:
    arrays, message = NPZ_CASES[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetUnavailable, match=message) as error:
        load_dataset("npz", data_dir=path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist; --data-dir names a .npz file"),
    ("directory", "is a directory; --data-dir names a .npz file"),
    ("garbage", "cannot be read as a .npz archive"),
    ("truncated", "cannot be read as a .npz archive"),
    ("npy", "a single .npy array, not a .npz file"),
    ("object array", "cannot be read as a .npz archive"),
])
def test_bad_npz_files(tmp_path, case: str, message: str) -> None:
    path = tmp_path / "data.npz"
    if case == "directory":
        path.mkdir()
    elif case == "garbage":
        path.write_bytes(b"hello, not a zip")
    elif case == "truncated":
        np.savez_compressed(path, **_good())
        path.write_bytes(path.read_bytes()[:100])
    elif case == "npy":
        with open(path, "wb") as handle:
            np.save(handle, np.zeros(3))
    elif case == "object array":
        np.savez(path, x=np.array([{"a": 1}] * 6, dtype=object), y=np.zeros(6, int))
    with pytest.raises(DatasetUnavailable, match=message) as error:
        load_dataset("npz", data_dir=path)
    assert str(path) in str(error.value)


def test_npz_needs_data_dir() -> None:
    with pytest.raises(DatasetUnavailable, match="'npz' needs data_dir: a .npz file"):
        load_dataset("npz")


# ----------------------------------------------------------------------------- idx
@pytest.mark.parametrize("gz", [False, True, (True, False, False, True)], ids=["plain", "gzipped", "mixed"])
def test_idx_files(tmp_path, gz) -> None:
    arrays = mnist_like(tmp_path, gz=gz)
    split = load_dataset("idx", data_dir=tmp_path)
    assert describe(split) == {"input_shape": (1, 5, 4), "classes": 3, "train_size": 6, "test_size": 3}
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    torch.testing.assert_close(split.train_images, expected)
    assert split.train_labels.tolist() == [0, 1, 2, 0, 1, 2] and split.test_labels.tolist() == [0, 1, 2]


@pytest.mark.parametrize("dtype", ["i1", ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_types(tmp_path, dtype: str) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    for name in ("a.idx", "a.idx.gz"):
        np.testing.assert_array_equal(read_idx(write_idx(tmp_path / name, array)), array)


def _damage(path: Path, case: str) -> None:
    data = path.read_bytes()
    if case == "bad magic":
        path.write_bytes(b"\x12\x34" + data[2:])
    elif case == "unknown type":
        path.write_bytes(b"\0\0\x07" + data[3:])
    elif case == "no dimensions":
        path.write_bytes(b"\0\0\x08\0")
    elif case == "short magic":
        path.write_bytes(data[:3])
    elif case == "truncated header":
        path.write_bytes(data[:9])
    elif case == "truncated data":
        path.write_bytes(data[:-7])
    elif case == "trailing bytes":
        path.write_bytes(data + b"\0\0\0")
    elif case == "bad gzip":
        path.with_name(path.name + ".gz").write_bytes(b"not gzip data")
        path.unlink()


IDX_CASES = {
    "bad magic": r"bad magic number 0x12340803, not an IDX file",
    "unknown type": r"bad magic number 0x00000703",
    "no dimensions": r"bad magic number 0x00000800",
    "short magic": "truncated: 3 bytes, shorter than the 4-byte IDX magic number",
    "truncated header": "truncated: 9 bytes, shorter than its 16-byte header",
    "truncated data": r"truncated: its header announces 6x5x4 values of uint8 \(120 bytes\) but 113 bytes follow",
    "trailing bytes": "3 bytes follow the 6x5x4 values its header announces",
    "bad gzip": "cannot be read",
}


@pytest.mark.parametrize("case", sorted(IDX_CASES))
def test_bad_idx_files(tmp_path, case: str) -> None:
    mnist_like(tmp_path)
    target = tmp_path / "train-images-idx3-ubyte"
    _damage(target, case)
    with pytest.raises(DatasetUnavailable, match=IDX_CASES[case]) as error:
        load_dataset("idx", data_dir=tmp_path)
    assert "train-images-idx3-ubyte" in str(error.value)


def test_idx_missing_files_are_named(tmp_path) -> None:
    mnist_like(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetUnavailable, match=r"lacks t10k-labels-idx1-ubyte\[.gz\]; expected the four"):
        load_dataset("idx", data_dir=tmp_path)
    with pytest.raises(DatasetUnavailable, match="'idx' needs data_dir"):
        load_dataset("idx")
    with pytest.raises(DatasetUnavailable, match="is not a directory"):
        load_dataset("idx", data_dir=tmp_path / "absent")


def test_idx_count_mismatch_and_bad_labels(tmp_path) -> None:
    mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    with pytest.raises(DatasetUnavailable, match="t10k-images-idx3-ubyte holds 3 images but t10k-labels-idx1-ubyte 2"):
        load_dataset("idx", data_dir=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, ">f4"))
    with pytest.raises(DatasetUnavailable, match="t10k-labels-idx1-ubyte: labels must be integers 0..C-1, got dtype"):
        load_dataset("idx", data_dir=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, -2, 1], np.int8))
    with pytest.raises(DatasetUnavailable, match="labels must be integers 0..C-1, found -2"):
        load_dataset("idx", data_dir=tmp_path)


def test_idx_and_npz_refuse_augment(tmp_path) -> None:
    mnist_like(tmp_path)
    for name in ("idx", "npz"):
        with pytest.raises(ValueError, match=f"augment .*dataset '{name}' does not take it"):
            load_dataset(name, data_dir=tmp_path, augment=True)
