"""benchmarks/inference.py, cheaply: the paired timing (a fake clock), the table's speed-up column and
verdicts from rows, and the real-ticket table from tiny ``sparseticket search`` runs (no ResNet-50/BERT,
no torch.compile)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "inference.py"
_spec = importlib.util.spec_from_file_location("inference", SCRIPT)
inference = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = inference  # dataclasses look their module up here
_spec.loader.exec_module(inference)

# the smallest settings that finish a search in seconds (as tests/deploy/helpers.py)
TINY = ("--width", "8", "--epochs", "2", "--queue", "2", "--finetune-epochs", "1")
TINY_IMP = ("--width", "8", "--density", "0.6", "--round-epochs", "1", "--rewind-step", "3", "--finetune-epochs", "1")


class FakeClock:
    """A clock that each forward advances by its next duration; records the order of the calls."""

    def __init__(self, durations: dict[str, list[float]]) -> None:
        self.now, self.durations, self.calls = 0.0, {key: list(value) for key, value in durations.items()}, []

    def __call__(self) -> float:
        return self.now

    def forward(self, name: str):
        def run() -> None:
            self.calls.append(name)
            self.now += self.durations[name].pop(0)

        return run


def test_paired_ms_alternates_and_takes_the_median_of_per_round_ratios():
    # rounds 0-2 (warm-up 1 call each first): a load spike hits both models in round 1 alike
    clock = FakeClock({"dense": [9.0, 0.004, 0.040, 0.004], "ticket": [9.0, 0.002, 0.020, 0.004]})
    paired = inference.paired_ms(clock.forward("dense"), clock.forward("ticket"), 3, warmup=1, clock=clock)
    assert clock.calls == ["dense", "ticket", "dense", "ticket", "ticket", "dense", "dense", "ticket"]
    assert paired.speedup == pytest.approx(2.0)  # ratios 2, 2, 1: the median
    assert paired.dense_ms == pytest.approx(4.0) and paired.ticket_ms == pytest.approx(4.0)  # medians of ms


def test_paired_ms_runs_a_model_against_itself():
    clock = FakeClock({"dense": [0.001] * 8})
    forward = clock.forward("dense")
    paired = inference.paired_ms(forward, forward, 3, warmup=1, clock=clock)
    assert paired.speedup == pytest.approx(1.0) and len(clock.calls) == 8


def _row(ticket: str, eager: tuple[float, float], speed: tuple[float, float], *, same: bool = False,
         paired: bool = True, macs: int = 100) -> dict:
    keys = ("eager_ms", "compile_ms", "onnxruntime_ms")
    row = {"network": "vgg", "description": "vgg test", "ticket": ticket, "round_to": None, "density": None,
           "kept_channels": None, "params": 1000, "macs": macs, "memory_bytes": 4000,
           **{key: {"1": eager[0], "64": eager[1]} for key in keys}, "error": 0.0, "formats": ["dense"],
           "same_graph_as_dense": same, "gpu_bytes_b1": 2000, "gpu_predicted_ms_b1": 1e-3}
    if paired:
        row |= {"speedup": {key: {"1": speed[0], "64": speed[1]} for key in keys}, "paired": True}
    return row


META = {"date": "today", "machine": "test CPU", "torch": "x", "threads": 1, "repeats": 3}


def test_table_shows_the_paired_ratio_not_the_ratio_of_medians():
    rows = [_row("dense", (2.0, 100.0), (1.0, 1.0)), _row("weight 0.2", (1.0, 100.0), (1.01, 0.98), same=True),
            _row("weight 0.05", (1.0, 100.0), (1.3, 1.0), same=True)]
    block = inference.table(rows, META)
    assert "| weight 0.2 | 0.001M | 0.0M | 0.00 MiB | 1.00 (1.01x) | 100 (0.98x) |" in block  # not 2.00x
    assert "median over rounds of the per-round ratio dense / ticket" in block
    lines = {line.split(":")[0]: line for line in block.splitlines() if line.startswith("- vgg")}
    same = lines["- vgg weight 0.2"]
    assert "noise" not in same and "(0.98x at batch 64, 1.01x at batch 1)" in same
    assert "timing noise" in lines["- vgg weight 0.05"]


def test_rows_timed_before_pairing_keep_the_ratio_of_medians_and_say_so():
    rows = [_row("dense", (2.0, 100.0), (0, 0), paired=False), _row("channel 0.5", (1.0, 50.0), (0, 0), paired=False)]
    block = inference.table(rows, META)
    assert "Timed before paired timing" in block and "1.00 (2.00x) | 50.00 (2.00x)" in block


def test_real_ticket_rows_and_table(tmp_path):
    searches = {"earlybird": TINY, "imp": TINY_IMP, "worm": ("--no-such-flag",)}
    rows = inference.real_ticket_rows(tmp_path, 1, 1, searches)
    assert [(row["method"], row.get("round_to")) for row in rows] == [
        ("earlybird", None), ("earlybird", 8), ("earlybird", 16), ("imp", None), ("worm", None)]
    assert "`sparseticket search --method worm` exited with 2" in rows[4]["failed"]
    for row in rows[:4]:
        assert 0 <= row["accuracy_drawn"] <= 1 and 0 <= row["accuracy_deployed"] <= 1
        assert row["params"] <= row["dense_params"] and set(row["speedup"]["eager_ms"]) == {"1", "64"}
        assert 0 <= row["finetuned_accuracy"] <= 1
    assert rows[0]["measured_on"] == "searched network, before fine-tuning"
    assert rows[3]["measured_on"] == "fine-tuned network"
    assert rows[3]["accuracy_drawn"] == rows[3]["accuracy_deployed"]  # a weight ticket deploys its own masks
    assert rows[0]["params"] <= rows[1]["params"] <= rows[2]["params"]  # rounding up keeps channels
    block = inference.table([_row("dense", (2.0, 100.0), (1.0, 1.0))], META,
                            {"meta": {"date": "today", "rounds": 1}, "rows": rows})
    assert "### Real tickets on the built-in data" in block and block.endswith(inference.END)
    assert "before any fine-tuning" in block and "- worm: not measured: `sparseticket search" in block
    table = [line for line in block.splitlines() if line.startswith(("| earlybird", "| imp", "| worm"))]
    assert len(table) == 4 and table[1].startswith("| earlybird (ratio 0.5) | 8 |")
    assert f"{rows[0]['accuracy_drawn']:.3f} | {rows[0]['accuracy_deployed']:.3f} | searched network" in table[0]
