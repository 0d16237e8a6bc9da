"""EarlyBird (exact physical pruning), IMP and Gem-Miner on torchvision's ResNet-18, ResNet-50,
VGG-11-BN and MobileNetV2 (``weights=None``, 32x32 inputs).

Exactness of physical pruning follows test_structured_pruning.py: the smaller network computes
what the unpruned network computes with the removed channels' BN gamma and beta zeroed. Which
channels must go together is derived here from the architecture (residual adds, depthwise
convolutions), independently of Torch-Pruning: a coupled group keeps the union of its BN masks,
or exactly one channel when the union is empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

try:
    import torchvision
except Exception as error:  # not installed, or (RuntimeError) its compiled ops do not load with this torch
    pytest.skip(f"torchvision does not import here: {error}", allow_module_level=True)

from vision_checks import (  # noqa: E402
    BatchNorm,
    Groups,
    batchnorms,
    check_kept_channels,
    conv_linear_weights,
    zeroed_copy,
)

from sparseticket.methods import IMP, EarlyBird, GemMiner  # noqa: E402

INPUT = (3, 32, 32)  # five stride-2 stages: 1x1 at the end
BATCH = 4  # BatchNorm in train mode needs more than one value per channel at 1x1
CLASSES = 10


def vgg11_bn() -> nn.Module:
    """VGG-11-BN's convolutional stack with a small head: torchvision's 7x7x512 -> 4096 -> 4096 head
    holds 120M of its 129M parameters and has no BatchNorm (the channels tracked are all in ``features``)."""
    model = torchvision.models.vgg11_bn(weights=None, num_classes=CLASSES)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Linear(512, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, CLASSES))
    return model


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=CLASSES),
    "resnet50": lambda: torchvision.models.resnet50(weights=None, num_classes=CLASSES),
    "vgg11_bn": vgg11_bn,
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=CLASSES),
}


def build(kind: str, generator: torch.Generator) -> nn.Module:
    """A freshly initialised model of ``kind`` (torchvision initialises from torch's global RNG)."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    return BUILDERS[kind]()


def batch(generator: torch.Generator, size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels."""
    return torch.randn(size, *INPUT, generator=generator), torch.randint(0, CLASSES, (size,), generator=generator)


def sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
             between: Callable[[], None], after: Callable[[], None] = lambda: None) -> None:
    """One SGD step on a random batch, ``between`` called after backward and ``after`` after the step."""
    x, y = batch(generator)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    between()
    optimizer.step()
    after()


# ---------------------------------------------------------------- coupling, from the architecture
def resnet_groups(model: nn.Module) -> Groups:
    """Each block's last BN is added to its downsample BN, or (identity shortcut) to the block input's BN."""
    groups = Groups(list(batchnorms(model)))
    previous = "bn1"
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(model, stage)):
            out = f"{stage}.{index}.{'bn3' if hasattr(block, 'bn3') else 'bn2'}"
            groups.join(out, previous if block.downsample is None else f"{stage}.{index}.downsample.1")
            previous = out
    return groups


def vgg_groups(model: nn.Module) -> Groups:
    """A plain chain: no two BNs are coupled."""
    return Groups(list(batchnorms(model)))


def mobilenet_v2_groups(model: nn.Module) -> Groups:
    """A depthwise conv ties its BN to its input's BN; a residual block ties its output BN to its input's BN."""
    groups = Groups(list(batchnorms(model)))
    previous = "features.0.1"
    for index in range(1, len(model.features) - 1):  # the inverted residual blocks
        block = model.features[index]
        source = previous
        modules = list(block.conv.named_modules())
        for position, (_name, conv) in enumerate(modules):
            if not isinstance(conv, nn.Conv2d):
                continue
            bn_name = next(n for n, m in modules[position + 1:] if isinstance(m, BatchNorm))  # the BN after the conv
            bn_name = f"features.{index}.conv.{bn_name}"
            if conv.groups > 1:
                assert conv.groups == conv.in_channels == conv.out_channels  # the reference's assumption
                groups.join(bn_name, source)
            source = bn_name
        if block.use_res_connect:
            groups.join(source, previous)
        previous = source
    return groups


GROUPS = {"resnet18": resnet_groups, "resnet50": resnet_groups, "vgg11_bn": vgg_groups,
          "mobilenet_v2": mobilenet_v2_groups}


# ---------------------------------------------------------------- EarlyBird
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_earlybird_prunes_exactly(kind: str, generator: torch.Generator) -> None:
    model = build(kind, generator).train()
    eb = EarlyBird(model)
    assert [layer.name for layer in eb.layers] == list(batchnorms(model))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):  # epochs of two steps
        for _ in range(2):
            sgd_step(model, optimizer, generator, eb.after_backward)
        eb.epoch_end()
    masks = eb.channel_mask()
    pruned = eb.prune(example_inputs=batch(generator, 2)[0], measure_latency=False)
    report = eb.prune_report
    assert pruned is not model and pruned.training
    check_kept_channels(masks, report.kept_channels, GROUPS[kind](model))
    for name, bn in batchnorms(pruned).items():
        assert bn.num_features == int(report.kept_channels[name].sum()), name
    assert report.params_before == sum(p.numel() for p in model.parameters())
    assert report.params_after == sum(p.numel() for p in pruned.parameters()) < report.params_before
    assert report.macs_after < report.macs_before
    zeroed = zeroed_copy(model, report.kept_channels).eval()
    pruned.eval()
    x, _ = batch(generator, 3)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- IMP
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_imp_rounds(kind: str, generator: torch.Generator) -> None:
    rate, rounds = 0.2, 2
    model = build(kind, generator).train()
    weights = conv_linear_weights(model)
    classifier = next(reversed(weights))  # IMP leaves the output layer dense by default
    imp = IMP(model, rate=rate)
    assert imp.names == [name for name in weights if name != classifier]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    imp.capture(optimizer)
    total = sum(weights[name].numel() for name in imp.names)
    survivors = total
    for _ in range(rounds):
        for _ in range(2):
            sgd_step(model, optimizer, generator, imp.after_backward, imp.after_step)
        before = {name: weights[name].detach().abs().clone() for name in imp.names}
        old_masks = [mask.clone() for mask in imp.masks]
        imp.prune_round()
        pruned_now = torch.cat([before[name][old & ~new] for name, old, new in zip(imp.names, old_masks, imp.masks)])
        kept_now = torch.cat([before[name][new] for name, new in zip(imp.names, imp.masks)])
        assert pruned_now.max() <= kept_now.min()  # the smallest magnitudes among the survivors went
        survivors -= math.ceil(rate * survivors)
        assert sum(int(mask.sum()) for mask in imp.masks) == survivors
        imp.rewind()
    for _ in range(2):  # momentum restored by rewind() must not move a pruned weight
        sgd_step(model, optimizer, generator, imp.after_backward, imp.after_step)
    for name, mask in zip(imp.names, imp.masks):
        assert bool((weights[name].detach()[~mask] == 0).all()), name
    assert abs(imp.density - (1 - rate) ** rounds) <= rounds / total
    ticket = imp.ticket()
    fresh = build(kind, generator)
    original = {name: weight.detach().clone() for name, weight in conv_linear_weights(fresh).items()}
    ticket.apply(fresh)
    for name, weight in conv_linear_weights(fresh).items():
        expected = original[name] * ticket.masks[name] if name in ticket.masks else original[name]
        assert torch.equal(weight.detach(), expected), name


# ---------------------------------------------------------------- Gem-Miner
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_gemminer_mines_every_weight(kind: str, generator: torch.Generator) -> None:
    density = 0.2
    model = build(kind, generator).train()
    initial = {name: weight.detach().clone() for name, weight in conv_linear_weights(model).items()}
    total = sum(weight.numel() for weight in initial.values())
    gm = GemMiner(model, density=density, epochs=3, period=1, seed=0)
    for _epoch in range(1, 4):  # one step an epoch: ResNet-50 has 23.5M scores
        x, y = batch(generator)
        nn.functional.cross_entropy(model(x), y).backward()
        gm.step()
        gm.epoch_end()
    assert gm.density == round(total * density) / total
    ticket = gm.finish()
    assert list(ticket.masks) == list(initial)  # every Conv/Linear weight, the classifier included
    assert ticket.density() == round(total * density) / total
    for name, weight in conv_linear_weights(model).items():
        assert torch.equal(weight.detach(), initial[name] * ticket.masks[name]), name
    assert all(parameter.requires_grad for parameter in model.parameters())
