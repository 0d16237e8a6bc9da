"""Every specialisation of every Triton kernel (dtypes, aligned or not, optional inputs, every
constexpr branch its launcher can pick) compiles ahead of time for sm_80, sm_90 and sm_100 (no GPU
needed); none spills to local memory; the aligned streaming kernels' PTX uses vectorised (v4)
global loads and vector stores. The registers and load widths of each are printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ARCHES = ("sm_80", "sm_90", "sm_100")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    """Compile in a subprocess (the interpreter must be off), outside the source tree so that
    the installed package is the one imported."""
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "sparseticket.triton_kernels.aot", "--all", "--arch",
         *(arch.removeprefix("sm_") for arch in ARCHES)],
        capture_output=True, text=True, env=environment, check=False, timeout=600,
        cwd=tmp_path_factory.mktemp("aot"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    entries = json.loads(result.stdout)
    for entry in entries:  # the report: registers, spills and load widths of each specialisation
        loads = sorted({op for op in entry["global_memory_ops"] if op.startswith("ld")})
        print(f"{entry['arch']} {entry['kernel']} [{entry['variant']}]: {entry['registers']} registers, "
              f"local {entry['local_bytes']} B, loads {', '.join(loads)}")
    return entries


def test_every_specialisation_compiles_for_every_target(compiled):
    from sparseticket.triton_kernels.aot import all_specs, every_specialisation

    names = {spec["name"] for spec in all_specs()}
    assert len(names) >= 12
    variants = {(spec["name"], spec["variant"]) for spec in every_specialisation()}
    # 24 truncate, 18 + 54 + 24 Gem-Miner, 24 + 2 kth, 4 + 2 masks, 18 + 54 + 3 scale_columns
    assert len(variants) >= 209
    built = {(entry["kernel"], entry["variant"], entry["arch"]) for entry in compiled}
    assert built == {(name, variant, arch) for name, variant in variants for arch in ARCHES}
    assert all(entry["cubin_bytes"] > 0 for entry in compiled)


def test_no_specialisation_spills(compiled):
    for entry in compiled:
        assert entry["registers"] is not None and entry["local_bytes"] is not None, entry  # cuobjdump read it
        assert entry["local_bytes"] == 0 and entry["stack_bytes"] == 0, entry


def test_streaming_kernels_use_vector_loads(compiled):
    streaming = [entry for entry in compiled if entry["streaming"] and entry["aligned"]]
    assert {entry["kernel"] for entry in streaming} >= {
        "truncate_grads_kernel", "mask_distances_kernel", "gemminer_step_kernel",
        "gemminer_mask_kernel", "gemminer_mask_backward_kernel", "digit_histogram_kernel",
        "scale_columns_kernel", "scale_columns_backward_kernel"}
    for entry in streaming:
        assert "ld.global.v4.b32" in entry["global_memory_ops"], entry
        # (scale_columns' backward without a weight gradient writes only per-column sums)
        if entry["kernel"] not in ("mask_distances_kernel", "digit_histogram_kernel") \
                and "grad_weight=False" not in entry["variant"]:
            assert "st.global.v4.b32" in entry["global_memory_ops"], entry


def test_register_use_is_reported_and_sane(compiled):
    for entry in compiled:
        assert entry["registers"] is None or 0 < entry["registers"] <= 255, entry


def test_float_min_max_keep_nan(compiled):
    """NaN policy on the GPU: every float min/max propagates NaN (PTX ``.NaN``), as torch.clamp and
    the C++ kernels do. The interpreter follows NumPy and cannot show this; the PTX can."""
    clamping = [entry for entry in compiled if entry["float_min_max"]]
    assert {entry["kernel"] for entry in clamping} >= {"gemminer_step_kernel"}
    for entry in clamping:
        assert all(".NaN." in op for op in entry["float_min_max"]), entry
