"""Physical channel pruning (EarlyBird, DESIGN §1.1): the smaller network computes exactly what the
network with the pruned channels' gamma and beta zeroed computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from vision_checks import batchnorms, zeroed_copy

from sparseticket.methods.structured import PruneReport, prune_channels

INPUT_SHAPE = (2, 3, 8, 8)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv, BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class VGG(nn.Module):
    """conv-BN-ReLU x4 with max-pools, flatten (2x2 spatial left), linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 8), conv_bn_relu(8, 12), nn.MaxPool2d(2),
            conv_bn_relu(12, 16), nn.MaxPool2d(2), conv_bn_relu(16, 16),
        )
        self.classifier = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """CIFAR ResNet basic block; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, identity block, downsampling block, identity block, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.layers = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


class TwoBranchCat(nn.Module):
    """Two conv-BN-ReLU branches concatenated, then conv-BN-ReLU, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.left = conv_bn_relu(8, 6)
        self.right = conv_bn_relu(8, 10)
        self.merge = conv_bn_relu(16, 12)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.merge(torch.cat([self.left(x), self.right(x)], dim=1))
        return self.fc(x.mean((2, 3)))


class MLPWithOutputBN(nn.Module):
    """Linear-BN-ReLU, then a classifier whose outputs go through a BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(3 * 8 * 8, 32), nn.BatchNorm1d(32), nn.ReLU())
        self.out = nn.Linear(32, 10)
        self.out_bn = nn.BatchNorm1d(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_bn(self.out(self.hidden(torch.flatten(x, 1))))


MODELS = {"vgg": VGG, "resnet": ResNet, "cat": TwoBranchCat}


def make_model(cls: type[nn.Module], generator: torch.Generator) -> nn.Module:
    """A model with random BN affine params and nontrivial running statistics, in eval mode."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    model = cls()
    with torch.no_grad():
        for bn in batchnorms(model).values():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.5)
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        model.train()
        for _ in range(3):
            model(torch.randn(8, *INPUT_SHAPE[1:]))
    return model.eval()


def random_masks(model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """About half the channels of every BN kept, at least one."""
    masks = {}
    for name, bn in batchnorms(model).items():
        masks[name] = torch.rand(bn.num_features, generator=generator) < 0.5
        masks[name][torch.randint(0, bn.num_features, (1,), generator=generator)] = True
    return masks


def example() -> torch.Tensor:
    """The tracing input."""
    return torch.randn(*INPUT_SHAPE)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_pruned_model_equals_zeroed_model(kind: str, generator: torch.Generator) -> None:
    model = make_model(MODELS[kind], generator)
    masks = random_masks(model, generator)
    pruned, report = prune_channels(model, masks, example(), measure_latency=False)
    assert set(report.kept_channels) == set(masks)
    for name, bn in batchnorms(pruned).items():
        kept = report.kept_channels[name]
        assert kept.dtype == torch.bool and kept.shape == masks[name].shape
        assert bool((kept | ~masks[name]).all()), "a channel the mask keeps was removed"
        assert bn.num_features == int(kept.sum())
    zeroed = zeroed_copy(model, report.kept_channels)
    pruned.eval()
    x = torch.randn(5, *INPUT_SHAPE[1:], generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(x), atol=1e-5, rtol=1e-5)
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before


def test_residual_groups_keep_the_union(generator: torch.Generator) -> None:
    model = make_model(ResNet, generator)
    masks = random_masks(model, generator)
    _, report = prune_channels(model, masks, example(), measure_latency=False)
    kept = report.kept_channels
    groups = [
        ["stem.1", "layers.0.bn2"],  # identity shortcut: stem output + block 0 output
        ["layers.1.bn2", "layers.1.shortcut.1", "layers.2.bn2"],  # 1x1 shortcut, then identity
    ]
    for group in groups:
        union = torch.stack([masks[n] for n in group]).any(0)
        for name in group:
            assert torch.equal(kept[name], union), name
    for name in ["layers.0.bn1", "layers.1.bn1", "layers.2.bn1"]:  # uncoupled: exactly the mask
        assert torch.equal(kept[name], masks[name]), name


def test_concat_maps_channels_to_branches(generator: torch.Generator) -> None:
    model = make_model(TwoBranchCat, generator)
    masks = {name: torch.ones(bn.num_features, dtype=torch.bool) for name, bn in batchnorms(model).items()}
    masks["left.1"][[1, 4]] = False
    masks["right.1"][[0, 9]] = False
    pruned, report = prune_channels(model, masks, example(), measure_latency=False)
    assert pruned.merge[0].in_channels == 12
    assert pruned.left[0].out_channels == 4 and pruned.right[0].out_channels == 8
    assert torch.equal(report.kept_channels["left.1"], masks["left.1"])


def test_all_false_mask_keeps_largest_gamma(generator: torch.Generator) -> None:
    model = make_model(VGG, generator)
    masks = random_masks(model, generator)
    masks["features.1.1"] = torch.zeros(12, dtype=torch.bool)
    pruned, report = prune_channels(model, masks, example(), measure_latency=False)
    kept = report.kept_channels["features.1.1"]
    assert int(kept.sum()) == 1
    assert int(kept.nonzero()) == int(model.features[1][1].weight.abs().argmax())
    assert pruned.features[1][1].num_features == 1 and pruned.features[1][0].out_channels == 1
    zeroed = zeroed_copy(model, report.kept_channels)
    x = torch.randn(3, *INPUT_SHAPE[1:], generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(x), atol=1e-5, rtol=1e-5)


def test_all_false_residual_group_keeps_one_channel(generator: torch.Generator) -> None:
    model = make_model(ResNet, generator)
    masks = random_masks(model, generator)
    for name in ["layers.1.bn2", "layers.1.shortcut.1", "layers.2.bn2"]:
        masks[name] = torch.zeros(16, dtype=torch.bool)
    pruned, report = prune_channels(model, masks, example(), measure_latency=False)
    assert pruned.fc.in_features == 1
    for name in ["layers.1.bn2", "layers.1.shortcut.1", "layers.2.bn2"]:
        assert int(report.kept_channels[name].sum()) == 1


def test_output_layer_keeps_all_outputs(generator: torch.Generator) -> None:
    model = make_model(MLPWithOutputBN, generator)
    masks = random_masks(model, generator)
    pruned, report = prune_channels(model, masks, example(), measure_latency=False)
    assert bool(report.kept_channels["out_bn"].all())
    assert pruned.out.out_features == 10 and pruned.hidden[0].out_features == int(masks["hidden.1"].sum())
    zeroed = zeroed_copy(model, report.kept_channels)
    x = torch.randn(4, *INPUT_SHAPE[1:], generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_pruned_model_trains(kind: str, generator: torch.Generator) -> None:
    model = make_model(MODELS[kind], generator)
    pruned, _ = prune_channels(model, random_masks(model, generator), example(), measure_latency=False)
    pruned.train()
    x = torch.randn(8, *INPUT_SHAPE[1:], generator=generator)
    y = torch.randint(0, 10, (8,), generator=generator)
    optimizer = torch.optim.SGD(pruned.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(pruned(x), y)
    loss.backward()
    assert all(p.grad is not None for p in pruned.parameters())
    optimizer.step()
    pruned.eval()
    with torch.no_grad():
        before = loss.item()
        after = nn.functional.cross_entropy(pruned(x), y).item()
    assert after != before


def test_input_model_untouched(generator: torch.Generator) -> None:
    model = make_model(ResNet, generator).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = prune_channels(model, random_masks(model, generator), example())
    assert pruned is not model
    assert model.training and all(m.training for m in model.modules())
    assert pruned.training and all(m.training for m in pruned.modules())
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert report.latency_ms_before > 0 and report.latency_ms_after > 0


def test_report_summary(generator: torch.Generator) -> None:
    model = make_model(VGG, generator)
    _, report = prune_channels(model, random_masks(model, generator), example(), measure_latency=False)
    assert isinstance(report, PruneReport)
    assert report.params_before == sum(p.numel() for p in model.parameters())
    text = report.summary()
    for word in ("params", "MACs", "latency", "n/a", f"{report.params_before:,}"):
        assert word in text


@pytest.mark.parametrize(
    ("key", "mask", "message"),
    [
        ("features.9", torch.ones(8, dtype=torch.bool), "features.9"),  # no such module
        ("features.0.0", torch.ones(8, dtype=torch.bool), "features.0.0"),  # a conv, not a BN
        ("features.0.1", torch.ones(7, dtype=torch.bool), "shape"),
        ("features.0.1", torch.ones(8), "bool"),
        ("features.0.1", [True] * 8, "bool"),
    ],
)
def test_bad_masks_raise(key: str, mask: object, message: str, generator: torch.Generator) -> None:
    model = make_model(VGG, generator)
    with pytest.raises(ValueError, match=message) as info:
        prune_channels(model, {key: mask}, example(), measure_latency=False)
    assert repr(key) in str(info.value)


def test_macs_are_per_example_whatever_the_batch_of_the_example_inputs():
    """Issue 26: summary.md and prune_report differed in MACs: the counter's batch total divided by
    the batch size drifts with it (some ops count once per call)."""
    from sparseticket.builtin.models import vgg_small
    from sparseticket.methods.structured import measure_model

    model = vgg_small(width=16).eval()
    counts = {batch: measure_model(model, torch.randn(batch, 1, 8, 8), False)[1] for batch in (1, 3, 64)}
    assert len(set(counts.values())) == 1, counts
    as_tuple = measure_model(model, (torch.randn(64, 1, 8, 8),), False)[1]
    assert as_tuple == counts[1]
