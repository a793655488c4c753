"""Every repository path that README.md and docs/*.md (but the changelog) name exists, so the docs cannot point at a
file that was moved or never written.

A path is a token that starts with one of the repository's top-level folders (``salt/``,
``data/``, ``configs/``, ...) inside an inline code span, or anywhere on a line of a fenced code
block. Brace lists (``configs/{ddp,fsdp}.yaml``) are expanded and each member checked; a ``*``
must match a file; a ``<placeholder>`` stands for a name the reader fills in, so only the part
before it is checked. ``IGNORED`` lists what looks like a repository path but is not one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# docs/CHANGELOG.md is left out: it records what was true when each entry was written, so it
# keeps the names of files moved since.
DOCS = [
    REPO / "README.md",
    *sorted(set((REPO / "docs").glob("*.md")) - {REPO / "docs/CHANGELOG.md"}),
]
TOP = ("salt", "data", "models", "probes", "configs", "slurm", "benchmarks", "experiments")
TOP += ("tests", "docs", ".ci")
IGNORED = (
    "data/skipped_",  # MLflow metric names (data/skipped_<reason>, data/val_...), not files
    "data/val_",
    "configs/train/",  # paths inside a V-JEPA 2 / V-JEPA checkout (docs/method.md, docs/probe.md)
    "configs/pretrain/",
    "configs/eval/",
)
_SPAN = re.compile(r"`([^`]+)`")
_PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(map(re.escape, TOP)) + r")/[\w./{},*<>%-]*)")


def named_paths(text: str) -> list[tuple[int, str]]:
    """(line number, path) for every repository-looking path in code spans and fenced blocks."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        for chunk in [line] if fenced else _SPAN.findall(line):
            out += [(n, m.group(1).rstrip(".,;:")) for m in _PATH.finditer(chunk)]
    return out


def _expand(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [
        x
        for alt in m.group(1).split(",")
        for x in _expand(path[: m.start()] + alt + path[m.end() :])
    ]


def missing(path: str) -> list[str]:
    """The members of ``path`` that do not exist in the repository (empty = fine)."""
    if path.startswith(IGNORED):
        return []
    bad = []
    for p in _expand(path):
        if "<" in p:  # a placeholder: check the folder it is in
            p = p.split("<", 1)[0].rsplit("/", 1)[0] + "/"
        if "*" in p:
            if not any(REPO.glob(p)):
                bad.append(p)
        elif not (REPO / p).exists():
            bad.append(p)
    return bad


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_paths_named_in_docs_exist(doc: Path) -> None:
    found = named_paths(doc.read_text())
    bad = [f"{doc.name}:{n}: {p}" for n, p in found if missing(p)]
    assert not bad, "paths that do not exist:\n" + "\n".join(bad)


def test_the_check_can_fail() -> None:
    """A moved file, a bad brace member and an unmatched glob are found; real paths pass."""
    lines = [
        "See `salt/masks.py` and `salt/data/stats.py: SkipSample`.",
        "Configs: `configs/strategy/{ddp,fsdp,zero3}.yaml`, `tests/test_*.py`, `tests/nothing_*.py`.",
        "```bash",
        "python benchmarks/step_throughput.py --device cpu; python benchmarks/gone.py",
        "```",
        "Metric `data/skipped_<reason>`, run folder `<root>/x`, module `salt.data`.",
    ]
    found = named_paths("\n".join(lines))
    assert [p for _, p in found if missing(p)] == [
        "salt/data/stats.py",
        "configs/strategy/{ddp,fsdp,zero3}.yaml",
        "tests/nothing_*.py",
        "benchmarks/gone.py",
    ]
    assert (1, "salt/masks.py") in found and (4, "benchmarks/step_throughput.py") in found
    assert missing("configs/strategy/{ddp,fsdp,zero3}.yaml") == ["configs/strategy/zero3.yaml"]
