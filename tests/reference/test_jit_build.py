"""The first-use build of the C++ kernels: its cache key, its cache under concurrent builders, the
reasons it gives when it cannot build, and the check that keeps a mismatched install-time build
from loading. (A whole build takes minutes: .ci/install_shapes.sh runs one from a plain install.)"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from pathlib import Path

import pytest

from sparseticket._kernels import jit
from sparseticket._kernels.cpp import installed_build_mismatch
from sparseticket._kernels.isa import instruction_set
from sparseticket.cli.main import main

COMPLETE = "kernels.so"


def test_the_shipped_sources_are_found_and_every_unit_is_compiled():
    folder = jit.source_folder()
    assert folder is not None and (folder / "module.cpp").is_file()
    repository = Path(__file__).resolve().parents[2] / "csrc"
    assert [path.name for path in jit.sources(folder)] == sorted(path.name for path in repository.glob("*.cpp"))


def test_the_cache_key_follows_everything_the_kernels_depend_on(tmp_path):
    folder = tmp_path / "csrc"
    shutil.copytree(jit.source_folder(), folder, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    cflags, ldflags = ["-O3", "-march=native"], ["-fopenmp"]
    base = jit.cache_key(folder, cflags, ldflags, torch_version="2.13.0", isa="x86_64-a")
    assert jit.cache_key(folder, cflags, ldflags, torch_version="2.13.0", isa="x86_64-a") == base
    changed = {
        "torch": jit.cache_key(folder, cflags, ldflags, torch_version="2.14.1", isa="x86_64-a"),
        "isa": jit.cache_key(folder, cflags, ldflags, torch_version="2.13.0", isa="x86_64-b"),
        "flags": jit.cache_key(folder, ["-O3"], ldflags, torch_version="2.13.0", isa="x86_64-a"),
    }
    header = folder / "common.h"
    header.write_text(header.read_text() + "\n// one more line\n")
    changed["source"] = jit.cache_key(folder, cflags, ldflags, torch_version="2.13.0", isa="x86_64-a")
    assert len({base, *changed.values()}) == 5, changed


def test_portable_builds_drop_march_native(monkeypatch):
    monkeypatch.delenv(jit.PORTABLE_VARIABLE, raising=False)
    assert "-march=native" in jit.compile_flags()[0]
    monkeypatch.setenv(jit.PORTABLE_VARIABLE, "1")
    assert "-march=native" not in jit.compile_flags()[0]


def _slow_build(folder: Path, log: Path) -> None:
    with open(log, "a") as handle:
        handle.write("built\n")
    time.sleep(1.0)  # long enough for the other process to arrive while this one builds
    (folder / COMPLETE).write_bytes(b"\x7fELF")


def _builder_process(root: str, log: str, results: multiprocessing.Queue) -> None:
    folder, built = jit.cached_build(Path(root), "key", lambda into: _slow_build(into, Path(log)), complete=COMPLETE)
    results.put((str(folder), built))


def test_two_processes_building_at_once_build_once_and_share_the_folder(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    log = tmp_path / "builds.log"
    processes = [context.Process(target=_builder_process, args=(str(tmp_path / "cache"), str(log), results))
                 for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    outcomes = sorted(results.get(timeout=10) for _ in processes)
    assert log.read_text() == "built\n"  # one build
    assert outcomes[0][0] == outcomes[1][0] == str(tmp_path / "cache" / "key")
    assert sorted(built for _, built in outcomes) == [False, True]
    leftovers = [path.name for path in (tmp_path / "cache").iterdir() if ".build-" in path.name]
    assert leftovers == [] and (tmp_path / "cache" / "key" / COMPLETE).is_file()


def test_a_failed_build_leaves_no_folder_and_the_next_call_builds_again(tmp_path):
    def failing(folder: Path) -> None:
        (folder / "half.o").write_bytes(b"partial")
        raise RuntimeError("compiler error: expected ';'")

    with pytest.raises(RuntimeError, match="expected ';'"):
        jit.cached_build(tmp_path, "key", failing, complete=COMPLETE)
    assert [path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock")] == []
    folder, built = jit.cached_build(tmp_path, "key", lambda into: (into / COMPLETE).write_bytes(b"ok"),
                                     complete=COMPLETE)
    assert built and (folder / COMPLETE).read_bytes() == b"ok"
    assert jit.cached_build(tmp_path, "key", lambda into: pytest.fail("rebuilt"), complete=COMPLETE) == (folder, False)


def test_a_build_that_produces_nothing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match=f"no {COMPLETE}"):
        jit.cached_build(tmp_path, "key", lambda into: None, complete=COMPLETE)
    assert not (tmp_path / "key").exists()


def test_reasons_not_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv(jit.CACHE_VARIABLE, str(tmp_path))
    monkeypatch.setenv(jit.NO_JIT_VARIABLE, "1")
    module, reason, path = jit.build_kernels(quiet=True)
    assert module is None and path is None and "SPARSETICKET_NO_JIT=1" in reason
    monkeypatch.delenv(jit.NO_JIT_VARIABLE)
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    module, reason, _ = jit.build_kernels(quiet=True)
    assert module is None and "no C++ compiler" in reason and "no-such-compiler-here" in reason
    assert list(tmp_path.iterdir()) == []  # nothing was attempted


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(jit.CACHE_VARIABLE, str(tmp_path / "mine"))
    assert jit.cache_root() == tmp_path / "mine"
    monkeypatch.delenv(jit.CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jit.cache_root() == tmp_path / "xdg" / "sparseticket"


def test_an_install_time_build_for_another_torch_or_cpu_is_not_loaded():
    here = instruction_set()
    assert installed_build_mismatch({"torch": "2.13.0", "isa": here}, "2.13.0", here) == ""
    assert installed_build_mismatch({"torch": "2.13.0", "isa": "portable"}, "2.13.0", here) == ""
    assert "built for torch 2.13.0, this is torch 2.14.1" in installed_build_mismatch(
        {"torch": "2.13.0", "isa": here}, "2.14.1", here)
    assert "another CPU" in installed_build_mismatch({"torch": "2.13.0", "isa": "x86_64-0000"}, "2.13.0", here)


def test_build_command_with_install_time_kernels_builds_nothing(capsys):
    import sparseticket

    assert sparseticket.backends()["cpp"]
    assert main(["build"]) == 0
    assert "nothing to build" in capsys.readouterr().out


def test_importing_a_source_tree_without_its_extension_says_what_to_do(monkeypatch, tmp_path, capsys):
    """Issue 26: running inside the clone imported the source folder, whose _C is not built, with
    only a vague warning. The loader names the folder and the two ways out."""
    import sys

    from sparseticket._kernels import cpp

    (tmp_path / "setup.py").write_text("")
    (tmp_path / "csrc").mkdir()
    (tmp_path / "sparseticket" / "_kernels").mkdir(parents=True)
    monkeypatch.setattr(cpp, "__file__", str(tmp_path / "sparseticket" / "_kernels" / "cpp.py"))
    assert cpp.source_checkout() == tmp_path
    monkeypatch.setitem(sys.modules, "sparseticket._C", None)  # the import fails, as with no build
    monkeypatch.setattr(jit, "build_kernels", lambda: (None, "building them on first use is off", None))
    module, kernels, reason, source = cpp._load()
    assert module is None and kernels is None and source == ""
    err = capsys.readouterr().err
    for words in (f"you are importing the source tree {tmp_path / 'sparseticket'}", "run from another folder",
                  "pip install --no-build-isolation -e ."):
        assert words in err and words in reason, (err, reason)
    monkeypatch.setattr(cpp, "__file__", str(tmp_path / "site-packages" / "sparseticket" / "_kernels" / "cpp.py"))
    assert cpp.source_checkout() is None  # an installed package: no such advice
