"""The study report scripts run end to end (through the driver) on tiny settings and return sane figures."""

from __future__ import annotations

import pytest

from sparseticket.builtin.data import load_digits_split
from sparseticket.studies import earlybird_report, weight_tickets_report


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def test_earlybird_report_run(digits):
    run = earlybird_report.run_once("worm", digits, seed=0, width=8, max_epochs=6, finetune_epochs=1)
    assert run.method == "worm" and run.trigger_epoch == 5
    assert 0 < run.params_ratio < 1 and 0 < run.macs_ratio < 1
    assert 0 <= run.pruned_accuracy <= 1 and 0 <= run.finetuned_accuracy <= 1


def test_weight_ticket_pieces(digits):
    mined = weight_tickets_report.search("gemminer", digits, run_seed=0, epochs=6, density=0.2, lr=10.0, seed=0)
    assert abs(mined.ticket.density() - 0.2) < 1e-3
    assert 0.1 < mined.accuracy <= 1
    model = weight_tickets_report.fresh_model(0)
    accuracy = weight_tickets_report.finetune(model, mined.ticket, digits, 1, 0)
    assert 0 <= accuracy <= 1
    weights = dict(model.named_parameters())
    for name, mask in mined.ticket.masks.items():  # fine-tuning a given ticket keeps its pruned weights at 0
        assert not weights[name].detach()[~mask].any()
    result = weight_tickets_report.search("imp", digits, run_seed=0, epochs=1, round_epochs=1, imp_last_round=True,
                                          density=0.64, rewind_step=5)
    picked = weight_tickets_report.imp_levels(result, (0.8, 0.64), round_epochs=1)
    assert [round(reached, 3) for _, reached, _ in picked.values()] == [0.8, 0.64]
    assert weight_tickets_report.barrier_from(digits, seed=0, start_epochs=0, epochs=1) >= -1e-9
