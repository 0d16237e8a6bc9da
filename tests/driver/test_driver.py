"""The search driver: every registered method and baseline runs through ``find_ticket``; an
interrupted search resumes from its store to the same result; bad input is a clear error."""

from __future__ import annotations

import pytest
import torch

from sparseticket.builtin.data import load_digits_split
from sparseticket.builtin.models import vgg_small
from sparseticket.driver.data import TrainingData
from sparseticket.driver.recipe import Schedule
from sparseticket.driver.search import MemoryStore, TicketSearch, find_ticket
from sparseticket.methods import BASELINES, METHODS

TINY = Schedule(epochs=3, round_epochs=1, finetune_epochs=1, batch_size=128)
OPTIONS = {"gemminer": {"density": 0.2, "period": 1}, "imp": {"density": 0.25, "rate": 0.5},
           **{name: {"density": 0.2} for name in BASELINES}}


@pytest.fixture(scope="module")
def digits():
    split = load_digits_split()
    return split


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return vgg_small(width=4)


@pytest.mark.parametrize("name", [*METHODS, *BASELINES])
def test_every_registered_method_finds_a_ticket(digits, name):
    rows = []
    result = find_ticket(name, _model(), digits, TINY, on_row=rows.append, **OPTIONS.get(name, {}))
    assert 0 <= result.accuracy <= 1
    assert result.finetune_epochs == 1 and [row["phase"] for row in rows][-1] == "finetune"
    if METHODS.get(name) is not None and METHODS[name].kind == "channel":
        assert result.ticket.channel_masks and not result.ticket.masks
        assert result.extra["found_epoch"] is None or 1 <= result.extra["found_epoch"] <= TINY.epochs
    else:
        assert result.ticket.masks
        assert result.ticket.density() == pytest.approx(OPTIONS[name]["density"], abs=0.01)
        weights = dict(result.model.named_parameters())
        for key, mask in result.ticket.masks.items():  # fine-tuning kept the pruned weights at exactly 0
            assert not weights[key].detach()[~mask].any(), key


def test_imp_rounds_follow_the_density(digits):
    result = find_ticket("imp", _model(), digits, TINY, density=0.2, rate=0.5)
    densities = [row["trained_density"] for row in result.rows if "round_test_accuracy" in row]
    assert densities == pytest.approx([1.0, 0.5, 0.25], abs=1e-3)  # the three rounds, then the ticket at 0.2
    assert result.ticket.density() == pytest.approx(0.2, abs=1e-3)


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("name, stop, changes", [
    ("worm", ("search", 2), {"queue": 2}),
    ("imp", ("search", 2), {}),
    # IMP's later rounds start mid-epoch (k = 3 iterations) under a warm-up: cut in round 2's first epoch
    ("imp", ("search", 3), {"rewind_step": "3it", "round_epochs": 2, "warmup_epochs": 1}),
    ("gemminer", ("finetune", 1), {}),
])
def test_an_interrupted_search_resumes_from_its_store_to_the_same_result(digits, name, stop, changes):
    recipe = {key: changes.pop(key) for key in ("round_epochs", "warmup_epochs") if key in changes}
    schedule = Schedule(**{"epochs": 3, "round_epochs": 1, "finetune_epochs": 2, "batch_size": 128, **recipe})
    options = {**OPTIONS.get(name, {}), **changes}
    whole = find_ticket(name, _model(), digits, schedule, **options)

    store = MemoryStore()

    def interrupt(row):
        if (row["phase"], row["epoch"]) == stop:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        find_ticket(name, _model(), digits, schedule, store=store, on_row=interrupt, **options)
    assert store.load_checkpoint() is not None
    resumed = find_ticket(name, _model(), digits, schedule, store=store, **options)
    assert repr(resumed.rows) == repr(whole.rows)  # repr: the first epoch's distances are NaN (no queue yet)
    assert resumed.accuracy == whole.accuracy
    for section in ("masks", "channel_masks"):
        ours, theirs = getattr(resumed.ticket, section), getattr(whole.ticket, section)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_custom_batches_are_what_the_loop_trains_on(digits):
    """``TrainingData`` of one's own: the driver asks for each (phase, epoch) and trains on exactly those."""
    asked = []
    batch = (digits.train_images[:32], digits.train_labels[:32])

    def batches(phase, epoch):
        asked.append((phase, epoch))
        return [batch, batch]

    data = TrainingData(digits, batches, steps_per_epoch=2)
    result = TicketSearch("random", _model(), data, Schedule(finetune_epochs=3), options={"density": 0.5}).run()
    assert asked == [("finetune", 0), ("finetune", 1), ("finetune", 2)]
    assert result.search_epochs == 0 and result.finetune_epochs == 3


def test_bad_input_is_a_clear_error(digits):
    with pytest.raises(ValueError, match="unknown method 'lottery'"):
        find_ticket("lottery", _model(), digits, TINY)
    with pytest.raises(ValueError, match="'ratoi'"):
        find_ticket("earlybird", _model(), digits, TINY, ratoi=0.5)
    with pytest.raises(TypeError, match="data must be a Split or a TrainingData"):
        find_ticket("earlybird", _model(), [digits.train_images], TINY)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        find_ticket("earlybird", "vgg", digits, TINY)
    for field, value in (("epochs", 0), ("batch_size", 0), ("finetune_epochs", -1), ("lr", float("nan")),
                         ("lr_schedule", "linear")):
        with pytest.raises(ValueError, match=f"Schedule.{field}"):
            Schedule(**{field: value})
