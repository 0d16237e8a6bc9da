"""GemMiner's masked weights written by the score step (``gm.masked``) and returned by each layer's
forward: mining equals computing every masked weight in its forward (the path before), bit for bit,
through freezing rounds, checkpoint loads, another optimizer with ``project_``, in-place edits of the
scores, flags and weights, gradient accumulation and channels_last; the frozen weights live in one
flat buffer (``gm.flat_weights``) and are their own tensors again after ``finish()``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparseticket.methods.gemminer import GemMiner
from sparseticket.ops import cpu_backend, gemminer_mask

pytestmark = pytest.mark.filterwarnings("ignore::sparseticket.methods.gemminer.MiningWarning")  # short runs

PATHS = ["cpp", "triton", "reference"]  # the C++ autograd op, the autograd.Function over Triton or the reference
CL = torch.channels_last
STEPS_PER_EPOCH, EPOCHS = 2, 3
EVENTS = [
    None,
    "edit_scores",
    "edit_layer_scores",
    "edit_flags",
    "edit_weight",
    "load_state_dict",
    "project",
    "accumulate",
    "hold_across_step",
]


def small_net(channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    )
    return model.to(memory_format=CL) if channels_last else model


def compute_every_forward(miner: GemMiner) -> None:
    """The path before: no masked weights kept, every forward computes its layer's."""
    miner._masked = None
    for score_mask in miner._score_masks:
        score_mask.masked_weights = None


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int32) if tensor.dtype == torch.float32 else tensor


def batches(count: int, channels_last: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        images = torch.randn(4, 3, 6, 6, generator=generator)
        out.append(
            (images.to(memory_format=CL) if channels_last else images, torch.randint(0, 5, (4,), generator=generator))
        )
    return out


def assert_masked_current(miner: GemMiner) -> None:
    """gm.masked holds gemminer_mask of the flat weights, scores and flags as they are now."""
    want = gemminer_mask(miner.flat_weights, miner.scores.detach(), miner.flags)
    assert torch.equal(bits(miner.masked), bits(want))


def forward_uses_masked(model: nn.Module, miner: GemMiner) -> bool:
    """Whether the first layer's forward returned memory of gm.masked (not a computed tensor)."""
    address = model[0].weight.data_ptr()  # first: a stale buffer is replaced by this forward
    start = miner.masked.data_ptr()
    return start <= address < start + miner.masked.numel() * miner.masked.element_size()


def mine(
    path: str, precomputed: bool, event: str | None, *, channels_last: bool = False, compiled: bool = False
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Every forward's output and the final state of a short mining run with one ``event`` in it."""
    model = small_net(channels_last)
    miner = GemMiner(model, density=0.3, epochs=EPOCHS, period=1, lr=100.0, seed=0)  # masks move every step
    if not precomputed:
        compute_every_forward(miner)
    network = torch.compile(model, backend="aot_eager") if compiled else model
    data = batches(EPOCHS * STEPS_PER_EPOCH + 1, channels_last)
    other = torch.optim.SGD([miner.scores], lr=100.0, momentum=0.9)
    outputs, snapshot, held = [], None, None
    with cpu_backend(path):
        for index in range(EPOCHS * STEPS_PER_EPOCH):
            images, labels = data[index]
            if index == 2:
                with torch.no_grad():  # in-place edits: the next forward must see them
                    if event == "edit_scores":
                        miner.scores.copy_(1 - miner.scores)
                    elif event == "edit_layer_scores":
                        model[2].parametrizations.weight[0].scores.add_(0.25)
                    elif event == "edit_flags":
                        miner.flags[::5] = False
                    elif event == "edit_weight":
                        model[0].parametrizations.weight.original.mul_(-2)
            if event == "load_state_dict" and index == 4:
                miner.load_state_dict(snapshot[0])
                model.load_state_dict(snapshot[1])
            out = network(images)
            nn.functional.cross_entropy(out, labels).backward()
            outputs.append(out.detach())
            if event == "accumulate" and index == 2:  # two forwards and backwards before one step
                second = network(data[-1][0])
                second.square().mean().backward()
                outputs.append(second.detach())
            if event == "hold_across_step" and index == 2:
                held = model[0].weight.detach()  # a caller keeps a masked weight over the step
                held_values = held.clone()
            if event == "project" and index == 3:
                other.step()
                miner.project_()
            else:
                miner.step()
            if held is not None:
                assert torch.equal(held, held_values)
            if precomputed and not compiled:
                with torch.no_grad():  # (after project_ this forward recomputes the stale buffer)
                    assert forward_uses_masked(model, miner)
                assert_masked_current(miner)
            if event == "load_state_dict" and index == 1:
                snapshot = (copy.deepcopy(miner.state_dict()), copy.deepcopy(model.state_dict()))
            if index % STEPS_PER_EPOCH == STEPS_PER_EPOCH - 1:
                miner.epoch_end()  # freezing rounds after epochs 2 and 3
    state = {"scores": miner.scores.detach(), "momentum": miner.momentum_buffer, "flags": miner.flags}
    return outputs, state


def assert_same_run(first, second) -> None:
    outputs, state = first
    want_outputs, want_state = second
    assert len(outputs) == len(want_outputs)
    for got, want in zip(outputs, want_outputs):
        assert torch.equal(bits(got), bits(want))
    for name in state:
        assert torch.equal(bits(state[name]), bits(want_state[name])), name


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("path", PATHS)
def test_mining_equals_computing_every_forward(path, event):
    run = mine(path, True, event)
    assert_same_run(run, mine(path, False, event))
    flags = run[1]["flags"]
    if event != "load_state_dict":  # (which rewinds the epoch count past the first freezing round)
        assert int(flags.sum()) == round(0.3 * flags.numel())  # the freezing rounds ran


@pytest.mark.parametrize("event", [None, "edit_scores", "accumulate"])
@pytest.mark.parametrize("path", ["cpp", "triton"])
def test_channels_last_mining_equals_computing_every_forward(path, event):
    assert_same_run(mine(path, True, event, channels_last=True), mine(path, False, event, channels_last=True))


def test_compiled_forwards_mine_the_same_and_the_step_skips_the_masked_weights():
    """A compiled forward computes its masked weights in the graph: the step then writes none
    (nothing read them), and the next eager forward recomputes them."""
    assert_same_run(mine("cpp", True, None, compiled=True), mine("cpp", False, None))
    model = small_net()
    miner = GemMiner(model, density=0.3, epochs=EPOCHS, period=1, seed=0)
    network = torch.compile(model, backend="aot_eager")
    images, labels = batches(1, False)[0]
    nn.functional.cross_entropy(network(images), labels).backward()
    masked = miner.masked
    version = masked._version
    miner.step()
    assert miner.masked is masked and masked._version == version  # not written
    assert not torch.equal(masked, gemminer_mask(miner.flat_weights, miner.scores.detach(), miner.flags))
    model(images)  # eager: recomputed before use
    assert_masked_current(miner)


def test_data_edits_are_not_seen_until_refresh_masked():
    model = small_net()
    miner = GemMiner(model, density=0.3, epochs=EPOCHS, period=1, seed=0)
    images = batches(1, False)[0][0]
    before = model(images).detach()
    miner.scores.data.zero_()  # bumps no version counter: documented as not seen
    assert torch.equal(model(images).detach(), before)
    miner.refresh_masked()
    assert not torch.equal(model(images).detach(), before)
    assert_masked_current(miner)


def test_a_step_that_fails_leaves_the_masked_weights_stale():
    model = small_net()
    miner = GemMiner(model, density=0.3, epochs=EPOCHS, period=1, seed=0)
    images, labels = batches(1, False)[0]
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward(retain_graph=True)  # held: the step would write a fresh buffer
    miner.lr = float("nan")
    with pytest.raises(ValueError, match="lr must be finite"):
        miner.step()
    model(images)  # recomputed, not the fresh buffer's garbage
    assert_masked_current(miner)


def test_a_graph_kept_over_the_step_keeps_its_masked_weights():
    """retain_graph: the step writes fresh memory, the old graph's backward still runs."""
    model = small_net()
    miner = GemMiner(model, density=0.3, epochs=EPOCHS, period=1, seed=0)
    images, labels = batches(1, False)[0]
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward(retain_graph=True)
    old = miner.masked
    miner.step()
    assert miner.masked is not old
    assert_masked_current(miner)
    loss.backward()  # its saved masked weights were neither overwritten nor bumped
    miner.step()


def test_weights_live_in_one_flat_buffer():
    for channels_last in (False, True):
        model = small_net(channels_last)
        initial = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        miner = GemMiner(model, density=0.3, epochs=EPOCHS, period=1, seed=0)
        flat = miner.flat_weights.untyped_storage().data_ptr()
        for weight in miner.weights:
            original = weight.stored
            assert isinstance(original, nn.Parameter) and not original.requires_grad
            assert original.untyped_storage().data_ptr() == flat
            assert original.stride() == initial[weight.name].stride()  # the weight's memory order
            part = miner.slices[weight.name]
            assert original.data_ptr() == flat + part.start * original.element_size()
            assert torch.equal(original, initial[weight.name])
        state = model.state_dict()  # the keys and values checkpoints had before
        keys = [
            f"{layer}.{key}"
            for layer in ("0", "2", "5")
            for key in ("bias", "parametrizations.weight.original", "parametrizations.weight.0.scores")
        ]
        assert sorted(state) == sorted(keys)
        miner.check_placement()
        assert [
            parameter for parameter in model.parameters() if parameter.requires_grad
        ] == miner.hooked_parameters()  # the scores stay the only trainable parameters


def test_check_placement_sees_a_weight_moved_out_of_the_flat_buffer():
    model = small_net()
    miner = GemMiner(model, density=0.3, epochs=EPOCHS, period=1, seed=0)
    original = model[2].parametrizations.weight.original
    original.data = original.data.clone()
    with pytest.raises(RuntimeError, match="weight of 2.weight .* no longer shares memory with gm.flat_weights"):
        miner.check_placement()


def test_finish_gives_each_weight_its_own_memory_and_restores_held_parameters():
    model = small_net()
    held = model[0].weight  # an optimizer made before the miner would hold it
    initial = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    miner = GemMiner(model, density=0.3, epochs=EPOCHS, period=1, seed=0)
    images, labels = batches(1, False)[0]
    nn.functional.cross_entropy(model(images), labels).backward()
    miner.step()
    flat = miner.flat_weights.untyped_storage().data_ptr()
    ticket = miner.finish()
    assert model[0].weight is held  # the Parameter still referenced is back in the model
    for name in ("0.weight", "2.weight", "5.weight"):
        weight = model.get_parameter(name)
        assert weight.untyped_storage().data_ptr() != flat and weight.requires_grad
        assert torch.equal(weight.detach(), torch.where(ticket.masks[name], initial[name], 0.0))
    assert model[2].weight.stride() == initial["2.weight"].stride()


def test_weights_of_several_dtypes_keep_computing_each_forward():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(4, 6)
            self.second = nn.Linear(6, 3).to(torch.bfloat16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.second(self.first(x).to(torch.bfloat16)).float()

    torch.manual_seed(0)
    model = Mixed()
    first_weight = model.first.weight
    miner = GemMiner(model, density=0.5, epochs=EPOCHS, period=1, seed=0)
    assert miner.flat_weights is None and miner.masked is None
    assert model.first.parametrizations.weight.original is first_weight
    x = torch.randn(5, 4)
    model(x).sum().backward()
    miner.step()
    keep = ((miner.scores.detach() > 0.5) & miner.flags)[miner.slices["first.weight"]].view(6, 4)
    assert torch.equal(model.first.weight, torch.where(keep, first_weight, 0.0))
    miner.finish()
    assert model.first.weight is first_weight


def test_a_deep_copy_of_a_mining_model_computes_its_masked_weights():
    """Copied tensors share no version counter with the copied buffers: the copy computes each
    forward's masked weights, so edits of the copy are seen."""
    model = small_net()
    miner = GemMiner(model, density=0.3, epochs=EPOCHS, period=1, seed=0)
    images, labels = batches(1, False)[0]
    nn.functional.cross_entropy(model(images), labels).backward()
    miner.step()
    twin = copy.deepcopy(model)
    assert all(
        module.parametrizations.weight[0].masked_weights is None
        for module in twin
        if hasattr(module, "parametrizations")
    )
    assert torch.equal(twin(images), model(images))
    with torch.no_grad():
        twin[0].parametrizations.weight[0].scores.copy_(1 - twin[0].parametrizations.weight[0].scores)
    assert not torch.equal(twin(images), model(images))
    with torch.no_grad():
        model[0].parametrizations.weight[0].scores.copy_(1 - model[0].parametrizations.weight[0].scores)
    assert torch.equal(twin(images), model(images))
