"""``--help`` is fast because it imports nothing heavy (timings live in benchmarks, not here):
``salt``, ``salt-shards``, ``salt-runs`` and ``salt-probe`` print their help without importing
torch, Lightning or MLflow; ``salt fit --help`` is built once (Lightning's real help text) and
then served from the cache without them, byte for byte the same; the top-level help says how to
list a model class's options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "mlflow", "webdataset", "av")
PROBE = """
import contextlib, io, json, sys
from importlib import import_module
module, argv = sys.argv[1], sys.argv[2:]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = import_module(module).main(argv)
    except SystemExit as e:
        code = e.code
print(json.dumps({"code": code, "out": out.getvalue(),
                  "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def run_help(module: str, *argv: str, env: dict | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "module, argv, expect",
    [
        ("salt.cli", ["--help"], "salt fit --model.help salt.student.StudentModule"),
        ("salt.data.shards_cli", ["--help"], "inspect"),
        ("salt.data.shards_cli", ["make", "--help"], "--label-from-parent"),
        ("salt.probes.runs_cli", ["--help"], "sync"),
        ("salt.probes.runs_cli", ["select", "--help"], "--register MODEL"),
        ("salt.probes.cli", ["--help"], "--num-classes"),
    ],
)
def test_light_help_imports_nothing_heavy(module: str, argv: list[str], expect: str) -> None:
    result = run_help(module, *argv)
    assert result["code"] in (0, None) and expect in result["out"]
    assert result["heavy"] == []


@pytest.mark.slow
def test_fit_help_is_cached_and_identical(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "100"}
    live = run_help("salt.cli", "fit", "--help", env={**env, "SALT_HELP_CACHE": "0"})
    first = run_help("salt.cli", "fit", "--help", env=env)  # builds and stores it
    second = run_help("salt.cli", "fit", "--help", env=env)  # from the cache
    assert live["out"].startswith("usage: salt [options] fit ")
    assert (
        "--model.help [CLASS_PATH_OR_NAME]" in live["out"] and "--data.train_shards" in live["out"]
    )
    assert "pytorch_lightning" in live["heavy"] and "pytorch_lightning" in first["heavy"]
    assert first["out"] == second["out"] == live["out"]
    assert second["heavy"] == []
    assert len(list((tmp_path / "salt" / "help").glob("fit-*.txt"))) == 1
