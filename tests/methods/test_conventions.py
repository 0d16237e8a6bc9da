"""``convention="original"`` against hand-computed cases of the authors' code (issue 25), and the
exact mask distances of EarlyBird/WORM on every backend.

The cases follow what the original code does (open_lth's ``pruning/sparse_global.py`` and
``lottery/runner.py``; the Rare Gems repository's ``BottomK`` in ``utils/net_utils.py`` and its
``main.py`` schedule; ``earlyBird.py`` of Early-Bird-Tickets and WORM): each expected value below
is worked out by hand or by a few lines of NumPy that follow the original's formula.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from sparseticket.cli.main import main
from sparseticket.methods import IMP, WORM, EarlyBird, GemMiner, Ticket
from sparseticket.methods.convention import check_convention
from sparseticket.methods.earlybird import hamming_distances
from sparseticket.ops import cpu_backend


# ------------------------------------------------------------------ IMP: open_lth's sparse_global
def two_layers(first: torch.Tensor, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Linear(4 -> 3) with the given 12 weights, then the output Linear(3 -> 2) (6 weights)."""
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)).to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(first.view(3, 4))
        model[1].weight.fill_(100.0)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_imp_original_prunes_n_plus_one_with_the_output_layer_counted_as_remaining(dtype):
    signs = torch.tensor([1, -1] * 6, dtype=torch.float32)
    model = two_layers(torch.arange(1.0, 13.0) * signs, dtype)
    imp = IMP(model, rate=0.2, convention="original")  # output excluded, as by default
    # remaining = 12 + 6 (the output layer's weights) -> n = ceil(0.2 * 18) = 4; threshold
    # sort(|w|)[4] = 5; |w| <= 5 pruned: 5 weights (the default prunes ceil(0.2 * 12) = 3)
    imp.prune_round()
    assert imp.masks[0].view(-1).tolist() == [False] * 5 + [True] * 7
    # round 2: remaining = 7 + 6 -> n = ceil(2.6) = 3; threshold = the 4th smallest survivor, 9
    imp.prune_round()
    assert imp.masks[0].view(-1).tolist() == [False] * 9 + [True] * 3
    assert (model[0].weight.view(-1)[:9] == 0).all() and (model[1].weight == 100).all()

    default = IMP(two_layers(torch.arange(1.0, 13.0) * signs, dtype), rate=0.2)
    default.prune_round()
    assert default.masks[0].view(-1).tolist() == [False] * 3 + [True] * 9


def test_imp_original_prunes_every_weight_tied_with_the_threshold():
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 9.0, 10.0, 11.0, 12.0])
    imp = IMP(two_layers(weights), rate=0.2, convention="original")
    imp.prune_round()  # n = 4, threshold sort(|w|)[4] = 5: all four 5s go (8 pruned)
    assert imp.masks[0].view(-1).tolist() == [False] * 8 + [True] * 4
    default = IMP(two_layers(weights), rate=0.2)
    default.prune_round()  # exactly 3, ties by index
    assert default.masks[0].view(-1).tolist() == [False] * 3 + [True] * 9


def test_imp_original_equals_a_numpy_transcription_of_sparse_global_over_rounds(generator):
    """Random weights (with ties from a bf16 init), several rounds: the masks equal open_lth's rule."""
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10), nn.ReLU(), nn.Linear(10, 3))
    with torch.no_grad():
        for layer in (model[0], model[2], model[4]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator).bfloat16().float())
    weights = {name: model.state_dict()[f"{name}.weight"].numpy().copy() for name in ("0", "2", "4")}
    current = {name: np.ones_like(value, dtype=np.int32) for name, value in weights.items()}
    imp = IMP(model, rate=0.2, convention="original")  # "4" (the output) excluded
    for _ in range(6):
        # open_lth: n = ceil(fraction * all mask entries still 1, ignored layers included); the
        # candidates are the unpruned weights of the other layers; keep |w| > sort(|w|)[n]
        remaining = sum(int(mask.sum()) for mask in current.values())
        n = int(np.ceil(0.2 * remaining))
        candidates = np.concatenate([weights[k][current[k] == 1] for k in ("0", "2")])
        threshold = np.sort(np.abs(candidates))[n]
        for k in ("0", "2"):
            current[k] = np.where(np.abs(weights[k]) > threshold, current[k], 0)
        imp.prune_round()
        for mask, k in zip(imp.masks, ("0", "2")):
            assert np.array_equal(mask.numpy(), current[k] == 1)


def _sgd_steps(model: nn.Module, imp: IMP, optimizer: torch.optim.Optimizer, steps: range,
               data: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for step in steps:
        inputs, targets = data[step]
        optimizer.zero_grad()
        nn.functional.mse_loss(model(inputs), targets).backward()
        if imp is not None:
            imp.after_backward()
        optimizer.step()
        if imp is not None:
            imp.after_step()


def test_imp_original_starts_a_fresh_optimizer_at_k_in_every_round_including_the_first():
    """open_lth: pretraining to k is its own training call, and every level trains k..T with a new
    optimizer from the weights saved at k; the schedule's position (the LR) is kept."""
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 6, generator=generator), torch.randn(16, 4, generator=generator)) for _ in range(8)]
    k, steps = 3, 8
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    initial = copy.deepcopy(model.state_dict())

    def new_optimizer(parameters):
        return torch.optim.SGD(parameters, lr=0.05, momentum=0.9, weight_decay=5e-4)

    # this package, convention "original"
    imp = IMP(model, rate=0.3, rewind_step=k, convention="original")
    optimizer = new_optimizer(model.parameters())
    _sgd_steps(model, imp, optimizer, range(k), data)
    imp.capture(optimizer)
    assert not optimizer.state  # round 1 goes on from k with a fresh state
    _sgd_steps(model, imp, optimizer, range(k, steps), data)
    round_one = copy.deepcopy(model.state_dict())
    imp.prune_round()
    imp.rewind()
    assert not optimizer.state
    _sgd_steps(model, imp, optimizer, range(k, steps), data)

    # by hand, as open_lth's runner does it: a new optimizer at k, in level 0 and in level 1
    reference = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    reference.load_state_dict(initial)
    _sgd_steps(reference, None, new_optimizer(reference.parameters()), range(k), data)
    at_k = copy.deepcopy(reference.state_dict())
    _sgd_steps(reference, None, new_optimizer(reference.parameters()), range(k, steps), data)
    for key, value in round_one.items():
        assert torch.equal(value, reference.state_dict()[key]), key
    reference.load_state_dict(at_k)
    masks = dict(zip(imp.names, imp.masks))
    with torch.no_grad():
        for name, mask in masks.items():
            reference.get_parameter(name).mul_(mask)
    optimizer = new_optimizer(reference.parameters())
    for step in range(k, steps):  # PrunedModel: the mask multiplies the weights before every forward
        inputs, targets = data[step]
        with torch.no_grad():
            for name, mask in masks.items():
                reference.get_parameter(name).mul_(mask)
        optimizer.zero_grad()
        nn.functional.mse_loss(reference(inputs), targets).backward()
        optimizer.step()
    with torch.no_grad():
        for name, mask in masks.items():
            reference.get_parameter(name).mul_(mask)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key

    # the default restores the momentum captured at k instead
    default_model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    default_model.load_state_dict(initial)
    default = IMP(default_model, rate=0.3, rewind_step=k)
    optimizer = new_optimizer(default_model.parameters())
    _sgd_steps(default_model, default, optimizer, range(k), data)
    default.capture(optimizer)
    assert optimizer.state


def test_imp_original_needs_the_optimizer_at_capture():
    model = nn.Sequential(nn.Linear(6, 12), nn.Linear(12, 4))
    with pytest.raises(ValueError, match="pass the optimizer"):
        IMP(model, convention="original").capture()


def test_imp_original_refuses_a_count_that_leaves_no_threshold():
    model = two_layers(torch.arange(1.0, 13.0))
    imp = IMP(model, rate=0.9, convention="original")
    with pytest.raises(ValueError, match="leaves no threshold"):
        imp.prune_round()  # n = ceil(0.9 * 18) = 17 >= 12 survivors


def test_imp_original_lands_on_min_density_in_the_last_round():
    model = two_layers(torch.arange(1.0, 13.0))
    imp = IMP(model, rate=0.2, convention="original")
    assert imp.prune_round(min_density=0.5) == 7 / 12  # open_lth's 5 keep 7 >= 6
    assert imp.prune_round(min_density=0.5) == 6 / 12  # open_lth's 4 would leave 3: exactly down to 6


# ------------------------------------------------------------------ Gem-Miner: the repo's BottomK
def test_gemminer_original_freezes_ceil_p_active_and_every_tie():
    model = nn.Sequential(nn.Linear(10, 1, bias=False))
    scores = torch.tensor([0.3, 0.1, 0.3, 0.9, 0.3, 0.8, 0.3, 0.7, 0.6, 0.2])
    miners = {}
    for convention in ("default", "original"):
        miners[convention] = GemMiner(model if convention == "default" else copy.deepcopy(model),
                                      density=0.5, epochs=6, period=5, convention=convention)
        with torch.no_grad():
            miners[convention].scores.copy_(scores)
        for _ in range(6):  # one round (floor(5 / 5)), after the 6th epoch
            miners[convention].epoch_end()
    # p = 1 - 0.5**(1/1); k = ceil(p * 10) = 5; threshold = 5th smallest = 0.3; every |s| <= 0.3 frozen
    p = 1 - math.exp(math.log(0.5) / 1)
    assert math.ceil(p * 10) == 5
    assert miners["original"].flags.tolist() == [False, False, False, True, False, True, False, True, True, False]
    # the default freezes exactly 5 (ties by position)
    assert miners["default"].flags.tolist() == [False, False, False, True, False, True, True, True, True, False]


def test_gemminer_original_frozen_sets_equal_bottomk_in_every_round(generator):
    """Rounds of the repo's BottomK, transcribed in NumPy from its formula, on mined scores."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 10))
    epochs, period, density = 21, 5, 0.1
    miner = GemMiner(model, density=density, epochs=epochs, period=period, seed=1, convention="original")
    rounds = (epochs - 1) // period
    rate = 1 - np.exp(np.log(density) / rounds)
    flags = np.ones(miner.flags.numel(), dtype=np.int64)
    for epoch in range(epochs):  # 0-based, as the repo's main.py
        for _ in range(2):
            inputs = torch.randn(8, 30, generator=generator)
            model(inputs).pow(2).mean().backward()
            miner.step()
        before = miner.scores.detach().numpy().copy()
        froze = miner.epoch_end()
        assert froze == (epoch % period == 0 and epoch != 0)
        if froze:
            active = int(flags.sum())
            k = int(np.ceil(rate * active))
            threshold = np.sort(np.abs(before[flags == 1]))[k - 1]
            flags = ((flags + (np.abs(before) > threshold)) == 2).astype(np.int64)
        assert np.array_equal(miner.flags.numpy(), flags == 1), epoch
    assert int(miner.flags.sum()) <= round(density * flags.size)  # ends at or below N * d


# ------------------------------------------------------------------ EarlyBird / WORM
def test_hamming_distances_are_the_originals_double_formula():
    distances = torch.tensor([4 / 40, 0.0, 1.0, 3 / 7], dtype=torch.float32)
    assert hamming_distances(distances[:3], 40) == [1 - 36 / 40, 1 - 40 / 40, 1 - 0 / 40]
    assert hamming_distances(distances[:3], 40)[0] == 0.09999999999999998 <= 0.1
    assert hamming_distances(distances[3:], 7) == [1 - 4 / 7]


def one_bn(channels: int = 40) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, channels, 1), nn.BatchNorm2d(channels))


def set_gamma(model: nn.Sequential, values: torch.Tensor) -> None:
    with torch.no_grad():
        model[1].weight.copy_(values)


@pytest.mark.parametrize("kernels", ["cpp", "triton", "reference"])
def test_a_distance_of_exactly_eps_draws_the_ticket_on_every_backend(kernels):
    """4 of 40 channels differ: the originals' 1 - 36/40 = 0.09999999999999998 <= eps 0.1 draws it."""
    with cpu_backend(kernels):
        model = one_bn()
        method = EarlyBird(model, ratio=0.5, queue=2, eps=0.1, l1=0.0)
        gamma = torch.arange(1.0, 41.0)
        set_gamma(model, gamma)
        assert not method.epoch_end()  # keeps gamma > 21 (threshold sort[int(40 * 0.5)] = 21): 19 channels
        swapped = gamma.clone()
        swapped[[0, 1, 38, 39]] = gamma[[38, 39, 0, 1]]  # two kept and two pruned channels trade places
        set_gamma(model, swapped)
        assert method.epoch_end() and method.found_epoch == 2
        assert method.distances == [0.09999999999999998]


def _worm_run(convention: str, far: float) -> WORM:
    """WORM over epochs whose masks never change after training starts, from an untrained mask
    at distance ``far`` of them."""
    model = one_bn(20)
    untrained = torch.arange(1.0, 21.0)
    set_gamma(model, untrained)
    method = WORM(model, ratio=0.5, queue=5, eps=0.1, trigger=0.15, convention=convention)
    trained = untrained.clone()
    flips = round(far * 20)  # exchange kept and pruned channels: 2 per swap
    for index in range(flips // 2):
        trained[[index, 19 - index]] = untrained[[19 - index, index]]
    set_gamma(model, trained)
    for _ in range(6):
        method.epoch_end()
    return method


def test_worm_original_puts_the_untrained_mask_in_the_trigger_mean():
    # original: at epoch 4 the queue is (untrained, 1, 2, 3, 4): distances (0.4, 0, 0, 0), mean 0.1 < 0.15
    near = _worm_run("original", 0.4)
    assert near.trigger_epoch == 4 and near.history[3] == [0.4, 0.0, 0.0, 0.0]
    assert near.found_epoch == 5  # max 0.4 > eps at 4; at 5 the untrained mask has left the queue
    # mean (0.8 + 0) / 4 = 0.2 >= 0.15 at epoch 4: the trigger waits for epoch 5
    far = _worm_run("original", 0.8)
    assert far.trigger_epoch == 5
    # the default never queues the untrained mask: full at epoch 5, all distances 0
    default = _worm_run("default", 0.4)
    assert default.trigger_epoch == 5 and default.found_epoch == 5 and default.history[0] == []


def test_worm_original_has_no_l1_unless_given():
    model = one_bn(8)
    assert WORM(model, convention="original").l1 == 0.0
    assert WORM(model).l1 == 1e-4 and EarlyBird(model, convention="original").l1 == 1e-4
    assert WORM(model, convention="original", l1=2e-4).l1 == 2e-4


def test_convention_is_checked_and_kept_in_states_and_tickets():
    with pytest.raises(ValueError, match="convention must be one of 'default', 'original'"):
        check_convention("authors")
    model = nn.Sequential(nn.Linear(6, 12), nn.Linear(12, 4))
    original = IMP(model, convention="original")
    assert original.ticket().hyperparameters["convention"] == "original"
    with pytest.raises(ValueError, match="state of convention 'original'"):
        IMP(model).load_state_dict(original.state_dict())
    bn = one_bn(8)
    with pytest.raises(ValueError, match="state of convention 'default'"):
        WORM(bn, convention="original").load_state_dict(WORM(bn).state_dict())


def test_cli_convention_original_end_to_end(tmp_path):
    arguments = ["search", "--method", "worm", "--convention", "original", "--epochs", "6", "--queue", "3",
                 "--width", "4", "--finetune-epochs", "1", "--no-progress", "--threads", "1", "--out", str(tmp_path)]
    assert main(arguments) == 0
    (run,) = [path for path in tmp_path.iterdir() if path.is_dir()]
    config = (run / "config.json").read_text()
    assert '"convention": "original"' in config and '"l1": 0.0' in config
    ticket = Ticket.load(run / "ticket.safetensors")
    assert ticket.hyperparameters["convention"] == "original" and ticket.hyperparameters["l1"] == 0.0
    imp_out = tmp_path / "imp"
    assert main(["search", "--method", "imp", "--convention", "original", "--density", "0.6", "--round-epochs", "1",
                 "--rewind-step", "3", "--width", "4", "--finetune-epochs", "1", "--no-progress", "--threads", "1",
                 "--out", str(imp_out)]) == 0
    (run,) = list(imp_out.iterdir())
    assert Ticket.load(run / "ticket.safetensors").hyperparameters["convention"] == "original"
