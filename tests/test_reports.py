"""The experiment report scripts run end to end on tiny settings and return sane figures."""

from __future__ import annotations

import pytest

from sparseticket.experiments import earlybird_report, weight_tickets_report
from sparseticket.experiments.data import load_digits_split


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def test_earlybird_report_run(digits):
    run = earlybird_report.run_once(earlybird_report.WORM, digits, seed=0, width=8, max_epochs=6,
                                    finetune_epochs=1)
    assert run.method == "WORM" and run.trigger_epoch == 5
    assert 0 < run.params_ratio < 1 and 0 < run.macs_ratio < 1
    assert 0 <= run.pruned_accuracy <= 1 and 0 <= run.finetuned_accuracy <= 1


def test_weight_ticket_pieces(digits):
    ticket = weight_tickets_report.mine_gemminer(digits, seed=0, density=0.2, epochs=6, lr=10.0)
    assert abs(ticket.density() - 0.2) < 1e-3
    accuracy = weight_tickets_report.finetune(weight_tickets_report.fresh_model(0), ticket, digits, 1, 0)
    assert 0.1 < accuracy <= 1
    picked = weight_tickets_report.imp_run(digits, seed=0, epochs_per_round=1, rewind_step=5,
                                           densities=(0.8, 0.64))
    assert [round(reached, 3) for _, reached, _ in picked.values()] == [0.8, 0.64]
    assert weight_tickets_report.barrier_from(digits, seed=0, start_epochs=0, epochs=1) >= -1e-9
