"""The models/ boundary: ``salt.models`` imports torch and timm building blocks only — no
Lightning, torch.distributed, optimizers or data code (DESIGN.md "Boundaries")."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
FORBIDDEN = ("lightning", "pytorch_lightning", "torch.distributed", "torch.optim", "salt.data")


def _imported_modules(path: Path) -> list[str]:
    """Absolute module names imported by a file (relative imports resolved inside salt.models)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .x / from ..x
                base = ["salt", "models"][: 2 - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            names.append(mod)
            names += [f"{mod}.{alias.name}" for alias in node.names]  # from torch import optim
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_static_imports(path):
    bad = [n for n in _imported_modules(path) if _forbidden(n)]
    assert not bad, f"{path.name} imports {bad}"


def test_scanner_catches_forbidden_imports(tmp_path):
    """The scan above can fail: each spelling of a forbidden import is detected."""
    src = tmp_path / "bad.py"
    for line in (
        "import pytorch_lightning as pl",
        "from lightning.pytorch import Trainer",
        "import torch.distributed as dist",
        "from torch import optim",
        "from torch.optim import AdamW",
        "from ..data import transforms",
    ):
        src.write_text(line + "\n")
        assert any(_forbidden(n) for n in _imported_modules(src)), line


def test_import_salt_models_leaves_lightning_out():
    # torch itself imports torch.optim and torch.distributed, so at run time only what torch
    # does not pull in is checked; the static scan above covers the rest.
    code = (
        "import sys, salt.models\n"
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'salt.data', 'salt.probes')"
        " if m in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
