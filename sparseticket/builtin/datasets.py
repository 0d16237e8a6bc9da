"""Datasets by name, as train/test ``Split`` tensors: built-in digits and MNIST-1D, the user's own .npz or
IDX files, or CIFAR-10/100 and image folders from disk.

Nothing is ever downloaded: digits ship with scikit-learn, MNIST-1D is generated offline by the
``mnist1d`` package (and cached, ``sparseticket.builtin.mnist1d``), .npz and IDX files are read with
NumPy (``sparseticket.builtin.arrays``), CIFAR and image folders from ``data_dir`` with torchvision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sparseticket.builtin.arrays import load_idx, load_npz
from sparseticket.builtin.data import DatasetUnavailable, Split, load_digits_split, split_by_seed
from sparseticket.builtin.mnist1d import check_samples, load_mnist1d

DATASETS = ("digits", "mnist1d", "cifar10", "cifar100", "imagefolder", "npz", "idx")
AUGMENTABLE = ("digits", "cifar10", "cifar100", "imagefolder")  # image data sets the distortions suit
IMAGE_SIZE = 32
TEST_FRACTION = 0.25

_CIFAR_FOLDERS = {"cifar10": ("cifar-10-batches-py", ("data_batch_1", "test_batch")),
                  "cifar100": ("cifar-100-python", ("train", "test"))}

def check_options(name: str, *, samples: int | None = None, augment: bool = False) -> None:
    """ValueError when an option does not suit dataset ``name``: ``samples`` (only mnist1d; an integer >= 10)
    or ``augment`` (image data sets only: digits, cifar10, cifar100, imagefolder)."""
    if samples is not None:
        if name != "mnist1d":
            raise ValueError(f"samples (--samples) sets how many MNIST-1D signals to generate: only dataset "
                             f"'mnist1d' takes it, not {name!r}")
        check_samples(samples)
    if augment and name not in AUGMENTABLE:
        raise ValueError(f"augment (--augment: random affine and noise) is for the image data sets "
                         f"{', '.join(AUGMENTABLE)}; dataset {name!r} does not take it")


def load_dataset(name: str = "digits", *, data_dir: str | Path | None = None, seed: int = 0,
                 augment: bool = False, samples: int | None = None) -> Split:
    """The named dataset (see ``DATASETS``) as float inputs [N, C, ...] and int64 labels.

    ``seed`` fixes random splits (digits, imagefolder and npz without test arrays) and MNIST-1D's
    generation (seed 42 + ``seed``, ``sparseticket.builtin.mnist1d``). ``data_dir``: the folder (CIFAR,
    imagefolder, idx) or file (npz) to read. ``samples``: how many MNIST-1D signals to generate
    (default: the package's 5,000). ``augment``: training loaders distort the images (random affine
    and noise, ``Split.augmented``) and the split carries a fixed distorted copy of the test set;
    image data sets only. ValueError for an option the dataset does not take (``check_options``).
    """
    check_options(name, samples=samples, augment=augment)
    split = _load(name, data_dir, seed, samples)
    return split.augmented() if augment else split


def _load(name: str, data_dir: str | Path | None, seed: int, samples: int | None) -> Split:
    """The named dataset, undistorted."""
    if name == "digits":
        return load_digits_split(seed=seed)
    if name == "mnist1d":
        return load_mnist1d(seed, samples)
    if name in _CIFAR_FOLDERS:
        return _load_cifar(name, _cifar_root(name, data_dir))
    if name == "imagefolder":
        return _load_imagefolder(_existing_dir(name, data_dir, "class subfolders of images (or train/ and test/ "
                                                               "folders of them)"), seed)
    if name == "npz":
        if data_dir is None:
            raise DatasetUnavailable("dataset 'npz' needs data_dir: a .npz file with arrays x, y (and optionally "
                                     "x_test, y_test)")
        return load_npz(data_dir, seed)
    if name == "idx":
        return load_idx(_existing_dir(name, data_dir, "the IDX files train-images-idx3-ubyte, "
                                                      "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                                                      "t10k-labels-idx1-ubyte (plain or .gz)"))
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def describe(split: Split) -> dict[str, Any]:
    """Input shape, class count and train/test sizes of a split."""
    return {"input_shape": tuple(split.train_images.shape[1:]), "classes": split.classes,
            "train_size": len(split.train_labels), "test_size": len(split.test_labels)}


def _existing_dir(name: str, data_dir: str | Path | None, expected: str) -> Path:
    """data_dir as a Path; DatasetUnavailable if it is None or not a directory."""
    if data_dir is None:
        raise DatasetUnavailable(f"dataset {name!r} needs data_dir: a directory holding {expected} "
                                 "(nothing is downloaded)")
    path = Path(data_dir)
    if not path.is_dir():
        raise DatasetUnavailable(f"dataset {name!r}: data_dir {str(path)!r} is not a directory; expected {expected}")
    return path


def _cifar_root(name: str, data_dir: str | Path | None) -> Path:
    """The directory holding the extracted CIFAR python archive; DatasetUnavailable if its files are missing."""
    folder, files = _CIFAR_FOLDERS[name]
    expected = f"the extracted python archive {folder}/ (with {', '.join(files)}, ...)"
    root = _existing_dir(name, data_dir, expected)
    if root.name == folder:
        root = root.parent
    missing = [file for file in files if not (root / folder / file).is_file()]
    if missing:
        raise DatasetUnavailable(f"dataset {name!r}: {str(root / folder)!r} lacks {', '.join(missing)}; expected "
                                 f"{expected} under data_dir")
    return root


def _torchvision() -> Any:
    """The torchvision module; DatasetUnavailable if it cannot be imported."""
    try:
        import torchvision
    except ImportError as error:
        raise DatasetUnavailable(f"CIFAR and image-folder datasets need torchvision: pip install torchvision "
                                 f"(a build matching torch {torch.__version__}); import failed: {error}") from error
    return torchvision


def _load_cifar(name: str, root: Path) -> Split:
    """CIFAR-10/100 from root as [N, 3, 32, 32] floats in [0, 1]."""
    datasets = _torchvision().datasets
    dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train, test = (dataset_class(str(root), train=flag, download=False) for flag in (True, False))
    except RuntimeError as error:
        raise DatasetUnavailable(f"dataset {name!r} under {str(root)!r} cannot be read: {error}") from error

    def tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).float().div_(255.0)
        return images.contiguous(), torch.tensor(dataset.targets, dtype=torch.int64)

    return Split(*tensors(train), *tensors(test), classes=len(train.classes))


def _load_imagefolder(root: Path, seed: int) -> Split:
    """Images resized to 32x32 RGB from root/train and root/test, or from root split by a seeded permutation."""
    torchvision = _torchvision()
    transform = torchvision.transforms.Compose([torchvision.transforms.Resize((IMAGE_SIZE, IMAGE_SIZE)),
                                                torchvision.transforms.ToTensor()])

    def read(folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        try:
            dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform)
        except (FileNotFoundError, RuntimeError) as error:
            raise DatasetUnavailable(f"dataset 'imagefolder': {str(folder)!r} holds no class subfolders of "
                                     f"images: {error}") from error
        images, labels = zip(*(dataset[index] for index in range(len(dataset))))
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64), dataset.classes

    if (root / "train").is_dir() and (root / "test").is_dir():
        train_images, train_labels, classes = read(root / "train")
        test_images, test_labels, test_classes = read(root / "test")
        if test_classes != classes:
            raise DatasetUnavailable(f"dataset 'imagefolder': train classes {classes} differ from test classes "
                                     f"{test_classes} under {str(root)!r}")
        return Split(train_images, train_labels, test_images, test_labels, classes=len(classes))
    images, labels, classes = read(root)
    return split_by_seed(images, labels, len(classes), seed, TEST_FRACTION)
