"""The README and docs/*.md: their Python examples run as written and do what they say, their links
resolve, the README's headline figures are still in the files that measure them, docs/index.md's
layout matches the tree, and the README's commands are the ones CI runs.

Every ```python block runs: a page's blocks in order, as one script, in a fresh namespace and a
temporary working directory (line numbers in a traceback are the page's). A block that must not
run is preceded by ``<!-- not-run: reason -->``; command lines and transcripts are ```text blocks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
NOT_RUN = re.compile(r"<!--\s*not-run:(?P<reason>.*?)-->")
FENCE = re.compile(r"^```(?P<language>[\w+-]*)\s*$")
# what a runnable block may not need: several processes, a GPU, torchvision (none is in CI's test run)
NEEDS_MORE = ("torchrun", "torch.distributed", "init_process_group", "torchvision", ".cuda(", '"cuda"', "'cuda'")


@dataclass
class Block:
    language: str
    first_line: int  # 0-based index of the block's first code line in the page
    lines: list[str]
    not_run: str | None  # the reason given by a preceding <!-- not-run: ... -->, else None


def fenced_blocks(page: Path) -> list[Block]:
    """The page's fenced code blocks, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page.name}:{index + 1}: code fence never closed"
        before = next((line.strip() for line in reversed(lines[:index]) if line.strip()), "")
        marker = NOT_RUN.fullmatch(before)
        blocks.append(Block(opening["language"], index + 1, lines[index + 1:end],
                            marker["reason"].strip() if marker else None))
        index = end + 1
    return blocks


def runnable(page: Path) -> list[Block]:
    return [block for block in fenced_blocks(page) if block.language == "python" and block.not_run is None]


def scripts(page: Path) -> list[str]:
    """What runs, with the page's line numbers: the README's blocks one by one, each on its own (a
    reader copies one snippet), a docs page's blocks in order as one script."""
    blocks = runnable(page)
    groups = [[block] for block in blocks] if page == README else [blocks]
    texts = []
    for group in groups:
        lines = [""] * len(page.read_text(encoding="utf-8").splitlines())
        for block in group:
            lines[block.first_line:block.first_line + len(block.lines)] = block.lines
        texts.append("\n".join(lines) + "\n")
    return texts


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# ------------------------------------------------------------------ what each page's examples must leave behind
def check_readme(ns: dict, cwd: Path) -> None:
    from sparseticket import Ticket

    method, small, model = ns["method"], ns["small"], ns["model"]
    assert method.drawn and 5 <= method.found_epoch <= 20  # the queue must be full: 5 epochs at least
    saved = Ticket.load(cwd / "ticket.safetensors")
    assert saved.method == "worm" and saved.channel_masks.keys() == method.channel_mask().keys()
    assert all(torch.equal(saved.channel_masks[key], mask) for key, mask in method.channel_mask().items())
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert method.prune_report.params_after < method.prune_report.params_before
    eb, trainer = ns["eb"], ns["trainer"]
    assert eb.drawn and trainer.current_epoch == eb.found_epoch  # training stopped at the draw
    lightning_ticket = Ticket.load(cwd / "lightning" / "ticket.safetensors")
    assert lightning_ticket.method == "earlybird" and lightning_ticket.hyperparameters["found_epoch"] == eb.found_epoch


def check_usage(ns: dict, cwd: Path) -> None:
    from sparseticket import Ticket

    found = ns["found"]  # the driver's result
    assert found.ticket.method == "gemminer" and found.ticket.density() == pytest.approx(0.2, abs=1e-3)
    assert found.search_epochs == 6 and found.finetune_epochs == 2 and 0 <= found.accuracy <= 1
    weights = dict(found.model.named_parameters())
    assert all(not weights[key].detach()[~mask].any() for key, mask in found.ticket.masks.items())
    eb = ns["eb"]
    assert eb.epoch == 2 and not eb.drawn and eb.found_epoch is None  # 2 epochs cannot fill a queue of 5
    kept = sum(int(mask.sum()) for mask in eb.channel_mask().values())
    assert 0 < kept < eb.channels
    assert sum(p.numel() for p in ns["small"].parameters()) < sum(p.numel() for p in ns["net"].parameters())
    ticket = ns["ticket"]
    assert ticket.method == "gemminer" and ticket.density() == pytest.approx(0.05, abs=0.005)
    assert Ticket.load(ns["path"]).masks.keys() == ticket.masks.keys()
    assert 0.5 <= ns["imp"].density < 0.8  # two rounds of 20%: 0.8, then 0.64
    assert ns["snip"].density() == pytest.approx(0.05, abs=0.005)
    loaded, fresh = ns["loaded"], ns["fresh"]
    assert loaded.method == "gemminer" and loaded.density() == ticket.density()
    for key, mask in loaded.masks.items():
        assert not dict(fresh.named_parameters())[key][~mask].any(), key  # fine-tuning kept pruned weights at 0


def check_ops(ns: dict, cwd: Path) -> None:
    assert ns["distances"].numel() == 0  # empty history: no distances yet
    assert ns["mask"].tolist() == [True, False, True]
    flat, n = ns["flat"], ns["n"]
    assert ns["threshold"] == torch.kthvalue(flat, int(n * 0.5) + 1).values  # kth_value is 0-based
    assert ns["top_digits"].shape == (256,) and int(ns["top_digits"].sum()) == n
    assert torch.equal(ns["packed"], ns["st"].pack_mask(flat > ns["threshold"]))
    assert 0 <= ns["kept"] <= ns["scores"].numel()
    assert ns["scores"].grad is not None


def check_integrations(ns: dict, cwd: Path) -> None:
    from sparseticket import Ticket

    earlybert, bert, smaller = ns["earlybert"], ns["bert"], ns["smaller"]
    assert earlybert.drawn and ns["ticket"].method == "earlybird"
    assert sum(p.numel() for p in smaller.parameters()) < sum(p.numel() for p in bert.parameters())
    eb = ns["eb"]
    assert eb.drawn and ns["trainer"].current_epoch == eb.found_epoch
    assert Ticket.load(cwd / "lightning_out" / "ticket.safetensors").hyperparameters["found_epoch"] == eb.found_epoch


def check_contributing(ns: dict, cwd: Path) -> None:
    from sparseticket import Method, Ticket

    late = ns["late"]  # the recipe's method, registered and run through the driver
    method = late.job.method
    assert isinstance(method, Method) and late.ticket.method == "late_magnitude" and late.search_epochs == 3
    # independent reference: torch.topk over the searched weights' magnitudes, all layers at once
    magnitudes = torch.cat([weight.tensor.detach().abs().flatten() for weight in method.weights])
    kept = torch.cat([late.ticket.masks[weight.name].flatten() for weight in method.weights])
    keep = round(0.2 * magnitudes.numel())
    assert kept[magnitudes.topk(keep).indices].all() and int(kept.sum()) == keep  # no ties in float weights
    assert ns["exit_code"] == 0  # the command line took --method late_magnitude
    (run,) = (cwd / "runs").iterdir()
    assert Ticket.load(run / "ticket.safetensors").method == "late_magnitude"
    assert "toy op: Triton kernel (interpreter) equals the reference" in ns["toy"].stdout, ns["toy"].stderr[-2000:]


CHECKS: dict[str, Callable[[dict, Path], None]] = {
    "README.md": check_readme,
    "docs/usage.md": check_usage,
    "docs/ops.md": check_ops,
    "docs/integrations.md": check_integrations,
    "docs/contributing.md": check_contributing,
}


@pytest.fixture
def one_thread():
    """One torch thread: the suite runs on 2 shared cores, and 2 threads per worker there is several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("page", [page for page in PAGES if runnable(page)], ids=name)
def test_python_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    monkeypatch.chdir(tmp_path)
    from sparseticket.methods import BASELINES, METHODS

    saved = [(registry, dict(registry)) for registry in (METHODS, BASELINES)]
    merged: dict = {}
    try:
        for text in scripts(page):
            namespace: dict = {"__name__": "__docs__"}  # a fresh one per script: nothing carries over
            exec(compile(text, str(page), "exec"), namespace)  # noqa: S102
            merged.update(namespace)
        CHECKS[name(page)](merged, tmp_path)
    finally:  # a page that registers a method (contributing.md) leaves no trace
        for registry, entries in saved:
            registry.clear()
            registry.update(entries)


def test_every_page_with_examples_has_checks() -> None:
    """A page whose examples disappear (or that gains some) must change the checks above too."""
    assert {name(page) for page in PAGES if runnable(page)} == set(CHECKS)


def test_not_run_blocks_say_why_and_runnable_blocks_stay_local() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        blocks = fenced_blocks(page)
        for block in blocks:
            if block.not_run is not None:
                assert block.not_run, f"{name(page)}:{block.first_line}: <!-- not-run: --> needs a reason"
                assert block.language == "python", f"{name(page)}:{block.first_line}: not-run marks a python block"
        markers = sum(bool(NOT_RUN.fullmatch(line.strip())) for line in text.splitlines())
        assert markers == sum(block.not_run is not None for block in blocks), \
            f"{name(page)}: a <!-- not-run: ... --> line that does not precede a code block"
        for block in runnable(page):
            code = "\n".join(block.lines)
            needs = [word for word in NEEDS_MORE if word in code]
            assert not needs, (f"{name(page)}:{block.first_line}: a runnable block uses {needs}; "
                               "make it ```text or mark it <!-- not-run: reason -->")


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def prose(page: Path) -> str:
    """The page without its code blocks."""
    lines = page.read_text(encoding="utf-8").splitlines()
    for block in fenced_blocks(page):
        lines[block.first_line - 1:block.first_line + len(block.lines) + 1] = [""] * (len(block.lines) + 2)
    return "\n".join(lines)


def test_relative_links_resolve() -> None:
    for page in PAGES:
        text = prose(page)
        for link in LINK.finditer(text):
            target = link["target"]
            if re.match(r"[a-z]+:", target):
                continue
            path_part, _, anchor = target.partition("#")
            path = (page.parent / path_part).resolve() if path_part else page
            assert path.exists(), f"{name(page)}: link to {target}: no such file"
            if anchor and path.suffix == ".md":
                headings = {slug(line.lstrip("#")) for line in path.read_text(encoding="utf-8").splitlines()
                            if line.startswith("#")}
                assert anchor in headings, f"{name(page)}: link to {target}: no such heading in {path.name}"


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_headline_figures_are_in_the_files_that_measure_them() -> None:
    """Each decimal figure of a headline bullet appears in a file that bullet links to (a figure that
    went stale when the benchmark or the claims run wrote new results fails here)."""
    bullets = re.split(r"\n- ", section(README.read_text(encoding="utf-8"), "Headline numbers"))[1:]
    assert bullets, "README has no headline bullets"
    for bullet in bullets:
        targets = [README.parent / link["target"].partition("#")[0] for link in LINK.finditer(bullet)]
        sources = "\n".join(path.read_text(encoding="utf-8") for path in targets if path.suffix == ".md")
        assert sources, f"headline without a link to the file that measured it: {bullet[:60]}..."
        prose = LINK.sub("]", bullet)
        figures = re.findall(r"(?<![\d.])\d+\.\d+(?!\d)", prose)
        assert figures, f"headline without a figure: {bullet[:60]}..."
        for figure in figures:
            assert re.search(rf"(?<![\d.]){re.escape(figure)}(?!\d)", sources), \
                f"README headline figure {figure} is not in {[path.name for path in targets]}"


def test_layout_matches_the_tree() -> None:
    """docs/index.md's layout names every module and subpackage of sparseticket/, and everything it names exists."""
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    layout = section(index, "Layout")
    named, parent = set(), ROOT
    for line in layout.splitlines():
        entry = re.match(r"^(?P<indent> {0,2})(?P<path>[\w./]+[\w/])\s", line)
        if not entry or line.startswith("```"):
            continue
        path = (ROOT if not entry["indent"] else parent) / entry["path"].rstrip("/")
        assert path.exists(), f"docs/index.md's layout names {path.relative_to(ROOT)}, which does not exist"
        named.add(path)
        if not entry["indent"] and path.is_dir():
            parent = path
    package = ROOT / "sparseticket"
    for path in package.iterdir():
        if path.name == "__pycache__" or not (path.is_dir() or path.suffix == ".py"):
            continue
        assert path in named, f"docs/index.md's layout does not mention sparseticket/{path.name}"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)
    assert len(commands) == 2, "README must carry exactly two set-up commands"
    ci_script = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci_script
