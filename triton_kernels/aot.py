"""Ahead-of-time compile of every Triton kernel for a GPU target, without a GPU.

``python -m sparseticket.triton_kernels.aot --arch 80 90 [--all]`` prints, per kernel and target,
the global load/store instructions of its PTX (their vector width shows whether loads are
vectorised), its registers, local memory (spills) and shared memory, as JSON. ``--all`` compiles
every specialisation the launchers can pick (dtypes, aligned or not, optional inputs, every
constexpr branch: ``specialisations()``), not one per kernel. Needs triton's CUDA backend (ptxas
ships with triton); must run without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

from sparseticket.triton_kernels import columns, gemminer, kth, masks, optim, truncate

KERNEL_MODULES = (truncate, masks, kth, gemminer, columns, optim)
_MEMORY_OP = re.compile(r"\b((?:ld|st)\.global(?:\.[a-z0-9]+)*)")
# Float min/max instructions: without ".NaN" they return the other operand when one is NaN.
_FLOAT_MIN_MAX = re.compile(r"\b((?:min|max)(?:\.[A-Za-z0-9]+)*\.(?:f16|f32|f64|bf16)(?:x2)?)\b")


def cubin_resources(cubin: bytes) -> dict[str, int | None]:
    """Registers per thread, local memory (spills, stack) of a cubin, read by the cuobjdump that
    ships with triton (values None if it is absent)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return {"registers": None, "local_bytes": None, "stack_bytes": None}
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", handle.name],
                               capture_output=True, text=True, check=False).stdout

    def field(name: str) -> int | None:
        found = re.search(rf"\b{name}:(\d+)", usage)
        return int(found.group(1)) if found else None

    return {"registers": field("REG"), "local_bytes": field("LOCAL"), "stack_bytes": field("STACK")}


def all_specs() -> list[dict]:
    """The AOT specs of every kernel module (one representative specialisation each)."""
    return [spec for module in KERNEL_MODULES for spec in module.AOT_SPECS]


FLOATS = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}
BOOLS = (True, False)


def _promoted(first: str, second: str) -> str:
    """The float type torch promotes two of FLOATS to (float16 with bfloat16 is float32)."""
    return first if first == second else "fp32"


def _variant(spec: dict, label: str, *, constexprs: dict | None = None, pointers: dict | None = None,
             aligned: bool = True, tables: bool = False) -> dict:
    """``spec`` with some constexprs and pointer element types replaced. Unaligned variants carry
    no 16-byte divisibility hint on their data pointers (the JIT would not infer one); kernels that
    read their data through pointer ``tables`` keep the hints (the tables themselves are aligned)."""
    signature = dict(spec["signature"])
    for argument, element in (pointers or {}).items():
        signature[argument] = f"*{element}"
    return {**spec, "signature": signature, "constexprs": {**spec["constexprs"], **(constexprs or {})},
            "attrs": spec["attrs"] if aligned or tables else {}, "variant": label, "aligned": aligned}


def specialisations(spec: dict) -> list[dict]:
    """Every specialisation of one kernel that its launcher can pick."""
    name, out = spec["name"], []
    if name == "truncate_grads_kernel":
        for grad in FLOATS:
            for has_l1 in BOOLS:
                for param in (FLOATS if has_l1 else [grad]):  # without L1 the launcher passes grads' dtype
                    for aligned in BOOLS:
                        out.append(_variant(spec, f"grad={grad} param={param} l1={has_l1} aligned={aligned}",
                                            constexprs={"GRAD_DTYPE": FLOATS[grad], "PARAM_DTYPE": FLOATS[param],
                                                        "HAS_L1": has_l1, "ALIGNED": aligned},
                                            aligned=aligned, tables=True))
    elif name == "gemminer_mask_kernel":
        for weight in FLOATS:
            for scores in FLOATS:
                for aligned in BOOLS:
                    out.append(_variant(spec, f"weight={weight} scores={scores} aligned={aligned}",
                                        constexprs={"ALIGNED": aligned}, aligned=aligned,
                                        pointers={"weight": weight, "scores": scores, "out": weight}))
    elif name == "gemminer_mask_backward_kernel":
        for grad in FLOATS:
            for scores in FLOATS:
                for need_weight, need_scores in ((True, True), (True, False), (False, True)):
                    for aligned in BOOLS:
                        # an output not needed is passed as grad (the launcher's placeholder)
                        out.append(_variant(
                            spec, f"grad={grad} scores={scores} weight_grad={need_weight} "
                                  f"scores_grad={need_scores} aligned={aligned}",
                            constexprs={"NEED_WEIGHT": need_weight, "NEED_SCORES": need_scores, "ALIGNED": aligned},
                            aligned=aligned,
                            pointers={"grad": grad, "weight": grad, "scores": scores, "grad_weight": grad,
                                      "grad_scores": scores if need_scores else grad}))
    elif name == "gemminer_step_kernel":
        for dtype in FLOATS:
            # without masked weights the launcher passes scores as their (unread) placeholders
            for weights in (None, *FLOATS):
                for aligned in BOOLS:
                    element = weights or dtype
                    out.append(_variant(spec, f"dtype={dtype} masked={weights} aligned={aligned}",
                                        constexprs={"HAS_MASKED": weights is not None, "ALIGNED": aligned,
                                                    "GRAD_OF_MASKED": False},
                                        aligned=aligned,
                                        pointers={"scores": dtype, "grads": dtype, "momentum_buffer": dtype,
                                                  "weights": element, "masked_out": element}))
            # gemminer_step_from_masked_grads_: the gradient is the masked weights' (weights' dtype), with or
            # without masked_out (scores are its placeholder then)
            for weights in FLOATS:
                for has_masked in BOOLS:
                    for aligned in BOOLS:
                        out.append(_variant(spec, f"dtype={dtype} grad_of_masked weights={weights} "
                                                  f"masked_out={has_masked} aligned={aligned}",
                                            constexprs={"HAS_MASKED": has_masked, "ALIGNED": aligned,
                                                        "GRAD_OF_MASKED": True},
                                            aligned=aligned,
                                            pointers={"scores": dtype, "grads": weights, "momentum_buffer": dtype,
                                                      "weights": weights,
                                                      "masked_out": weights if has_masked else dtype}))
    elif name == "digit_histogram_kernel":
        for dtype in FLOATS:
            for shift in (24, 16, 8, 0):
                for aligned in BOOLS:
                    out.append(_variant(spec, f"dtype={dtype} shift={shift} aligned={aligned}",
                                        constexprs={"DTYPE": FLOATS[dtype], "SHIFT": shift, "ALIGNED": aligned},
                                        aligned=aligned, tables=True))
    elif name == "select_digit_kernel":
        out = [_variant(spec, f"final={final}", constexprs={"FINAL": final}) for final in BOOLS]
    elif name == "scale_columns_kernel":
        for weight in FLOATS:
            for coefficients in FLOATS:
                for aligned in BOOLS:
                    out.append(_variant(spec, f"weight={weight} coefficients={coefficients} aligned={aligned}",
                                        constexprs={"ALIGNED": aligned}, aligned=aligned,
                                        pointers={"weight": weight, "coefficients": coefficients,
                                                  "out": _promoted(weight, coefficients)}))
    elif name == "scale_columns_backward_kernel":
        for weight in FLOATS:
            for coefficients in FLOATS:
                for need_weight, need_coefficients in ((True, True), (True, False), (False, True)):
                    for aligned in BOOLS:
                        # grad has the forward output's (promoted) dtype; without a weight gradient the
                        # launcher passes weight as grad_weight's placeholder (same dtype)
                        out.append(_variant(
                            spec, f"weight={weight} coefficients={coefficients} grad_weight={need_weight} "
                                  f"grad_coefficients={need_coefficients} aligned={aligned}",
                            constexprs={"NEED_WEIGHT": need_weight, "NEED_COEFFICIENTS": need_coefficients,
                                        "ALIGNED": aligned},
                            aligned=aligned,
                            pointers={"grad": _promoted(weight, coefficients), "weight": weight,
                                      "coefficients": coefficients, "grad_weight": weight}))
    elif name == "scale_columns_reduce_kernel":
        out = [_variant(spec, f"coefficients={coefficients}", pointers={"grad_coefficients": coefficients})
               for coefficients in FLOATS]
    elif name in ("masked_sgd_kernel", "masked_adam_kernel"):
        # momentum: 0 none, 1 first step (buffer written, not read), 2 blend; AMSGrad reads/writes maxima;
        # masks: none, bool (one byte per entry) or packed (one bit per entry)
        state, values = ("MOMENTUM", (0, 1, 2)) if name == "masked_sgd_kernel" else ("AMSGRAD", BOOLS)
        masks = (("False", False, False), ("True", True, False), ("packed", True, True))
        for dtype in FLOATS:
            for mask, has_mask, packed in masks:
                for value in values:
                    for aligned in BOOLS:
                        out.append(_variant(spec, f"dtype={dtype} mask={mask} {state.lower()}={value} "
                                                  f"aligned={aligned}",
                                            constexprs={"DTYPE": FLOATS[dtype], "HAS_MASK": has_mask, state: value,
                                                        "ALIGNED": aligned, "PACKED": packed},
                                            aligned=aligned, tables=True))
    elif name == "mask_distances_kernel":
        out = [_variant(spec, f"runs={runs} aligned={aligned}", constexprs={"HAS_RUNS": runs, "ALIGNED": aligned},
                        aligned=aligned) for runs in BOOLS for aligned in BOOLS]
    else:
        out = [_variant(spec, "only")]
    return out


def every_specialisation() -> list[dict]:
    """``specialisations()`` of every kernel."""
    return [variant for spec in all_specs() for variant in specialisations(spec)]


def compile_kernel(spec: dict, arch: int) -> dict:
    """Compile one kernel for ``sm_<arch>``; summarise its PTX and resources."""
    source = triton.compiler.ASTSource(
        fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"], attrs=spec["attrs"])
    # "options": the launcher's compile options (e.g. enable_fp_fusion=False), if it passes any
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=spec.get("options"))
    ptx = compiled.asm["ptx"]
    return {
        "kernel": spec["name"],
        "variant": spec.get("variant", "representative"),
        "aligned": spec.get("aligned", True),
        "arch": f"sm_{arch}",
        "streaming": spec["streaming"],
        "global_memory_ops": sorted(set(_MEMORY_OP.findall(ptx))),
        "float_min_max": sorted(set(_FLOAT_MIN_MAX.findall(ptx))),
        "vector_loads": ".v4." in "".join(op for op in _MEMORY_OP.findall(ptx) if op.startswith("ld")),
        **cubin_resources(compiled.asm["cubin"]),
        "shared_bytes": compiled.metadata.shared,
        "num_warps": compiled.metadata.num_warps,
        "cubin_bytes": len(compiled.asm["cubin"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="SM versions, e.g. 80 90")
    parser.add_argument("--all", action="store_true", help="every specialisation, not one per kernel")
    arguments = parser.parse_args()
    specs = every_specialisation() if arguments.all else all_specs()
    results = [compile_kernel(spec, arch) for arch in arguments.arch for spec in specs]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
