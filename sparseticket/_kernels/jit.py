"""Builds the C++ CPU kernels on first use when no built ``sparseticket._C`` loads.

A plain ``pip install .``, a wheel from ``pip wheel``/``python -m build`` or an sdist installs no
``_C`` (the isolated build has no torch to build against), and a torch upgrade breaks a ``_C``
built for the old one. Then the kernels are compiled from the C++ sources shipped inside the
package (``sparseticket/_csrc``) with ``torch.utils.cpp_extension.load`` and ninja, once, and
cached under ``$SPARSETICKET_CACHE`` (default ``$XDG_CACHE_HOME/sparseticket`` or
``~/.cache/sparseticket``) in a folder named by a hash of the torch build, the Python ABI, the
sources, the compiler flags and the CPU's instruction set. Later imports load it from there and
build nothing.

Concurrent builders (DDP ranks, pytest-xdist workers) take a file lock; each builds into its own
temporary folder that is renamed into place only when complete, so a cache folder is never half
written. ``SPARSETICKET_NO_JIT=1`` turns the build off; without a compiler or ninja the kernels are
unavailable with the reason said, and the ops use the plain-PyTorch reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch

from sparseticket._kernels.isa import instruction_set

MODULE_NAME = "sparseticket_jit_C"  # the extension's module name (PyInit_ symbol) in every cache folder
NO_JIT_VARIABLE = "SPARSETICKET_NO_JIT"
CACHE_VARIABLE = "SPARSETICKET_CACHE"
PORTABLE_VARIABLE = "SPARSETICKET_PORTABLE"
EXPECTED_MINUTES = "1 to 3 minutes on 2 CPU cores"  # this machine: 76 s idle, 142 s with the other core busy


def source_folder() -> Path | None:
    """Where the C++ sources are: ``sparseticket/_csrc`` when installed, ``csrc/`` in a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "_csrc", package.parent / "csrc"):
        if (candidate / "module.cpp").is_file():
            return candidate
    spec = importlib.util.find_spec("sparseticket._csrc")  # an editable install maps it elsewhere
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0])
        if (candidate / "module.cpp").is_file():
            return candidate
    return None


def sources(folder: Path) -> list[Path]:
    """The translation units to compile, in a fixed order."""
    return sorted(folder.glob("*.cpp"))


def compile_flags() -> tuple[list[str], list[str]]:
    """(C++ flags, linker flags): as the install-time build; ``-march=native`` unless portable."""
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    native = [] if os.environ.get(PORTABLE_VARIABLE) == "1" else ["-march=native"]
    return ["-O3", "-fno-math-errno", *native, *openmp], openmp


def cache_key(folder: Path, cflags: list[str], ldflags: list[str], *, torch_version: str | None = None,
              isa: str | None = None) -> str:
    """Hash of everything the built kernels depend on: torch, Python ABI, sources, flags, CPU ISA."""
    digest = hashlib.sha256()
    parts = [torch_version or torch.__version__, str(torch.version.cuda), sysconfig.get_config_var("SOABI") or "",
             " ".join(cflags), " ".join(ldflags), isa if isa is not None else instruction_set()]
    for part in parts:
        digest.update(part.encode() + b"\0")
    for path in sorted([*folder.glob("*.cpp"), *folder.glob("*.h")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def cache_root() -> Path:
    """``$SPARSETICKET_CACHE``, else ``$XDG_CACHE_HOME/sparseticket``, else ``~/.cache/sparseticket``."""
    explicit = os.environ.get(CACHE_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sparseticket"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes (``fcntl.flock``; a no-op where it is missing:
    the rename into place still keeps a cache folder whole)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_build(root: Path, key: str, build: Callable[[Path], None], *, complete: str,
                 announce: Callable[[], None] = lambda: None) -> tuple[Path, bool]:
    """The folder ``root/key`` holding ``complete``: taken from the cache, or made by ``build(folder)``.

    ``build`` writes into a fresh temporary folder that is renamed to ``root/key`` only once it
    holds ``complete``; concurrent callers wait on a lock and then find it. Returns (folder, whether
    this call built it). A failing ``build`` leaves nothing behind.
    """
    target = root / key
    if (target / complete).is_file():
        return target, False
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{key}.lock"):
        if (target / complete).is_file():  # another process built it while this one waited
            return target, False
        announce()
        temporary = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}.build-"))
        try:
            build(temporary)
            if not (temporary / complete).is_file():
                raise RuntimeError(f"the build left no {complete} in {temporary}")
            if target.exists():  # a half folder from an older version's crash: replace it
                shutil.rmtree(target)
            os.rename(temporary, target)
        finally:
            if temporary.exists():
                shutil.rmtree(temporary, ignore_errors=True)
    return target, True


def import_extension(path: Path) -> ModuleType:
    """Import the built extension at ``path`` (registers the ``sparseticket_cpu`` ops)."""
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[MODULE_NAME] = module
    return module


def why_not() -> str:
    """Why the kernels cannot be built here, or "" when they can."""
    if os.environ.get(NO_JIT_VARIABLE) == "1":
        return f"building them on first use is off ({NO_JIT_VARIABLE}=1)"
    if source_folder() is None:
        return "the C++ sources are not installed with the package"
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler: {compiler!r} is not on PATH (install g++ or clang, or set CXX)"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return ""


def _say(message: str) -> None:
    print(f"sparseticket: {message}", file=sys.stderr, flush=True)


def build_kernels(*, quiet: bool = False) -> tuple[ModuleType | None, str, Path | None]:
    """Load the cached kernels, or build them now; (module or None, why not, the .so's path)."""
    reason = why_not()
    if reason:
        return None, reason, None
    folder = source_folder()
    cflags, ldflags = compile_flags()
    key = cache_key(folder, cflags, ldflags)
    root = cache_root()
    library = f"{MODULE_NAME}.pyd" if sys.platform == "win32" else f"{MODULE_NAME}.so"  # as cpp_extension names it
    started = time.perf_counter()
    loaded: list[ModuleType] = []  # the module load() imported while building (importing it twice fails)

    def announce() -> None:
        if not quiet:
            _say(f"building the C++ CPU kernels for torch {torch.__version__} (once; about {EXPECTED_MINUTES}) "
                 f"into {root / key}")

    def build(into: Path) -> None:
        from torch.utils.cpp_extension import load

        loaded.append(load(name=MODULE_NAME, sources=[str(path) for path in sources(folder)], extra_cflags=cflags,
                           extra_ldflags=ldflags, build_directory=str(into), verbose=False, is_python_module=True))

    try:
        target, built = cached_build(root, key, build, complete=library, announce=announce)
    except Exception as error:  # noqa: BLE001 - a failed build means the reference kernels, said once
        lines = [line for line in str(error).splitlines() if line.strip()]
        return None, f"building the C++ kernels failed ({' / '.join(lines[-3:])[:400]})", None
    path = target / library
    if built and not quiet:
        _say(f"built the C++ CPU kernels in {time.perf_counter() - started:.0f} s; cached in {target}")
    if loaded:  # imported from the temporary folder while building (then renamed: the mapping stays)
        sys.modules[MODULE_NAME] = loaded[0]
        return loaded[0], "", path
    if MODULE_NAME in sys.modules:  # loaded earlier in this process
        return sys.modules[MODULE_NAME], "", path
    try:
        return import_extension(path), "", path
    except (ImportError, OSError) as error:
        return None, f"the cached C++ kernels in {target} do not load ({error}); delete that folder", None
