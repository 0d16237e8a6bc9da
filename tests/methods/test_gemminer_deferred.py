"""GemMiner's deferred backward (``defer_backward=True``): once ``gm.step()`` has run, each layer's
backward keeps its masked weight's gradient and the next step forms the scores' gradient in its own
pass. Mining equals the backward that computes the scores' gradient (the path before) bit for bit on every backend, with
``gm.gradient()`` read mid-step, channels_last and another optimizer stepping ``gm.scores``. Two
gradients of one layer in a step (accumulation, a layer used twice) are summed before the product
with the weight, (g1 + g2) * w instead of g1 * w + g2 * w: equal to rounding. Under
torch.distributed nothing is deferred."""

from __future__ import annotations

import datetime

import pytest
import torch
from torch import nn

from sparseticket.methods.gemminer import GemMiner
from sparseticket.ops import cpu_backend

pytestmark = pytest.mark.filterwarnings("ignore::sparseticket.methods.gemminer.MiningWarning")  # short runs

STEPS = 6


class Twice(nn.Module):
    """A conv net whose middle layer runs twice in one forward when ``twice`` (one weight, two
    gradients a step)."""

    def __init__(self, channels_last: bool, twice: bool = False) -> None:
        super().__init__()
        self.twice = twice
        self.first = nn.Conv2d(3, 6, 3, padding=1)
        self.middle = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6 * 5 * 5, 4)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(x))
        x = torch.relu(self.middle(x))
        if self.twice:
            x = torch.relu(self.middle(x))
        return self.head(x.flatten(1))


def batches(count: int, channels_last: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    out = []
    for _ in range(count):
        images = torch.randn(3, 3, 5, 5, generator=generator)
        out.append((images.to(memory_format=torch.channels_last) if channels_last else images,
                    torch.randint(0, 4, (3,), generator=generator)))
    return out


def mine(path: str, deferred: bool, event: str | None, channels_last: bool = False,
         twice: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = Twice(channels_last, twice)
    miner = GemMiner(model, density=0.3, epochs=3, period=1, lr=50.0, seed=0, defer_backward=deferred)
    data = batches(STEPS + 1, channels_last)
    other = torch.optim.Adam([miner.scores], lr=0.05)
    seen = []
    with cpu_backend(path):
        for index in range(STEPS):
            images, labels = data[index]
            nn.functional.cross_entropy(model(images), labels).backward()
            if event == "accumulate" and index == 3:
                model(data[-1][0]).square().mean().backward()
            if event == "gradient_then_backward" and index == 3:
                seen.append(miner.gradient().clone())
                model(data[-1][0]).square().mean().backward()
            if event == "other_optimizer" and index == 3:
                other.step()  # after gm.step() ran: the deferred gradient is formed for it first
                miner.project_()
            else:
                seen.append(miner.step().reshape(1).float())  # the kept count
            if index % 2 == 1:
                miner.epoch_end()
    return {"scores": miner.scores.detach().clone(), "momentum": miner.momentum_buffer.clone(),
            "flags": miner.flags.clone(), "masked": miner.masked.clone(), "seen": torch.cat(seen)}


def assert_same(first: dict, second: dict) -> None:
    for name in first:
        got, want = first[name], second[name]
        assert torch.equal(got.view(torch.int32) if got.dtype == torch.float32 else got,
                           want.view(torch.int32) if want.dtype == torch.float32 else want), name


@pytest.mark.parametrize("event", [None, "gradient_then_backward", "other_optimizer"])
@pytest.mark.parametrize("path", ["cpp", "triton", "reference"])
def test_deferred_mining_equals_the_backward_that_computes_the_gradient(path, event):
    assert_same(mine(path, True, event), mine(path, False, event))


@pytest.mark.parametrize("path", ["cpp", "triton"])
def test_deferred_mining_in_channels_last(path):
    assert_same(mine(path, True, None, channels_last=True), mine(path, False, None, channels_last=True))


@pytest.mark.parametrize(("event", "twice"), [("accumulate", False), (None, True), ("accumulate", True)])
@pytest.mark.parametrize("path", ["cpp", "triton", "reference"])
def test_two_gradients_of_a_layer_in_a_step_are_summed_first(path, event, twice):
    deferred, computed = mine(path, True, event, twice=twice), mine(path, False, event, twice=twice)
    torch.testing.assert_close(deferred["scores"], computed["scores"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(deferred["momentum"], computed["momentum"], rtol=1e-5, atol=1e-6)
    assert (deferred["flags"] != computed["flags"]).sum() <= 2  # a score at the freezing threshold may swap


@pytest.mark.parametrize("path", ["cpp", "triton", "reference"])
def test_after_the_first_step_the_backward_computes_no_scores_gradient(path):
    torch.manual_seed(0)
    model = Twice(False)
    miner = GemMiner(model, density=0.3, epochs=3, period=1, seed=0, defer_backward=True)
    torch.manual_seed(0)
    twin_model = Twice(False)
    twin = GemMiner(twin_model, density=0.3, epochs=3, period=1, seed=0)
    images, labels = batches(1, False)[0]
    with cpu_backend(path):
        for step in range(2):
            nn.functional.cross_entropy(model(images), labels).backward()
            nn.functional.cross_entropy(twin_model(images), labels).backward()
            layers = [score_mask.scores for score_mask in miner._score_masks]
            if step == 0:  # before any gm.step(): as before, each layer's gradient is its slice of gm.scores.grad
                assert miner.scores.grad is not None and all(scores.grad is not None for scores in layers)
            else:
                assert miner.scores.grad is None and all(scores.grad is None for scores in layers)
                assert all(score_mask.slots.holds_gradient() for score_mask in miner._score_masks)
                assert torch.equal(miner.gradient(), twin.gradient())  # formed on demand, the same numbers
                assert miner.scores.grad is not None
            miner.step()
            twin.step()
            assert not any(score_mask.slots.held.numel() for score_mask in miner._score_masks)  # released


def test_nothing_is_deferred_under_torch_distributed(tmp_path):
    import torch.distributed as dist

    from sparseticket.methods.teardown import end_distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = Twice(False)
        miner = GemMiner(model, density=0.3, epochs=3, period=1, seed=0, defer_backward=True)
        images, labels = batches(1, False)[0]
        for _ in range(2):
            nn.functional.cross_entropy(model(images), labels).backward()
            assert all(score_mask.scores.grad is not None for score_mask in miner._score_masks)
            miner.step()
    finally:
        end_distributed(finished=False)


def test_off_by_default_and_checked():
    torch.manual_seed(0)
    model = Twice(False)
    miner = GemMiner(model, density=0.3, epochs=3, period=1, seed=0)
    images, labels = batches(1, False)[0]
    for _ in range(2):
        nn.functional.cross_entropy(model(images), labels).backward()
        assert all(score_mask.scores.grad is not None for score_mask in miner._score_masks)  # the protocol's
        miner.step()
    with pytest.raises(TypeError, match="defer_backward must be a bool"):
        GemMiner(Twice(False), density=0.3, epochs=3, period=1, defer_backward=1)


def test_a_deep_copy_of_the_model_does_not_defer():
    """The copy has no miner to step it: its backward fills the layers' scores.grad as usual."""
    import copy

    torch.manual_seed(0)
    model = Twice(False)
    miner = GemMiner(model, density=0.3, epochs=3, period=1, seed=0, defer_backward=True)
    images, labels = batches(1, False)[0]
    nn.functional.cross_entropy(model(images), labels).backward()
    miner.step()  # deferral on for the original
    twin = copy.deepcopy(model)
    nn.functional.cross_entropy(twin(images), labels).backward()
    assert all(parameter.grad is not None for name, parameter in twin.named_parameters() if name.endswith("scores"))
