"""`salt demo`: its embedded settings never drift from the shipped YAML, and `--fast` runs end to end.

The end-to-end test runs the real pipeline in-process (synthetic H.264 shards, `salt fit` for both
stages with a real Lightning Trainer and MLflow sqlite store, `salt-probe`, `salt-runs compare`)
at the `--fast` size, then checks the summary the README promises.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from salt.demo import FAST_NOTE, PROBE, PROBE_OVERRIDES, SIZES, fit_config, main, run_demo
from salt.probes.config import ProbeConfig, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_embedded_fit_config_matches_configs_demo(stage: str) -> None:
    shipped = yaml.safe_load((REPO / "configs/demo" / f"{stage}.yaml").read_text())
    full = SIZES["full"]
    every = full["teacher_steps"] if stage == "teacher" else full["ckpt_every"]
    embedded = fit_config(
        stage,
        Path(shipped["trainer"]["default_root_dir"]),
        shipped["data"]["train_shards"],
        full[f"{stage}_steps"],
        every,
    )
    assert embedded == shipped


def test_embedded_probe_matches_configs_probe_tiny() -> None:
    assert yaml.safe_load((REPO / "configs/probe/tiny.yaml").read_text()) == PROBE
    assert set(PROBE_OVERRIDES) <= set(ProbeConfig.__dataclass_fields__)
    cfg = load_config(None, {**PROBE, **PROBE_OVERRIDES})
    assert cfg.head_kinds == ["linear"]


def test_demo_refuses_an_output_folder_that_holds_a_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "runs" / "salt-demo").mkdir(parents=True)
    assert main(["--out", str(tmp_path)]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.slow
def test_fast_demo_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    summary = run_demo(out, fast=True)
    assert json.loads((out / "summary.json").read_text()) == summary

    top = summary["probe_top1"]
    assert set(top) == {"random", "teacher", "student"}
    assert all(0.0 <= v <= 1.0 for v in top.values()), top
    assert math.isfinite(summary["r2"]) and math.isfinite(summary["spearman"])
    assert -1.0 <= summary["spearman"] <= 1.0
    assert summary["seconds"] > 0
    ckpts = summary["student_checkpoints"]
    fast = SIZES["fast"]
    assert [c["step"] for c in ckpts] == list(
        range(fast["ckpt_every"], fast["student_steps"] + 1, fast["ckpt_every"])
    )
    assert all(c["train_loss"] is not None and math.isfinite(c["train_loss"]) for c in ckpts)
    # The stage-2 loss falls over the run (the student learns its teacher's targets).
    assert ckpts[-1]["train_loss"] < ckpts[0]["train_loss"]
    for path in summary["plots"]:
        assert Path(path).is_file(), path
    for stage in ("teacher", "student"):
        assert (out / "configs" / f"{stage}.yaml").is_file()
    assert (out / "runs" / "mlflow.db").is_file()

    printed = capsys.readouterr().out
    assert "[6/6] summary" in printed
    assert f"mlflow ui --backend-store-uri {summary['tracking_uri']}" in printed
    assert FAST_NOTE[0] in printed  # a --fast table is never presented as a result
