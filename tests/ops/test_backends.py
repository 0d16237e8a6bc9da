"""Backend reporting and switching, and the pure-PyTorch fallback without the C++ extension."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
import torch

import sparseticket
from sparseticket.ops import cpu_backend, kernels_for


def test_backends_reports_compiled_kernels():
    info = sparseticket.backends()
    assert info["cpp"] is True, f"C++ kernels must be built for the tests: {info['cpp_reason']}"
    assert info["triton"] is True and info["triton_interpreter"] is True
    assert info["cpu_backend"] == "cpp"
    assert info["cuda"] == torch.cuda.is_available()


def test_switch_routes_cpu_tensors_and_restores():
    cpu = torch.device("cpu")
    default = kernels_for(cpu)
    with cpu_backend("triton"):
        assert kernels_for(cpu) is sparseticket.triton_kernels
        assert sparseticket.backends()["cpu_backend"] == "triton"
        with cpu_backend("reference"):
            assert kernels_for(cpu) is sparseticket.reference
        assert kernels_for(cpu) is sparseticket.triton_kernels
    assert kernels_for(cpu) is default


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="name must be one of auto, cpp, triton, reference"):
        with cpu_backend("cuda"):
            pass


def _run_python(code: str, **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **environment}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300, check=False, cwd=tempfile.gettempdir())


def test_fallback_without_cpp_warns_once_and_still_computes():
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import sparseticket, sparseticket.ops\n"
        "print(sum('C++ CPU kernels unavailable' in str(w.message) for w in caught))\n"
        "print(sparseticket.backends()['cpu_backend'])\n"
        "print(sparseticket.kth_value([torch.tensor([3.0, 1.0, 2.0])], 1).item())\n"
    )
    result = _run_python(code, SPARSETICKET_DISABLE_CPP="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "reference", "2.0"]


def test_triton_cpu_backend_needs_the_interpreter():
    code = (
        "import sparseticket.ops as ops\n"
        "try:\n"
        "    with ops.cpu_backend('triton'): pass\n"
        "except RuntimeError as error: print(error)\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert "needs Triton's interpreter" in result.stdout


def test_environment_variable_selects_backend():
    code = "import sparseticket; print(sparseticket.backends()['cpu_backend'])"
    assert _run_python(code, SPARSETICKET_CPU_BACKEND="reference").stdout.strip() == "reference"
    bad = _run_python(code, SPARSETICKET_CPU_BACKEND="gpu")
    assert bad.returncode != 0 and "SPARSETICKET_CPU_BACKEND must be one of" in bad.stderr


def test_single_top_level_import_name():
    from importlib.metadata import distribution

    assert distribution("sparseticket").read_text("top_level.txt").split() == ["sparseticket"]
    assert sparseticket.triton_kernels.__name__ == "sparseticket.triton_kernels"
