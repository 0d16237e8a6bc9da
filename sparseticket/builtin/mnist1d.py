"""MNIST-1D (Greydanus & Kobak): 1-D signals of length 40 in 10 classes, generated offline from a seed.

The ``mnist1d`` package makes the data (``mnist1d.data.make_dataset``; its ``get_dataset`` download
path is never called, nothing goes over the network). Its defaults give 5,000 samples split 4,000
train / 1,000 test (``train_split`` 0.8), each a length-40 signal standardised over the whole set.

Seed: the generation seed (``args.seed``) is ``GENERATION_SEED_OFFSET + seed`` = 42 + the run's seed,
so seed 0 generates the package's default data set (``make_dataset(get_dataset_args())``, seed 42)
and every other seed a different draw of the same distribution.

Cache: a generated set is kept as ``mnist1d-<package version>-n<samples>-s<generation seed>.npz``
under ``cache_folder()`` (``$SPARSETICKET_CACHE/datasets``, else ``$XDG_CACHE_HOME/sparseticket/datasets``
or ``~/.cache/sparseticket/datasets``), written atomically; later loads read it back (milliseconds
instead of about a second). A file that does not read back whole is generated again and replaced.
"""

from __future__ import annotations

import importlib.metadata
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from sparseticket._kernels.jit import cache_root
from sparseticket.builtin.data import DatasetUnavailable, Split
from sparseticket.files import atomic_write

DEFAULT_SAMPLES = 5000  # mnist1d's get_dataset_args()["num_samples"]
GENERATION_SEED_OFFSET = 42  # seed 0 -> the package's default seed 42
CLASSES = 10
LENGTH = 40  # get_dataset_args()["final_seq_length"]
_ARRAYS = ("x", "y", "x_test", "y_test")


def package_version() -> str:
    """The installed ``mnist1d`` version; DatasetUnavailable if it is missing."""
    try:
        return importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError as error:
        raise DatasetUnavailable("dataset 'mnist1d' needs the mnist1d package (pip install mnist1d); it "
                                 "generates the data offline") from error


def generation_seed(seed: int) -> int:
    """The ``args.seed`` that run seed ``seed`` generates with (42 + seed); ValueError outside NumPy's range."""
    value = GENERATION_SEED_OFFSET + seed
    if not 0 <= value < 2**32:
        raise ValueError(f"seed {seed} gives mnist1d generation seed {value}, outside [0, 2**32)")
    return value


def check_samples(samples: int | None) -> int:
    """The sample count to generate: ``samples``, or the package's 5,000 when None.

    ValueError unless it is an integer >= 10 (the package makes ``samples // 10`` signals per class).
    """
    if samples is None:
        return DEFAULT_SAMPLES
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < CLASSES:
        raise ValueError(f"samples (--samples) must be an integer >= {CLASSES} (one signal per class), "
                         f"got {samples!r}")
    return samples


def cache_folder() -> Path:
    """Where generated data sets are kept: ``<sparseticket cache>/datasets``."""
    return cache_root() / "datasets"


def cache_path(seed: int, samples: int | None = None) -> Path:
    """The cache file of run seed ``seed`` and ``samples`` samples (keyed by the package version too)."""
    return cache_folder() / (f"mnist1d-{package_version()}-n{check_samples(samples)}-s{generation_seed(seed)}.npz")


def generate(seed: int, samples: int | None = None) -> dict[str, np.ndarray]:
    """Generate the arrays x [N, 40] float32, y [N] int64, x_test, y_test with the package (no cache).

    Python's and NumPy's global random states (which ``make_dataset`` reseeds) are restored afterwards.
    """
    package_version()
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = check_samples(samples)
    args.seed = generation_seed(seed)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        made = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {"x": made["x"].astype(np.float32), "y": made["y"].astype(np.int64),
            "x_test": made["x_test"].astype(np.float32), "y_test": made["y_test"].astype(np.int64)}


def _read_cache(path: Path, samples: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing or does not hold a whole, well-formed set."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in _ARRAYS}
    except Exception:  # noqa: BLE001 - whatever the damage (zip, header, CRC), the set is generated again
        return None
    count = len(arrays["y"]) + len(arrays["y_test"])
    well_formed = (arrays["x"].shape == (len(arrays["y"]), LENGTH)
                   and arrays["x_test"].shape == (len(arrays["y_test"]), LENGTH)
                   and arrays["x"].dtype == np.float32 and arrays["x_test"].dtype == np.float32
                   and arrays["y"].dtype == np.int64 and arrays["y_test"].dtype == np.int64
                   and count == samples - samples % CLASSES)
    return arrays if well_formed else None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save ``arrays`` atomically; a cache that cannot be written only costs a warning."""
    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except OSError as error:
        warnings.warn(f"mnist1d: could not cache the generated data in {path} ({error}); it will be generated "
                      "again next time", RuntimeWarning, stacklevel=3)


def load_arrays(seed: int = 0, samples: int | None = None, *, cache: bool = True) -> dict[str, np.ndarray]:
    """The arrays of run seed ``seed``: read from the cache, or generated (and cached when ``cache``)."""
    count = check_samples(samples)
    path = cache_path(seed, count)
    arrays = _read_cache(path, count) if cache else None
    if arrays is None:
        arrays = generate(seed, count)
        if cache:
            _write_cache(path, arrays)
    return arrays


def load_mnist1d(seed: int = 0, samples: int | None = None, *, cache: bool = True) -> Split:
    """MNIST-1D as a Split: signals [N, 1, 40] float32 (one channel), int64 labels, 10 classes.

    ``seed``: the run's seed; the data are generated with seed 42 + ``seed`` (seed 0: the package's
    default set). ``samples``: how many to generate (default 5,000: 4,000 train / 1,000 test; the
    package rounds down to a multiple of 10 and keeps 80% for training).
    """
    arrays = load_arrays(seed, samples, cache=cache)

    def signals(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arrays[name])).unsqueeze(1)

    return Split(signals("x"), torch.from_numpy(arrays["y"]), signals("x_test"), torch.from_numpy(arrays["y_test"]),
                 classes=CLASSES)
