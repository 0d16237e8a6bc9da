"""The house rules of DESIGN.md section 2, checked on the source: layers import downward only, no
import cycles, methods reach kernels through ``sparseticket.ops``, one atomic file write, one module
that drives IMP's rounds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sparseticket"

# bottom to top: a module may import its own layer and the ones below
LAYERS = [
    ("sparseticket.files", "sparseticket.reference", "sparseticket._kernels", "sparseticket.triton_kernels",
     "sparseticket._C"),
    ("sparseticket.ops",),
    ("sparseticket.methods",),
    ("sparseticket.builtin",),
    ("sparseticket.driver", "sparseticket.deploy"),
    ("sparseticket.reporting",),
    ("sparseticket.integrations",),
    ("sparseticket.cli", "sparseticket.studies", "sparseticket.demo", "sparseticket.__main__"),
]
FACADE = "sparseticket"  # the package itself re-exports (the methods and the driver lazily, by name)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "triton_kernels":  # installed as sparseticket.triton_kernels
        parts.insert(0, "sparseticket")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "triton_kernels").rglob("*.py")]
    return {_module_name(path): path for path in files}


SOURCES = _sources()
KNOWN = set(SOURCES) | {"sparseticket._C"}  # the C++ extension


def _imports(name: str, path: Path) -> set[str]:
    """The sparseticket modules ``name`` imports anywhere in its source (function bodies included)."""
    package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = name.split(".") if package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in KNOWN else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in KNOWN:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in SOURCES.items()}


def _layer(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/index.md's layout)")


def test_every_module_has_a_layer():
    for module in SOURCES:
        if module != FACADE:
            _layer(module)


def test_layers_import_downward_only():
    upward = [f"{module} -> {target}" for module, targets in GRAPH.items() if module != FACADE
              for target in targets if target != FACADE and _layer(target) > _layer(module)]
    assert upward == []


def test_no_import_cycles():
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])
    assert cycles == []


def _files_under(*folders: str) -> list[Path]:
    return [path for folder in folders for path in (ROOT / folder).rglob("*.py")]


def test_methods_reach_kernels_through_the_public_ops_only():
    offenders = []
    for path in _files_under("sparseticket/methods"):
        text = path.read_text()
        if re.search(r"torch\.ops\.", text) or re.search(r"sparseticket\.ops\._|from sparseticket\.ops import _", text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_only_the_ops_layer_calls_torch_ops():
    outside = [str(path.relative_to(ROOT)) for path in _files_under("sparseticket")
               if "torch.ops." in path.read_text()
               and not str(path.relative_to(ROOT)).startswith(("sparseticket/ops/", "sparseticket/_kernels/"))]
    assert outside == []


def test_one_atomic_file_write_in_the_package():
    """Files are written by files.atomic_write alone: the one os.replace, the one mkstemp (the first-use
    build renames a whole folder into place, jit.cached_build, which is not a file write)."""
    def lines_with(pattern: str) -> list[str]:
        return [f"{path.relative_to(ROOT)}:{number}" for path in _files_under("sparseticket")
                for number, line in enumerate(path.read_text().splitlines(), 1)
                if re.search(pattern, line) and not line.lstrip().startswith("#")]

    for pattern in (r"os\.replace\(", r"mkstemp\("):
        found = lines_with(pattern)
        assert len(found) == 1 and found[0].startswith("sparseticket/files.py:"), (pattern, found)


@pytest.mark.parametrize("call", ["prune_round(", ".capture(", ".rewind("])
def test_imp_rounds_are_driven_in_one_module(call):
    users = {str(path.relative_to(ROOT)) for path in _files_under("sparseticket")
             if not str(path.relative_to(ROOT)).startswith("sparseticket/methods/") and call in path.read_text()}
    assert users == {"sparseticket/driver/jobs.py"}
