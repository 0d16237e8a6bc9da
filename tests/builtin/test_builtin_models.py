"""Built-in models (digits and CIFAR shapes) and datasets by name, including their clear errors."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparseticket.builtin import datasets
from sparseticket.builtin.data import Split
from sparseticket.builtin.datasets import DATASETS, DatasetUnavailable, describe, load_dataset
from sparseticket.builtin.models import MODELS, build_model, mlp, models_for, preresnet20, resnet20, vgg_small
from sparseticket.methods import EarlyBird, attach_slimming
from sparseticket.methods.transformer import transformer_blocks

SHAPES = [(1, 8), (3, 32)]  # (channels, image size): digits, CIFAR


def test_registry_names() -> None:
    assert set(MODELS) == {"vgg", "resnet20", "preresnet20", "mlp", "transformer", "cnn1d", "resnet1d"}
    assert set(models_for(2)) == {"vgg", "resnet20", "preresnet20", "mlp", "transformer"}


@pytest.mark.parametrize("channels,size", SHAPES)
@pytest.mark.parametrize("name", sorted(models_for(2)))
def test_model_builds_forwards_and_trains(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, classes=7, in_channels=channels, image_size=size, width=8)
    if name == "transformer":
        assert len(transformer_blocks(model)) == 2
        attach_slimming(model)
    else:
        assert any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())
    early_bird = EarlyBird(model)  # it finds channels to track
    images, labels = torch.rand(6, channels, size, size), torch.randint(0, 7, (6,))
    assert model(images).shape == (6, 7)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    early_bird.after_backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    model.eval()
    assert torch.isfinite(model(images)).all()


def test_resnet20_structure() -> None:
    model = resnet20(classes=10, in_channels=3, width=16)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    shortcuts = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(convs) + 1 == 20  # 19 3x3 convs + the classifier
    assert len(shortcuts) == 2
    assert [c.out_channels for c in shortcuts] == [32, 64]
    assert model.fc.in_features == 64


def test_preresnet20_is_pre_activation() -> None:
    model = preresnet20(classes=10, in_channels=1, width=4)
    assert isinstance(model.stem, nn.Conv2d)  # no BN after the stem: each block normalises its input
    assert isinstance(model.final[0], nn.BatchNorm2d) and isinstance(model.final[1], nn.ReLU)
    assert model.stages[0].bn1.num_features == 4


def test_mlp_batchnorm_after_each_hidden_layer() -> None:
    model = mlp(input_dim=64, classes=10, hidden=(32, 16))
    assert [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm1d)] == [32, 16]
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_vgg_small_signature_kept() -> None:
    assert vgg_small(10, 8, 1)(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_build_model_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet50'.*vgg.*resnet20.*preresnet20.*mlp.*transformer.*"
                                         "cnn1d.*resnet1d"):
        build_model("resnet50")


def test_build_model_width_scales() -> None:
    small, large = build_model("resnet20", width=4), build_model("resnet20", width=8)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in large.parameters())


def test_digits_dataset() -> None:
    split = load_dataset("digits", seed=1)
    assert isinstance(split, Split)
    assert describe(split) == {"input_shape": (1, 8, 8), "classes": 10, "train_size": 1348, "test_size": 449}
    assert torch.equal(load_dataset(seed=1).test_labels, split.test_labels)
    assert not torch.equal(load_dataset(seed=2).test_labels, split.test_labels)
    assert "digits" in DATASETS


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*cifar10"):
        load_dataset("mnist")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder"])
def test_missing_data_dir(name: str, tmp_path) -> None:
    with pytest.raises(DatasetUnavailable, match=f"{name}.*needs data_dir"):
        load_dataset(name)
    with pytest.raises(DatasetUnavailable, match="is not a directory"):
        load_dataset(name, data_dir=tmp_path / "absent")


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_files_missing(name: str, folder: str, tmp_path) -> None:
    with pytest.raises(DatasetUnavailable, match=f"lacks .*expected the extracted python archive {folder}/"):
        load_dataset(name, data_dir=tmp_path)


def _hide_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `import torchvision` fail whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "torchvision", None)


def _fake_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in torchvision: CIFAR from numpy arrays, ImageFolder over class folders of files (each image
    constant, its value the file's name), so the conversion and splitting run without torchvision."""

    class CIFAR:
        classes = ["a", "b", "c"]

        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert not download
            count = 5 if train else 2
            self.data = np.full((count, 32, 32, 3), 255 if train else 51, dtype=np.uint8)
            self.targets = [index % 3 for index in range(count)]

    class ImageFolder:
        def __init__(self, root: str, transform) -> None:
            self.classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
            if not self.classes:
                raise FileNotFoundError(f"Couldn't find any class folder in {root}.")
            self.samples = [(file, label) for label, name in enumerate(self.classes)
                            for file in sorted((Path(root) / name).iterdir())]
            self.transform = transform

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, index: int):
            file, label = self.samples[index]
            return self.transform(file), label

    fake = types.SimpleNamespace(
        datasets=types.SimpleNamespace(CIFAR10=CIFAR, CIFAR100=CIFAR, ImageFolder=ImageFolder),
        transforms=types.SimpleNamespace(Compose=lambda steps: steps[-1], Resize=lambda size: None,
                                         ToTensor=lambda: lambda file: torch.full((3, 32, 32), float(file.stem))))
    monkeypatch.setitem(sys.modules, "torchvision", fake)


@pytest.mark.parametrize("name,files", [("cifar10", ["data_batch_1", "test_batch"]), ("cifar100", ["train", "test"])])
def test_cifar_tensors(name: str, files: list[str], tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / datasets._CIFAR_FOLDERS[name][0]
    folder.mkdir()
    for file in files:
        (folder / file).write_bytes(b"")
    _fake_torchvision(monkeypatch)
    for data_dir in (tmp_path, folder):  # the root or the extracted folder itself
        split = load_dataset(name, data_dir=data_dir)
        assert describe(split) == {"input_shape": (3, 32, 32), "classes": 3, "train_size": 5, "test_size": 2}
        assert split.train_images.dtype == torch.float32 and split.train_labels.dtype == torch.int64
        assert torch.all(split.train_images == 1.0) and torch.allclose(split.test_images, torch.tensor(0.2))


def test_imagefolder_split_by_seed(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for index in range(4):
            (tmp_path / label / f"{index + (10 if label == 'dog' else 0)}.png").write_bytes(b"")
    _fake_torchvision(monkeypatch)
    split = load_dataset("imagefolder", data_dir=tmp_path, seed=3)
    assert describe(split) == {"input_shape": (3, 32, 32), "classes": 2, "train_size": 6, "test_size": 2}
    values = torch.cat([split.train_images[:, 0, 0, 0], split.test_images[:, 0, 0, 0]])
    assert sorted(values.tolist()) == [0, 1, 2, 3, 10, 11, 12, 13]
    assert torch.equal(load_dataset("imagefolder", data_dir=tmp_path, seed=3).test_images, split.test_images)


def test_imagefolder_train_test_folders(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    for part in ("train", "test"):
        for label in ("cat", "dog"):
            (tmp_path / part / label).mkdir(parents=True)
            (tmp_path / part / label / "1.png").write_bytes(b"")
    _fake_torchvision(monkeypatch)
    split = load_dataset("imagefolder", data_dir=tmp_path)
    assert describe(split)["train_size"] == 2 and split.test_labels.tolist() == [0, 1]
    (tmp_path / "test" / "emu").mkdir()
    with pytest.raises(DatasetUnavailable, match="train classes .* differ from test classes"):
        load_dataset("imagefolder", data_dir=tmp_path)


def test_imagefolder_without_class_folders(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_torchvision(monkeypatch)
    with pytest.raises(DatasetUnavailable, match="holds no class subfolders"):
        load_dataset("imagefolder", data_dir=tmp_path)


@pytest.mark.parametrize("name,files", [("cifar10", ["data_batch_1", "test_batch"]), ("cifar100", ["train", "test"])])
def test_cifar_without_torchvision(name: str, files: list[str], tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / datasets._CIFAR_FOLDERS[name][0]
    folder.mkdir()
    for file in files:
        (folder / file).write_bytes(b"")
    _hide_torchvision(monkeypatch)
    with pytest.raises(DatasetUnavailable, match="need torchvision: pip install torchvision") as error:
        load_dataset(name, data_dir=tmp_path)
    assert "\n" not in str(error.value)


def test_imagefolder_without_torchvision(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_torchvision(monkeypatch)
    with pytest.raises(DatasetUnavailable, match="need torchvision: pip install torchvision"):
        load_dataset("imagefolder", data_dir=tmp_path)


def test_imagefolder_reads_pngs(tmp_path) -> None:
    pytest.importorskip("torchvision")
    from PIL import Image

    for part, count in (("train", 3), ("test", 2)):
        for label in ("cat", "dog"):
            (tmp_path / part / label).mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (20, 12), (index * 40, 100, 200)).save(tmp_path / part / label / f"{index}.png")
    split = load_dataset("imagefolder", data_dir=tmp_path)
    assert describe(split) == {"input_shape": (3, 32, 32), "classes": 2, "train_size": 6, "test_size": 4}
    assert 0 <= split.train_images.min() and split.train_images.max() <= 1
