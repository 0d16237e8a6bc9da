"""Ahead-of-time compile of every Triton kernel for a GPU target, without a GPU.

``python -m sparseticket.triton_kernels.aot --arch 80 90`` prints, per kernel and target, the
global load/store instructions of its PTX (their vector width shows whether loads are
vectorised), its registers and shared memory, as JSON. Needs triton's CUDA backend (ptxas ships
with triton); must run without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget

from sparseticket.triton_kernels import gemminer, kth, masks, truncate

KERNEL_MODULES = (truncate, masks, kth, gemminer)
_MEMORY_OP = re.compile(r"\b((?:ld|st)\.global(?:\.[a-z0-9]+)*)")
# Float min/max instructions: without ".NaN" they return the other operand when one is NaN.
_FLOAT_MIN_MAX = re.compile(r"\b((?:min|max)(?:\.[A-Za-z0-9]+)*\.(?:f16|f32|f64|bf16)(?:x2)?)\b")


def cubin_registers(cubin: bytes) -> int | None:
    """Registers per thread of a cubin, read by the cuobjdump that ships with triton (None if absent)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", handle.name],
                               capture_output=True, text=True, check=False).stdout
    found = re.search(r"REG:(\d+)", usage)
    return int(found.group(1)) if found else None


def all_specs() -> list[dict]:
    """The AOT specs of every kernel module."""
    return [spec for module in KERNEL_MODULES for spec in module.AOT_SPECS]


def compile_kernel(spec: dict, arch: int) -> dict:
    """Compile one kernel for ``sm_<arch>``; summarise its PTX and resources."""
    source = triton.compiler.ASTSource(
        fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"], attrs=spec["attrs"])
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
    ptx = compiled.asm["ptx"]
    return {
        "kernel": spec["name"],
        "arch": f"sm_{arch}",
        "streaming": spec["streaming"],
        "global_memory_ops": sorted(set(_MEMORY_OP.findall(ptx))),
        "float_min_max": sorted(set(_FLOAT_MIN_MAX.findall(ptx))),
        "vector_loads": ".v4." in "".join(op for op in _MEMORY_OP.findall(ptx) if op.startswith("ld")),
        "registers": cubin_registers(compiled.asm["cubin"]),
        "shared_bytes": compiled.metadata.shared,
        "num_warps": compiled.metadata.num_warps,
        "cubin_bytes": len(compiled.asm["cubin"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="SM versions, e.g. 80 90")
    arguments = parser.parse_args()
    results = [compile_kernel(spec, arch) for arch in arguments.arch for spec in all_specs()]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
