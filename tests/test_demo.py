"""`salt demo`: it trains exactly the shipped configs/demo/*.yaml (package data, no second copy),
it does not import the `salt` dispatcher, and `--fast` runs end to end.

The end-to-end test runs the real pipeline in-process (synthetic H.264 shards, `salt fit` for both
stages with a real Lightning Trainer and MLflow sqlite store, `salt-probe`, `salt-runs compare`)
at the `--fast` size, then checks the summary the README promises.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import yaml

from salt.demo import (
    FAST_NOTE,
    SIZES,
    config_dir,
    fit_config,
    main,
    probe_config,
    run_demo,
    shipped_config,
)
from salt.probes.config import ProbeConfig, load_config

REPO = Path(__file__).resolve().parents[1]
RUN_PATHS = {("trainer", "default_root_dir"), ("data", "train_shards")}


def _leaves(cfg: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def test_demo_reads_the_repository_configs() -> None:
    # package data salt.configs is the repository's configs/ folder (editable or installed copy)
    for name in ("demo/teacher.yaml", "demo/student.yaml", "demo/probe.yaml", "probe/tiny.yaml"):
        assert (config_dir() / name).is_file(), name
        assert shipped_config(name) == yaml.safe_load((REPO / "configs" / name).read_text())


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_full_run_trains_the_shipped_config(stage: str, tmp_path: Path) -> None:
    shipped = _leaves(yaml.safe_load((REPO / "configs/demo" / f"{stage}.yaml").read_text()))
    teacher = str(tmp_path / "t.ckpt") if stage == "student" else None
    cfg = _leaves(fit_config(stage, tmp_path / "runs", "s-{0..1}.tar", teacher=teacher))
    assert cfg[("trainer", "default_root_dir")] == str(tmp_path / "runs")
    assert cfg[("data", "train_shards")] == "s-{0..1}.tar"
    if stage == "student":
        assert cfg.pop(("model", "init_args", "teacher")) == teacher
        assert shipped.pop(("model", "init_args", "teacher")) is None  # given on the command line
    assert {k: v for k, v in cfg.items() if k not in RUN_PATHS} == {
        k: v for k, v in shipped.items() if k not in RUN_PATHS
    }


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_fast_run_changes_only_the_steps(stage: str, tmp_path: Path) -> None:
    full = _leaves(fit_config(stage, tmp_path, "s.tar"))
    fast = _leaves(fit_config(stage, tmp_path, "s.tar", fast=True))
    steps = SIZES["fast"][f"{stage}_steps"]
    every = steps if stage == "teacher" else SIZES["fast"]["ckpt_every"]
    changed = {k: fast[k] for k in full if fast[k] != full[k]}
    assert changed == {
        ("trainer", "max_steps"): steps,
        ("data", "epoch_length"): steps,
        ("checkpoint_every",): every,
    }


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_seed_sets_the_run_and_data_seed_only(stage: str, tmp_path: Path) -> None:
    full = _leaves(fit_config(stage, tmp_path, "s.tar"))
    seeded = _leaves(fit_config(stage, tmp_path, "s.tar", seed=7))
    changed = {k: v for k, v in seeded.items() if full.get(k, "absent") != v}
    assert changed == {("seed_everything",): 7, ("data", "seed"): 7}


def test_probe_protocol_is_tiny_updated_by_the_demo_overrides() -> None:
    tiny = yaml.safe_load((REPO / "configs/probe/tiny.yaml").read_text())
    overrides = yaml.safe_load((REPO / "configs/demo/probe.yaml").read_text())
    assert set(overrides) <= set(ProbeConfig.__dataclass_fields__)
    assert probe_config() == {**tiny, **overrides}
    cfg = load_config(None, probe_config())
    assert cfg.head_kinds == ["linear"]  # the demo probes linear heads only (module docstring)
    demo = yaml.safe_load((REPO / "configs/demo/teacher.yaml").read_text())["data"]
    assert (cfg.frames_per_clip, cfg.frame_step, cfg.crop_size) == (
        demo["frames_per_clip"],
        demo["frame_step"],
        demo["crop_size"],
    )  # the probe sees clips like the ones the encoders were trained on


def test_demo_does_not_import_the_dispatcher() -> None:
    # salt.cli loads salt.demo by name; salt.demo reaches `salt fit` through salt.fit_cli
    tree = ast.parse((REPO / "salt" / "demo.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "salt.cli" not in imported and "salt.fit_cli" in imported


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
