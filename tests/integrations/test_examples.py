"""docs/distributed.md's examples run as written under torchrun (2 gloo processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sparseticket.methods import Ticket

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _torchrun(script: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           str(EXAMPLES / script)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # end_distributed() freed the group on every rank: no gloo thread ran into interpreter finalization
    assert "outlive destroy_process_group" not in done.stderr, done.stderr[-3000:]
    return done.stdout


def test_ddp_worm_example(tmp_path):
    output = _torchrun("ddp_worm.py", tmp_path)
    assert output.count("ticket found at epoch") == 1  # rank 0 alone reports
    ticket = Ticket.load(tmp_path / "ddp_worm.safetensors")
    assert ticket.method == "worm" and ticket.hyperparameters["found_epoch"] is not None
    kept = sum(int(mask.sum()) for mask in ticket.channel_masks.values())
    assert f"{kept}/" in output and 0 < kept < sum(m.numel() for m in ticket.channel_masks.values())


def test_fsdp_imp_example(tmp_path):
    output = _torchrun("fsdp_imp.py", tmp_path)
    for round_index, density in enumerate(("0.5000", "0.2500", "0.1250"), start=1):
        assert f"round {round_index}: density {density} (rank 0 holds 24576 of 49152" in output
    ticket = Ticket.load(tmp_path / "fsdp_imp.safetensors")
    assert {name: tuple(mask.shape) for name, mask in ticket.masks.items()} == {"1.weight": (256, 64),
                                                                                "3.weight": (128, 256)}
    assert abs(ticket.density() - 0.125) < 1e-9  # full masks gathered from the two shards
