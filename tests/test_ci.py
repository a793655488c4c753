"""CI runs what the README tells a contributor to run: its install command, its lint line and its
test command, in that order (.ci/run)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_install_lint_and_test_commands_in_order():
    readme = (REPO / "README.md").read_text()
    ci = [ln.strip() for ln in (REPO / ".ci/run").read_text().splitlines()]
    setup = next(b for b in _bash_blocks(readme) if b.endswith("&& pytest"))
    lint = next(b for b in _bash_blocks(readme) if b.startswith("ruff check"))
    install, test = setup.split(" && ")[-2:]  # after `python3 -m venv ... && . activate`
    assert (install, test) == ('pip install -e ".[dev]"', "pytest")
    assert lint == "ruff check . && ruff format --check ."
    at = {cmd: ci.index(cmd) for cmd in (install, lint, test)}  # ValueError = CI lacks one
    assert at[install] < at[lint] < at[test]
