"""The 1-D models for MNIST-1D (cnn1d, resnet1d, and mlp on signals): shapes, sizes, and every method on them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseticket.builtin.models import MODEL_INPUTS, ResNet1d, build_model, cnn1d, default_width, models_for
from sparseticket.methods import METHODS
from sparseticket.methods.weights import prunable_weights

SIGNAL = (1, 40)  # one MNIST-1D sample: one channel, length 40
SETTINGS = {"earlybird": {"queue": 2}, "worm": {"queue": 2, "trigger": 1.0, "truncate_filters": True},
            "gemminer": {"density": 0.5, "epochs": 3, "period": 1, "seed": 0}, "imp": {"rate": 0.5}}


def prunable(model: nn.Module) -> int:
    return sum(weight.tensor.numel() for weight in prunable_weights(model))


@pytest.mark.parametrize("name", sorted(models_for(1)))
@pytest.mark.parametrize("shape", [SIGNAL, (3, 17)])
def test_output_shapes(name: str, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, classes=7, input_shape=shape, width=8)
    assert model(torch.randn(5, *shape)).shape == (5, 7)
    assert any(isinstance(module, nn.BatchNorm1d) for module in model.modules())


def test_sizes_and_default_widths() -> None:
    assert set(models_for(1)) == {"mlp", "cnn1d", "resnet1d"} and MODEL_INPUTS["cnn1d"] == 1
    cnn = build_model("cnn1d", input_shape=SIGNAL)  # width None: the model's default, 32 channels
    assert default_width("cnn1d") == 32 and default_width("vgg") == 16
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [(32, (5,), (2,), (2,))] * 3
    assert cnn[-1].in_features == 160 and prunable(cnn) == 12_000  # 32 * 5 positions -> 10
    assert prunable(cnn1d(width=8)) == 8 * 5 + 2 * 8 * 8 * 5 + 40 * 10
    resnet = build_model("resnet1d", input_shape=SIGNAL)
    assert isinstance(resnet, ResNet1d) and prunable(resnet) == 14_480
    assert build_model("mlp", input_shape=SIGNAL, width=8)[1].in_features == 40  # flattens the signal


def test_image_and_signal_models_refuse_the_other_shape() -> None:
    with pytest.raises(ValueError, match=r"model 'vgg' takes images .* signals \[N, C, L\].*mlp, cnn1d, resnet1d"):
        build_model("vgg", input_shape=SIGNAL)
    with pytest.raises(ValueError, match=r"model 'cnn1d' takes signals \[N, C, L\]; the data are images"):
        build_model("cnn1d", input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="models for them: none"):
        build_model("mlp", input_shape=(3,))


def _step(model: nn.Module, method, optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    signals, labels = torch.randn(16, *SIGNAL, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(signals), labels).backward()
    method.after_backward()
    if optimizer is not None:
        optimizer.step()
    method.after_step()


@pytest.mark.filterwarnings("ignore:GemMiner.*the scores barely moved")  # 6 steps of mining: they barely do
@pytest.mark.parametrize("model_name", ["cnn1d", "resnet1d"])
@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_every_method_runs_on_1d_models(model_name: str, method_name: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_name, input_shape=SIGNAL, width=8)
    method = METHODS[method_name](model, **SETTINGS[method_name])
    owns_update = getattr(method, "owns_update", False)
    optimizer = None if owns_update else torch.optim.SGD(model.parameters(), lr=0.05)
    for epoch in range(3):
        for step in range(2):
            _step(model, method, optimizer, 10 * epoch + step)
        method.epoch_end()
        if method_name == "imp" and epoch == 0:
            method.prune_round()
    ticket = method.ticket()
    if method.kind == "channel":
        norms = {name for name, module in model.named_modules() if isinstance(module, nn.BatchNorm1d)}
        assert set(ticket.channel_masks) == norms  # every BatchNorm1d is tracked
        pruned = method.prune(example_inputs=torch.randn(4, *SIGNAL), measure_latency=False)
        assert pruned(torch.randn(3, *SIGNAL)).shape == (3, 10)
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    else:
        convs = {name + ".weight" for name, module in model.named_modules() if isinstance(module, nn.Conv1d)}
        assert convs <= set(ticket.masks)  # Conv1d weights are prunable
        assert 0 < ticket.density() < 1
