"""IMP's rewinding in the CLI as open_lth does it, and the dense training's LR schedules.

Every step of a tiny IMP search is recorded (round, batch, LR, optimizer state); round r must be
round 1's steps k..T-1 again: the same batches and LRs, from the weights, momentum and scheduler
state captured at step k. The LR schedules are checked against hand-computed values.
"""

from __future__ import annotations

import csv
import math

import pytest
import torch

from sparseticket.cli.main import main
from sparseticket.driver import search as driver_search
from sparseticket.driver.jobs import IMPJob
from sparseticket.driver.schedules import LRSchedule, lr_scheduler, parse_rewind_step
from sparseticket.methods import IMP
from sparseticket.methods.imp import rewind_step_parts

LR = 0.05
STEPS_PER_EPOCH = 22  # ceil(1348 digits training images / batch 64)
ROUND_EPOCHS = 2
T = ROUND_EPOCHS * STEPS_PER_EPOCH
TINY = ["--model", "mlp", "--width", "8", "--finetune-epochs", "1", "--no-progress", "--threads", "1"]
# rate 0.5 down to density 0.2: rounds of 100%, 50% and 25% (3 rounds, the last stops at 20%)
IMP_RUN = ["search", "--method", "imp", "--rate", "0.5", "--density", "0.2", "--lr", str(LR),
           "--round-epochs", str(ROUND_EPOCHS), *TINY]


# ----------------------------------------------------------------- schedules, by hand
def test_constant_schedule_with_warmup():
    schedule = LRSchedule("constant", total_steps=10, warmup_steps=4)
    assert [schedule(s) for s in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_step_schedule_drops_at_half_and_three_quarters():
    schedule = LRSchedule("step", total_steps=8)
    assert [schedule(s) for s in range(8)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = LRSchedule("step", total_steps=8, warmup_steps=2)  # the factors multiply, as in open_lth
    assert [warm(s) for s in range(8)] == pytest.approx([0, 0.5, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_schedule_goes_to_zero():
    schedule = LRSchedule("cosine", total_steps=4)
    half_sqrt2 = math.sqrt(2) / 2
    assert [schedule(s) for s in range(5)] == pytest.approx([1, (1 + half_sqrt2) / 2, 0.5, (1 - half_sqrt2) / 2, 0])
    warm = LRSchedule("cosine", total_steps=4, warmup_steps=2)
    assert warm(1) == pytest.approx(0.5 * (1 + half_sqrt2) / 2) and warm(2) == pytest.approx(0.5)


def test_scheduler_gives_each_step_its_lr_and_rewinds_with_its_state():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.2, momentum=0.9)
    scheduler = lr_scheduler(optimizer, "step", total_steps=8, warmup_steps=2)
    seen, saved = [], None
    for step in range(8):
        if step == 3:
            saved = (optimizer.state_dict(), scheduler.state_dict())
        seen.append(optimizer.param_groups[0]["lr"])
        weight.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0, 0.1, 0.2, 0.2, 0.02, 0.02, 0.002, 0.002])
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    again = []
    for _ in range(3, 8):
        again.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert again == pytest.approx(seen[3:])


@pytest.mark.parametrize("kind, total, warmup, name", [("linear", 8, 0, "lr_schedule"), ("step", 0, 0, "total_steps"),
                                                       ("step", 8, 9, "warmup_epochs")])
def test_bad_schedule_names_the_setting(kind, total, warmup, name):
    with pytest.raises(ValueError, match=name):
        LRSchedule(kind, total, warmup)


# ----------------------------------------------------------------- rewind step parsing
@pytest.mark.parametrize("value, expected", [("500it", 500), ("2ep", 44), ("2ep3it", 47), ("12", 12), (12, 12),
                                             ("0", 0), ("0ep", 0), (" 7it ", 7)])
def test_parse_rewind_step(value, expected):
    assert parse_rewind_step(value, STEPS_PER_EPOCH) == expected


@pytest.mark.parametrize("value", ["abc", "-3", "2 ep", "1.5ep", "", "ep", "it", "3it2ep", "2ep3", -1, "²"])
def test_bad_rewind_step_is_a_value_error_naming_it(value):
    with pytest.raises(ValueError, match="rewind_step"):
        parse_rewind_step(value, STEPS_PER_EPOCH)


@pytest.mark.parametrize("value", [1.5, True, None])
def test_rewind_step_of_another_type_is_a_type_error(value):
    with pytest.raises(TypeError, match="rewind_step"):
        rewind_step_parts(value)


def test_rewind_step_must_be_inside_the_round():
    assert parse_rewind_step("43it", STEPS_PER_EPOCH, total_steps=T) == 43
    for value in ("2ep", "44it", "5ep"):
        with pytest.raises(ValueError, match="rewind_step .*beyond the training length"):
            parse_rewind_step(value, STEPS_PER_EPOCH, total_steps=T)


def test_imp_accepts_a_step_string():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    assert IMP(model, rewind_step="2ep").ticket().hyperparameters["rewind_step"] == "2ep"
    with pytest.raises(ValueError, match="rewind_step"):
        IMP(model, rewind_step="2 epochs")


def test_cli_rejects_a_rewind_step_beyond_the_round(tmp_path, capsys):
    assert main([*IMP_RUN, "--rewind-step", "3ep", "--out", str(tmp_path)]) == 2
    assert "rewind_step '3ep' is iteration 66, beyond the training length" in capsys.readouterr().err


# ----------------------------------------------------------------- every step of an IMP search
class Recorder:
    """Wraps the search's training loop: one record per IMP step (round, batch, LR) and the
    state at the first step of each round and at round 1's step ``k``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, k: int) -> None:
        self.k, self.steps, self.states = k, [], {}
        original = driver_search.train_steps

        def train_steps(model, batches, *, after_backward=(), after_step=(), **rest):
            job = getattr(after_step[0], "__self__", None) if after_step else None
            if not isinstance(job, IMPJob):
                return original(model, batches, after_backward=after_backward, after_step=after_step, **rest)
            return original(model, self._batches(batches, job), after_backward=(*after_backward, self._step(job)),
                            after_step=after_step, **rest)

        monkeypatch.setattr(driver_search, "train_steps", train_steps)

    def _batches(self, loader, job: IMPJob):
        """The loader's batches; the model's state (weights and BN buffers) is kept before each
        is yielded, that is before the forward pass that updates the BN buffers."""
        recorder = self

        class Recorded:
            def __len__(self) -> int:
                return len(loader)

            def __iter__(self):
                for batch in loader:
                    recorder.batch = batch
                    recorder.model_state = {name: value.clone() for name, value in job.model.state_dict().items()}
                    yield batch
        return Recorded()

    def _step(self, job: IMPJob):
        """A hook that runs after backward, before the optimizer step: records the step."""
        def recorded() -> None:
            round_ = job.method.round + 1  # prune rounds done so far, + 1
            count = sum(1 for record in self.steps if record["round"] == round_)  # this round's steps so far
            self.steps.append({"round": round_, "images": self.batch[0].clone(), "labels": self.batch[1].clone(),
                               "lr": job.optimizer.param_groups[0]["lr"]})
            if count == 0:
                self.states[(round_, "start")] = self._state(job)
            if round_ == 1 and count == self.k:
                self.states[(1, "k")] = self._state(job)
        return recorded

    def _state(self, job: IMPJob) -> dict:
        """Before a step: weights and BN buffers (before its forward), momentum, scheduler step, masks."""
        parameters = job.optimizer.param_groups[0]["params"]
        return {"weights": self.model_state,
                "momentum": {index: job.optimizer.state[p]["momentum_buffer"].clone()
                             for index, p in enumerate(parameters) if "momentum_buffer" in job.optimizer.state[p]},
                "last_epoch": job.scheduler.last_epoch,
                "masks": {name: mask.clone() for name, mask in zip(job.method.names, job.method.masks)},
                "parameter_masks": {index: mask.clone() for index, p in enumerate(parameters)
                                    for weight, mask in zip(job.method.weights, job.method.masks) if weight is p}}

    def round_steps(self, round_: int) -> list[dict]:
        return [record for record in self.steps if record["round"] == round_]


def same_step(a: dict, b: dict) -> bool:
    return torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"]) and a["lr"] == b["lr"]


@pytest.mark.parametrize("rewind, k, schedule, warmup", [("3it", 3, "step", 1), ("1ep", STEPS_PER_EPOCH, "cosine", 0),
                                                         ("0", 0, "step", 0), ("1ep5it", 27, "constant", 1)])
def test_every_round_replays_round_one_from_step_k(tmp_path, monkeypatch, rewind, k, schedule, warmup):
    recorder = Recorder(monkeypatch, k)
    assert main([*IMP_RUN, "--rewind-step", rewind, "--lr-schedule", schedule, "--warmup-epochs", str(warmup),
                 "--out", str(tmp_path)]) == 0
    first = recorder.round_steps(1)
    assert len(first) == T
    assert {record["round"] for record in recorder.steps} == {1, 2, 3}
    # round 1's LRs are the schedule's, computed here by hand at a few steps
    warm = warmup * STEPS_PER_EPOCH
    for s in (0, 5, 21, 22, 32, 33, 43):
        ramp = min(1.0, s / warm) if warm else 1.0
        factor = {"constant": 1.0, "step": 0.1 ** ((s >= T // 2) + (s >= 3 * T // 4)),
                  "cosine": (1 + math.cos(math.pi * s / T)) / 2}[schedule]
        assert first[s]["lr"] == pytest.approx(LR * ramp * factor, rel=1e-12, abs=1e-15), s
    # the data order changes from epoch to epoch (so that the comparisons below can fail)
    assert not torch.equal(first[0]["labels"], first[STEPS_PER_EPOCH]["labels"])
    for round_ in (2, 3):
        steps = recorder.round_steps(round_)
        assert len(steps) == T - k  # steps k..T-1 only
        assert all(same_step(mine, theirs) for mine, theirs in zip(steps, first[k:])), round_
        start, captured = recorder.states[(round_, "start")], recorder.states[(1, "k")]
        assert start["last_epoch"] == captured["last_epoch"] == k
        assert start["momentum"].keys() == captured["momentum"].keys() and (k > 0) == bool(captured["momentum"])
        for index, buffer in captured["momentum"].items():  # the step-k momentum, pruned entries zeroed
            mask = start["parameter_masks"].get(index)
            assert torch.equal(start["momentum"][index], buffer if mask is None else buffer * mask)
        for name, value in captured["weights"].items():  # the step-k weights and BN buffers, pruned ones zero
            mask = start["masks"].get(name)
            assert torch.equal(start["weights"][name], value if mask is None else value * mask), name
        assert any(not bool(mask.all()) for mask in start["masks"].values())  # it was pruned
    run = next(path for path in tmp_path.iterdir() if path.is_dir())
    rows = [row for row in csv.DictReader((run / "metrics.csv").open()) if row["phase"] == "search"]
    firsts = {int(row["round"]): int(row["first_step"]) for row in reversed(rows)}  # each round's first row
    assert firsts == {1: 0, 2: k, 3: k} and all(int(row["last_step"]) < T for row in rows)
