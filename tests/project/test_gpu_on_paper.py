"""The paper GPU model of benchmarks/gpu_on_paper.py: hand-counted bytes and launches, the time
formula, and that the script writes the PREDICTED tables (run in a subprocess, interpreter off)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_on_paper.py"
_spec = importlib.util.spec_from_file_location("gpu_on_paper", SCRIPT)
paper = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = paper  # dataclasses look their module up here
_spec.loader.exec_module(paper)

BN = [(4,), (8,)]  # two BN layers of 4 and 8 channels


def test_truncate_bytes_per_channel_with_l1():
    # per element: read g 4 + read p 4 + write g 4; keep 1 B per channel
    assert paper.truncate_bytes(BN, per_channel=True, l1=True) == 12 * 12 + 12 == 156
    assert paper.truncate_bytes(BN, per_channel=True, l1=False) == 12 * 8 + 12 == 108


def test_truncate_bytes_per_channel_versus_per_element_keep():
    assert paper.truncate_bytes([(2, 3)], per_channel=True, l1=False) == 6 * 8 + 2
    assert paper.truncate_bytes([(2, 3)], per_channel=False, l1=False) == 6 * 8 + 6


def test_truncate_costs():
    assert paper.truncate_fused(BN, True, True) == paper.Cost(156, 1, 0)  # block table cached on the device
    # per tensor: sign (8 B) + add_ (12 B) + mul_ (8 B) per element, fp32 factor 4 B per channel
    assert paper.truncate_eager(BN, True, True, 4) == paper.Cost(4 * 28 + 16 + 8 * 28 + 32, 6)
    assert paper.truncate_eager(BN, True, False, 4) == paper.Cost(4 * 8 + 16 + 8 * 8 + 32, 2)
    assert paper.eager_loop([(2, 3), (4,)], paper.IMP_TRUNCATE_EAGER) == paper.Cost(10 * 9, 2)


def test_gemminer_step_costs():
    # read scores, momentum, grads, frozen weights 4 B each + flags 1 B; write scores, momentum and the
    # next forward's masked weight 4 B each
    assert paper.gemminer_step_bytes(10) == 290
    assert paper.gemminer_step_fused([(2, 5)]) == paper.Cost(290, 1, 1)
    assert paper.eager_loop([(10,), (3,)], paper.GEMMINER_STEP_EAGER) == paper.Cost(13 * 103, 26)


def test_peer_foreach_costs():
    # one launch per op until 110 tensors or 320 chunks of 65536 elements
    assert paper.foreach_launches([(4,)] * 110) == 1 and paper.foreach_launches([(4,)] * 111) == 2
    assert paper.foreach_launches([(65536 * 320,)]) == 1 and paper.foreach_launches([(65536 * 320 + 1,)]) == 2
    # IMP: _foreach_mul_ with float masks reads g 4 + mask 4, writes g 4
    assert paper.foreach_ops([(2, 3), (4,)], paper.IMP_TRUNCATE_PEER) == paper.Cost(10 * 12, 1)
    # EarlyBird: sign 8 B + add_ 12 B per element, two foreach ops
    assert paper.foreach_ops(BN, paper.EARLYBIRD_L1_PEER) == paper.Cost(12 * 20, 2)
    # Gem-Miner: SGD weight decay 12 + momentum 8 + 12 + update 12, clamp 8, compare 5, count 1 = 58 B
    assert paper.eager_loop([(10,)], paper.GEMMINER_STEP_PEER) == paper.Cost(580, 7)


def test_rows_carry_the_peer_and_the_per_layer_loop():
    prunable, norms = paper.network_parts(paper.networks()["ResNet-50"])
    rows = {row.op.split(" ")[0] + row.op.split(" ")[1]: row for row in paper.network_rows(prunable, norms)}
    step = rows["gemminer_step_(flat"]
    forward_mask = paper.eager_loop(prunable, paper.GEMMINER_MASK_FORWARD_EAGER)  # peers mask in the forward
    assert step.eager == paper.eager_loop([(paper.total(prunable),)], paper.GEMMINER_STEP_PEER) + forward_mask
    assert step.loop == paper.eager_loop(prunable, paper.GEMMINER_STEP_EAGER) + forward_mask
    predicted = paper.predicted_seconds
    assert predicted(step.loop) > predicted(step.eager) > predicted(step.fused)


def test_gemminer_mask_costs():
    # the forward returns the masked weight the score step wrote; backward (weights frozen) 4+1+4 read, 4 write
    assert paper.gemminer_mask_bytes([(2, 3), (4,)]) == 10 * 13
    assert paper.gemminer_mask_fused([(2, 3), (4,)]) == paper.Cost(130, 2, 0)
    forward = paper.eager_loop([(10,)], paper.GEMMINER_MASK_FORWARD_EAGER)
    backward = paper.eager_loop([(10,)], paper.GEMMINER_MASK_BACKWARD_EAGER)
    assert forward + backward == paper.Cost(10 * (17 + 21), 5)


def test_kth_costs():
    assert paper.kth_bytes(100) == 4 * 4 * 100
    assert paper.kth_fused([(60,), (40,)]) == paper.Cost(1600, 8, 2)
    # cat 8N + iota 8N + 4 passes x (12 read + 12 write) N; cat, iota, 5 sort kernels, index
    assert paper.kth_eager([(60,), (40,)]) == paper.Cost(800 + 800 + 9600, 8)


def test_mask_distances_costs():
    # 12 channels: importance 4 + runs 4 read + 4 write per channel; 2 packed bytes written + 4 rows read
    assert paper.mask_distances_bytes(12, 4) == 144 + 2 * 5
    assert paper.mask_distances_bytes(16, 1) == 192 + 2 * 2
    assert paper.mask_distances_fused(BN) == paper.Cost(154, 1, 2)
    # compare 5 B, per row XOR 3 B + sum 1 B, runs 3 + 8 + 9 B per channel
    assert paper.mask_distances_eager(BN, rows=4) == paper.Cost(12 * (5 + 4 * 4 + 20), 12)


def test_predicted_seconds_formula():
    assert paper.predicted_seconds(paper.Cost(3_000_000, 2, 1)) == pytest.approx(1e-6 + 3 * 5e-6)
    row = paper.Row("op", "step", paper.Cost(0, 1), paper.Cost(6_000_000, 1))
    assert paper.speedup(row) == pytest.approx((2e-6 + 5e-6) / 5e-6)


def test_network_shapes():
    prunable, norms = paper.network_parts(paper.networks()["ResNet-18"])
    assert (len(prunable), len(norms)) == (21, 20)
    bert = paper.bert_base_shapes()
    assert 108e6 < sum(paper.total(part) for part in bert.values()) < 111e6
    prunable, norms = paper.network_parts(bert)
    assert (len(prunable), len(norms)) == (73, 25)
    rows = paper.network_rows(prunable, norms)
    assert len(rows) == 9
    deferred = next(row for row in rows if row.op.startswith("gemminer_step_from_masked_grads_"))
    # the deferred backward drops the mask backward's pass: 13 bytes a score (grad, weight, flag; score gradient)
    dropped = deferred.eager.bytes - deferred.fused.bytes
    assert dropped == paper.gemminer_mask_bytes(prunable) == 13 * paper.total(prunable)
    assert deferred.fused.launches == len(prunable)  # Triton: one launch per layer


def test_vector_width():
    operations = ["ld.global.b8", "ld.global.v4.b32", "st.global.b32"]
    assert paper.vector_width(operations, "ld") == "v4"
    assert paper.vector_width(operations, "st") == "scalar"
    assert paper.vector_width(["ld.global.v2.b32"], "st") == "none"


def test_main_writes_predicted_markdown(tmp_path):
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    out = tmp_path / "GPU_ON_PAPER.md"
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True,
                            text=True, env=environment, cwd=tmp_path, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert "PREDICTED" in text
    for name in ("ResNet-18", "ResNet-50", "BERT-base"):
        assert f"### {name}" in text
    assert "| truncate_grads_kernel | yes |" in text
    assert "PTX evidence skipped" not in text
