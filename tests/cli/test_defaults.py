"""The defaults audit: docs/DEFAULTS.md, RunConfig, the method classes and ``--help`` agree.

The reference is the paper column of docs/DEFAULTS.md (values read from the papers' official code).
Every default that differs from it must say so in its ``--help`` text as ``paper: VALUE`` followed by
the reason (``... here: why``), and the doc must give the same reason a column of its own.
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
from dataclasses import fields
from pathlib import Path

import pytest

from sparseticket.cli.main import _HELP, build_parser
from sparseticket.driver.config import RunConfig
from sparseticket.methods import IMP, WORM, EarlyBird, GemMiner

DOC = Path(__file__).resolve().parents[2] / "docs" / "DEFAULTS.md"
NONE = "—"
COLUMNS = ("flag", "ours", "paper", "source", "why")
# flags that are tools, not hyper-parameters of a paper: the only rows allowed a "—" paper value
TOOL_FLAGS = {"--method", "--data-dir", "--seed", "--preset", "--out", "--threads", "--device", "--no-progress",
              "--dist-timeout", "--resume"}


def _token(cell: str) -> str:
    """A value cell: `VALUE` (backticks) or —."""
    if cell == NONE:
        return NONE
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"DEFAULTS.md: expected `value` or {NONE}, got {cell!r}"
    return match.group(1)


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """The flag table of DEFAULTS.md: flag -> {ours, paper, source, why}."""
    lines = text.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("| flag |"))
    rows: dict[str, dict[str, str]] = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == len(COLUMNS), f"DEFAULTS.md: a row needs {len(COLUMNS)} cells: {line}"
        row = dict(zip(COLUMNS, cells))
        flag = _token(row.pop("flag"))
        assert flag not in rows, f"DEFAULTS.md lists {flag} twice"
        rows[flag] = {"ours": _token(row["ours"]), "paper": _token(row["paper"]), "source": row["source"],
                      "why": row["why"]}
    return rows


def same(token: str, value: object) -> bool:
    """Whether a doc token (`0.1`, `on`, `none`, `step`) names ``value``."""
    if value is None:
        return token == "none"
    if isinstance(value, bool):
        return token == ("on" if value else "off")
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(token), float(value), rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return str(value) == token


def problems(rows: dict[str, dict[str, str]], actions: dict[str, argparse.Action]) -> list[str]:
    """What is wrong between the doc's rows and the parser's flags (empty when they agree)."""
    found = [f"{flag}: in --help, not in DEFAULTS.md" for flag in sorted(set(actions) - set(rows))]
    found += [f"{flag}: in DEFAULTS.md, not in --help" for flag in sorted(set(rows) - set(actions))]
    for flag in sorted(set(rows) & set(actions)):
        row, action = rows[flag], actions[flag]
        if not same(row["ours"], action.default):
            found.append(f"{flag}: DEFAULTS.md says our default is {row['ours']}, the code has {action.default!r}")
        if row["paper"] == NONE:
            continue
        if same(row["paper"], action.default):
            if row["why"] != NONE:
                found.append(f"{flag}: equals the paper's {row['paper']} but DEFAULTS.md gives a reason to differ")
            continue
        if row["why"] == NONE or not row["why"]:
            found.append(f"{flag}: differs from the paper's {row['paper']}; DEFAULTS.md gives no reason")
        reason = re.compile(rf"paper: {re.escape(row['paper'])}(?![\w.]).*\bhere\b", re.DOTALL)
        if not reason.search(action.help or ""):
            found.append(f"{flag}: differs from the paper's {row['paper']}; its --help lacks "
                         f"'paper: {row['paper']} ... here: <reason>'")
    return found


def _search_actions() -> dict[str, argparse.Action]:
    """``sparseticket search``'s flags (by their first long option), --help excepted."""
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    search = commands.choices["search"]
    return {next(option for option in action.option_strings if option.startswith("--")): action
            for action in search._actions if action.option_strings and not isinstance(action, argparse._HelpAction)}


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, str]]:
    return parse_table(DOC.read_text(encoding="utf-8"))


def test_every_run_config_field_has_help_text() -> None:
    names = {field.name for field in fields(RunConfig)}
    assert set(_HELP) == names, f"missing: {sorted(names - set(_HELP))}, stale: {sorted(set(_HELP) - names)}"
    assert all(text.strip() for text in _HELP.values())


def test_doc_code_and_help_agree(rows: dict[str, dict[str, str]]) -> None:
    assert problems(rows, _search_actions()) == []


def test_run_flags_default_to_run_config() -> None:
    defaults, actions = RunConfig(), _search_actions()
    for field in fields(RunConfig):
        action = actions["--" + field.name.replace("_", "-")]
        assert action.default == getattr(defaults, field.name), field.name


def test_only_tool_flags_lack_a_paper_value(rows: dict[str, dict[str, str]]) -> None:
    assert {flag for flag, row in rows.items() if row["paper"] == NONE} == TOOL_FLAGS
    for flag, row in rows.items():
        if row["paper"] != NONE:
            assert row["source"] not in ("", NONE), f"{flag}: a paper value needs its source"


def test_problems_catches_a_silent_difference() -> None:
    """The checker fails a default that differs without 'paper: VALUE ... here: reason', and passes one with it."""
    row = {"--lr": {"ours": "0.05", "paper": "0.1", "source": "x", "why": "batch 64"}}
    silent = argparse.Action(["--lr"], "lr", default=0.05, help="learning rate")
    assert any("--help lacks" in problem for problem in problems(row, {"--lr": silent}))
    near_miss = argparse.Action(["--lr"], "lr", default=0.05, help="learning rate; paper: 0.15; 0.05 here: batch")
    assert problems(row, {"--lr": near_miss})  # 0.15 is not 0.1
    told = argparse.Action(["--lr"], "lr", default=0.05, help="learning rate; paper: 0.1; 0.05 here: batch 64")
    assert problems(row, {"--lr": told}) == []
    equal = {"--lr": {**row["--lr"], "ours": "0.1"}}
    assert any("gives a reason" in p for p in problems(equal, {"--lr": argparse.Action(["--lr"], "lr", default=0.1)}))
    assert any("not in --help" in p for p in problems({**row, "--gone": row["--lr"]}, {"--lr": told}))


def test_same_reads_doc_tokens() -> None:
    assert same("0.0001", 1e-4) and same("30", 30) and same("on", True) and same("off", False)
    assert same("none", None) and same("step", "step") and same("0", "0")
    assert not same("0.1", 0.05) and not same("on", False) and not same("vgg", "resnet20") and not same("x", 3)


@pytest.mark.parametrize(("cls", "keyword", "flag"), [
    (EarlyBird, "ratio", "--ratio"), (EarlyBird, "l1", "--l1"), (EarlyBird, "queue", "--queue"),
    (EarlyBird, "eps", "--eps"), (WORM, "trigger", "--trigger"), (WORM, "chi", "--chi"),
    (WORM, "static", "--static"), (WORM, "truncate_filters", "--truncate-filters"),
    (GemMiner, "period", "--period"), (GemMiner, "l2", "--l2"),
    (GemMiner, "momentum", "--momentum"), (IMP, "rate", "--rate"), (IMP, "rewind_step", "--rewind-step"),
])
def test_method_keyword_defaults_are_the_papers(rows: dict[str, dict[str, str]], cls: type, keyword: str,
                                                flag: str) -> None:
    default = inspect.signature(cls.__init__).parameters[keyword].default
    assert same(rows[flag]["paper"], default), f"{cls.__name__}({keyword}={default!r}) vs paper {rows[flag]['paper']}"


def test_gemminer_lr_default_is_the_command_lines_and_its_docstring_says_why(rows) -> None:
    """Issue 26: the class kept the paper's 0.1, which leaves short runs at chance; it shares the CLI's
    default now, and its docstring gives the paper's value and the reason."""
    default = inspect.signature(GemMiner.__init__).parameters["lr"].default
    assert default == RunConfig().score_lr and same(rows["--score-lr"]["ours"], default)
    doc = " ".join(GemMiner.__doc__.split())
    assert "not the paper's 0.1" in doc and "58,650 steps" in doc and "0.1 * 58650 / S" in doc
