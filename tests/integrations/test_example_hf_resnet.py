"""examples/hf_resnet_worm.py runs as documented: WORM on a Hugging Face ResNet, a smaller model, a ticket file."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sklearn")

from sparseticket.methods import Ticket  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "hf_resnet_worm.py"


def load_example() -> ModuleType:
    """The example as a module (its CONFIG and MAX_EPOCHS), without running main()."""
    spec = importlib.util.spec_from_file_location("hf_resnet_worm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report_row(output: str, label: str) -> tuple[float, float]:
    """(before, after) of one row of PruneReport.summary()."""
    match = re.search(rf"^{re.escape(label)}\s+([\d,.]+)\s+([\d,.]+)\s", output, re.MULTILINE)
    assert match, f"no {label!r} row in:\n{output}"
    return float(match[1].replace(",", "")), float(match[2].replace(",", ""))


def test_hf_resnet_worm_example(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "out"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = done.stdout
    example = load_example()
    epochs = len(re.findall(r"^epoch \d+: accuracy", output, re.MULTILINE))
    assert 1 <= epochs <= example.MAX_EPOCHS

    params_before, params_after = report_row(output, "params")
    macs_before, macs_after = report_row(output, "MACs")
    latency_before, latency_after = report_row(output, "latency (ms)")
    assert 0 < params_after < params_before and 0 < macs_after < macs_before
    assert latency_before > 0 and latency_after > 0
    model = example.ResNetForImageClassification(example.CONFIG)
    assert params_before == sum(p.numel() for p in model.parameters())
    assert re.search(r"^accuracy [\d.]+ before pruning, [\d.]+ after, [\d.]+ fine-tuned$", output, re.MULTILINE)

    ticket = Ticket.load(tmp_path / "out" / "hf_resnet_worm.safetensors")  # the output dir, relative to the cwd
    batchnorms = {name: module for name, module in model.named_modules()
                  if isinstance(module, torch.nn.BatchNorm2d)}
    assert ticket.method == "worm" and ticket.masks == {}
    assert ticket.hyperparameters["epochs"] == epochs
    found = ticket.hyperparameters["found_epoch"]
    assert found == epochs if found is not None else epochs == example.MAX_EPOCHS  # it stops once drawn
    assert {name: mask.numel() for name, mask in ticket.channel_masks.items()} == {
        name: bn.num_features for name, bn in batchnorms.items()}
    kept = sum(int(mask.sum()) for mask in ticket.channel_masks.values())
    total = sum(mask.numel() for mask in ticket.channel_masks.values())
    coupled_kept, coupled_total = map(int, re.search(r"^channels kept: (\d+)/(\d+)", output, re.MULTILINE).groups())
    assert coupled_total == total and 0 < kept <= coupled_kept < total  # residual adds keep the union
    ticket.apply(model)  # onto a fresh model: pruned channels' gamma and beta zeroed
    for name, mask in ticket.channel_masks.items():
        assert bool((batchnorms[name].weight[~mask] == 0).all()) and bool((batchnorms[name].bias[~mask] == 0).all())
        assert bool((batchnorms[name].weight[mask] == 1).all())  # HF initialises gamma to 1
