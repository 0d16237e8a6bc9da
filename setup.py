"""Build and install sparseticket.

The C++ CPU kernels in ``csrc/`` are compiled as a PyTorch C++ extension (``sparseticket._C``,
ninja, -O3, -march=native, OpenMP). Install with ``pip install --no-build-isolation .`` so the extension is
built against the torch already installed. If the extension cannot be built (no compiler, no
torch at build time), the package still installs as pure Python and falls back to the plain
PyTorch reference kernels on CPU, saying so once at import.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

PACKAGES = [*find_packages(include=["sparseticket", "sparseticket.*"]), "sparseticket.triton_kernels"]
PACKAGE_DIR = {"sparseticket.triton_kernels": "triton_kernels"}


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
                      "without them (CPU ops use the PyTorch reference)", file=sys.stderr)

    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    # The kernels are built on the machine that runs them: let gcc use its vector units (AVX2/AVX-512;
    # 2.3x on gemminer_step_ here). SPARSETICKET_PORTABLE=1 builds for the baseline ISA instead
    # (for a wheel that will run on other CPUs).
    native = [] if os.environ.get("SPARSETICKET_PORTABLE") == "1" else ["-march=native"]
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
    ext_modules=extensions,
    cmdclass=commands,
)
