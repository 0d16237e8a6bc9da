"""The README's usage example runs as written, and its commands are the ones CI runs."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_usage_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)  # noqa: S102
    assert namespace["distances"].numel() == 0  # empty history: no distances yet
    assert namespace["mask"].tolist() == [True, False, True]
    assert 0 <= namespace["kept"] <= namespace["scores"].numel()
    assert namespace["scores"].grad is not None


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)
    assert len(commands) == 2, "README must carry exactly two set-up commands"
    ci_script = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci_script
