"""``python -m sparseticket.demo`` prints its tour (issue 26: it printed nothing and exited 0)."""

from __future__ import annotations

import subprocess
import sys
import tempfile


def test_python_m_demo_prints_the_backends_and_every_op():
    result = subprocess.run([sys.executable, "-m", "sparseticket.demo"], capture_output=True, text=True, timeout=300,
                            cwd=tempfile.gettempdir())  # the installed package, not the source folder
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sparseticket backends: C++ on"), result.stdout
    for op in ("mask_distances", "pack_mask", "unpack_mask", "gemminer_mask", "gemminer_step_"):
        assert f"\n{op} " in result.stdout, result.stdout
    assert "round trip exact: True" in result.stdout
