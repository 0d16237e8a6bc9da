"""MNIST-1D: generated offline from the run's seed, cached under the user cache folder, sizes and options."""

from __future__ import annotations

import importlib.metadata
import random
import socket

import numpy as np
import pytest
import torch

from sparseticket.builtin import mnist1d
from sparseticket.builtin.data import DatasetUnavailable
from sparseticket.builtin.datasets import DATASETS, describe, load_dataset

SMALL = 200  # samples: 160 train / 40 test, generated in a few hundredths of a second


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """Every test caches into its own folder, never the user's."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SPARSETICKET_CACHE", str(folder))
    return folder / "datasets"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("mnist1d tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_generation_is_seeded_offline_and_leaves_global_rngs_alone(no_network) -> None:
    random.seed(7)
    np.random.seed(7)
    python_before, numpy_before = random.random(), np.random.random()
    random.seed(7)
    np.random.seed(7)
    first = mnist1d.load_mnist1d(seed=0, samples=SMALL, cache=False)
    assert (random.random(), np.random.random()) == (python_before, numpy_before)
    again = mnist1d.load_mnist1d(seed=0, samples=SMALL, cache=False)
    other = mnist1d.load_mnist1d(seed=1, samples=SMALL, cache=False)
    assert torch.equal(first.train_images, again.train_images) and torch.equal(first.test_labels, again.test_labels)
    assert not torch.equal(first.train_images, other.train_images)
    assert first.train_images.shape == (160, 1, 40) and first.test_images.shape == (40, 1, 40)
    assert first.train_images.dtype == torch.float32 and first.train_labels.dtype == torch.int64
    assert first.classes == 10 and set(first.train_labels.tolist()) <= set(range(10))
    assert torch.isfinite(first.train_images).all()


def test_run_seed_s_generates_with_seed_42_plus_s() -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = SMALL, 45
    made = make_dataset(args)
    arrays = mnist1d.generate(seed=3, samples=SMALL)
    np.testing.assert_array_equal(arrays["x"], made["x"].astype(np.float32))
    np.testing.assert_array_equal(arrays["y_test"], made["y_test"])
    assert mnist1d.generation_seed(0) == 42  # seed 0: the package's default set
    with pytest.raises(ValueError, match="outside"):
        mnist1d.generation_seed(-43)


def test_default_sizes_are_the_packages(cache) -> None:
    assert "mnist1d" in DATASETS
    split = load_dataset("mnist1d")
    assert describe(split) == {"input_shape": (1, 40), "classes": 10, "train_size": 4000, "test_size": 1000}
    version = importlib.metadata.version("mnist1d")
    assert (cache / f"mnist1d-{version}-n5000-s42.npz").is_file()


def test_second_load_reads_the_cache(cache, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_dataset("mnist1d", seed=2, samples=SMALL)
    (path,) = cache.iterdir()
    assert path.name.endswith(f"-n{SMALL}-s44.npz") and mnist1d.package_version() in path.name

    def fail(*args, **kwargs):
        raise AssertionError("generated again although the cache holds the set")

    monkeypatch.setattr(mnist1d, "generate", fail)
    second = load_dataset("mnist1d", seed=2, samples=SMALL)
    assert torch.equal(first.train_images, second.train_images) and torch.equal(first.test_labels,
                                                                                 second.test_labels)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong arrays", "wrong shape"])
def test_a_corrupt_cache_file_is_generated_again(cache, damage: str) -> None:
    fresh = load_dataset("mnist1d", seed=0, samples=SMALL)
    (path,) = cache.iterdir()
    whole = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not an npz at all")
    elif damage == "truncated":
        path.write_bytes(whole[: len(whole) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "wrong arrays":
        np.savez(path, a=np.zeros(3))
    else:
        np.savez(path, x=np.zeros((160, 39), np.float32), y=np.zeros(160, np.int64),
                 x_test=np.zeros((40, 39), np.float32), y_test=np.zeros(40, np.int64))
    again = load_dataset("mnist1d", seed=0, samples=SMALL)
    assert torch.equal(fresh.train_images, again.train_images)
    assert path.read_bytes() == whole  # rewritten whole
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left


def test_a_cache_that_cannot_be_written_only_warns(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SPARSETICKET_CACHE", str(blocker))  # its datasets/ folder cannot be made
    with pytest.warns(RuntimeWarning, match="could not cache"):
        split = load_dataset("mnist1d", samples=SMALL)
    assert describe(split)["train_size"] == 160


def test_samples_option(cache) -> None:
    assert describe(load_dataset("mnist1d", samples=1000))["train_size"] == 800
    assert describe(load_dataset("mnist1d", samples=SMALL + 5)) == {  # the package: a multiple of 10
        "input_shape": (1, 40), "classes": 10, "train_size": 160, "test_size": 40}


@pytest.mark.parametrize("samples", [0, -5, 9, 2.5, True, "100"])
def test_bad_samples_name_the_option(samples) -> None:
    with pytest.raises(ValueError, match=r"samples \(--samples\) must be an integer >= 10"):
        load_dataset("mnist1d", samples=samples)


def test_samples_and_augment_are_refused_where_they_do_not_apply() -> None:
    with pytest.raises(ValueError, match="only dataset 'mnist1d' takes it, not 'digits'"):
        load_dataset("digits", samples=100)
    with pytest.raises(ValueError, match="augment .* is for the image data sets .*'mnist1d' does not take it"):
        load_dataset("mnist1d", samples=SMALL, augment=True)
    split = load_dataset("mnist1d", samples=SMALL)
    with pytest.raises(ValueError, match=r"augment distorts images \[N, C, H, W\].*\[N, 1, 40\]"):
        split.augmented()


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(DatasetUnavailable, match=r"needs the mnist1d package \(pip install mnist1d\)"):
        load_dataset("mnist1d", samples=SMALL)
