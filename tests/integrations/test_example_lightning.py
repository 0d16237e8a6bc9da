"""examples/lightning_digits.py runs as written and leaves an EarlyBird ticket that loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")
pytest.importorskip("sklearn")

from sparseticket.methods import Ticket  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_digits.py"


def test_lightning_digits_example(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLE), "out"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ticket = Ticket.load(tmp_path / "out" / "lightning_digits.safetensors")  # under the output directory
    found = ticket.hyperparameters["found_epoch"]
    assert ticket.method == "earlybird" and isinstance(found, int) and 0 < found < 40
    assert ticket.hyperparameters["epochs"] == found  # training stopped at the draw
    kept = sum(int(mask.sum()) for mask in ticket.channel_masks.values())
    total = sum(mask.numel() for mask in ticket.channel_masks.values())
    assert total == 80 and 0 < kept < total
    assert f"found at epoch {found} ({kept}/{total} channels kept), trained {found} epochs" in done.stdout
    assert done.stdout.strip().endswith(os.path.join("out", "lightning_digits.safetensors"))
