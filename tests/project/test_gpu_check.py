"""benchmarks/gpu_check.py --dry-run (CPU, Triton's interpreter, tiny sizes) runs every part and
writes its report, so the one-shot GPU check cannot rot between GPU runs."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_dry_run_passes_and_writes_its_report(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("gpu_check DRY-RUN:") and "correctness=ok" in summary
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    for part in ("build", "correctness", "no_host_sync", "speed", "whole_step"):
        assert report[part]["status"] == "ok", (part, report[part])
    assert report["cuda_graphs"]["status"] == "skipped"
    assert report["correctness"]["checked"] >= 70  # every op, three dtypes, odd sizes, lists
    assert {row["op"] for row in report["speed"]["rows"]} == {
        "masked SGD step (IMP)", "EB L1 + WORM scale", "IMP masked grads", "Gem-Miner score step", "global kth value",
        "EB mask + distances", "Gem-Miner masked weights (forward)"}
    assert "DRY RUN" in (tmp_path / "RESULTS_GPU.md").read_text()
