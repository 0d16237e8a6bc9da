"""Build and install sparseticket.

The C++ CPU kernels in ``csrc/`` are compiled as a PyTorch C++ extension (``sparseticket._C``,
ninja, -O3, -march=native, OpenMP) when torch is importable at build time: ``pip install
--no-build-isolation .``, the fast path. Beside it goes ``_C_build.json`` (the torch version and
the CPU instruction set it was built for): a ``_C`` built for another torch or another CPU is not
loaded (no undefined symbols, no SIGILL on an older CPU). Otherwise (an isolated build with no
torch, no compiler) the package installs as pure Python. Either way the C++ sources ship inside
the package (``sparseticket/_csrc``), and the kernels are then built on first use and cached
(``sparseticket._kernels.jit``).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import sys

from setuptools import find_packages, setup

PACKAGES = [*find_packages(include=["sparseticket", "sparseticket.*"]), "sparseticket.triton_kernels",
            "sparseticket._csrc"]
PACKAGE_DIR = {"sparseticket.triton_kernels": "triton_kernels", "sparseticket._csrc": "csrc"}
PACKAGE_DATA = {"sparseticket._csrc": ["*.cpp", "*.h"]}  # the sources the first-use build compiles


def _instruction_set() -> str:
    """sparseticket/_kernels/isa.py's answer, read by path (the package cannot be imported here)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sparseticket", "_kernels", "isa.py")
    spec = importlib.util.spec_from_file_location("_sparseticket_isa", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.instruction_set()


def _extension_build() -> tuple[list, dict]:
    """The C++ extension and its build command, or nothing when torch or a compiler is missing."""
    if os.environ.get("SPARSETICKET_NO_EXTENSION") == "1":
        print("sparseticket: SPARSETICKET_NO_EXTENSION=1, installing without the C++ kernels")
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("sparseticket: torch is not importable at build time (use --no-build-isolation); "
              "installing without the C++ kernels", file=sys.stderr)
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """Builds the extension, but never fails the install when the compiler does."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as error:  # noqa: BLE001 - any build failure means pure Python
                print(f"sparseticket: building the C++ kernels failed ({error}); installing "
                      "without them (they are built on first use instead)", file=sys.stderr)
                return
            import torch

            for extension in self.extensions:  # what the built _C needs to be loadable
                built = {"torch": torch.__version__, "isa": "portable" if portable else _instruction_set()}
                target = os.path.join(os.path.dirname(self.get_ext_fullpath(extension.name)), "_C_build.json")
                with open(target, "w") as handle:
                    json.dump(built, handle)

    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    # The kernels are built on the machine that runs them: let gcc use its vector units (AVX2/AVX-512;
    # 2.3x on gemminer_step_ here). SPARSETICKET_PORTABLE=1 builds for the baseline ISA instead
    # (for a wheel that will run on other CPUs).
    portable = os.environ.get("SPARSETICKET_PORTABLE") == "1"
    native = [] if portable else ["-march=native"]
    extension = CppExtension(
        name="sparseticket._C",
        sources=sorted(glob.glob("csrc/*.cpp")),
        extra_compile_args={"cxx": ["-O3", "-fno-math-errno", *native, *openmp]},
        extra_link_args=openmp,
    )
    return [extension], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


extensions, commands = _extension_build()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data=PACKAGE_DATA,
    ext_modules=extensions,
    cmdclass=commands,
)
