"""examples/hf_bert_earlybert.py runs as written: EarlyBERT on a tiny HF BERT through the Trainer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from sparseticket.methods import Ticket  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "hf_bert_earlybert.py"


def test_hf_bert_earlybert_example(tmp_path):
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=240, env=environment)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout

    drawn = re.search(r"ticket drawn at epoch (\d+) \(of at most (\d+)\); test accuracy ([\d.]+)", output)
    assert drawn, output
    found, most, accuracy = int(drawn[1]), int(drawn[2]), float(drawn[3])
    assert 3 <= found < most  # a full queue of 3 masks first; drawn before the last epoch
    assert accuracy >= 0.9  # the slimmed BERT learned the marker task

    sizes = re.search(r"parameters: (\d+) -> (\d+); heads per layer \[([\d, ]+)\]", output)
    assert sizes, output
    before, after = int(sizes[1]), int(sizes[2])
    heads = [int(count) for count in sizes[3].split(",")]
    assert 0 < after < before and len(heads) == 2 and all(1 <= count < 4 for count in heads)

    ticket = Ticket.load(tmp_path / "hf_bert_earlybert" / "ticket.safetensors")
    assert ticket.method == "earlybird" and ticket.hyperparameters["found_epoch"] == found
    expected = {f"bert.encoder.layer.{index}.{kind}_coefficients": size
                for index in range(2) for kind, size in (("head", 4), ("ffn", 64))}
    assert {name: mask.numel() for name, mask in ticket.channel_masks.items()} == expected
    kept_heads = [int(ticket.channel_masks[f"bert.encoder.layer.{index}.head_coefficients"].sum())
                  for index in range(2)]
    assert kept_heads == heads  # the pruned model kept exactly the ticket's heads
