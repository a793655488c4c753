"""experiments/claims (the one-GPU study of SALT's claims) cannot rot: its CPU smoke preset runs
every stage — the motion task, the FLOP plan, teacher, students, the EMA grid and its choice, the
FLOP-matched EMA runs, random init, controls, probes, the report — and a deadline still leaves
results. The decision rules of report.py give the verdicts they state for results built to hold,
fail or be mixed."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CLAIMS = REPO / "experiments" / "claims"


def _load(name: str):
    """A module of the study by file (benchmarks/ has a `report` module of its own)."""
    spec = importlib.util.spec_from_file_location(f"claims_{name}", CLAIMS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


motion, report = _load("motion"), _load("report")


def _run(out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(CLAIMS / "run.py"), "--preset", "smoke", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("claims")
    proc = _run(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_every_stage_runs_and_is_recorded(smoke: tuple[Path, dict]) -> None:
    out, doc = smoke
    cfg, runs = doc["meta"]["config"], doc["runs"]
    assert doc["meta"]["finished"]
    assert {r["status"] for r in runs.values()} == {"done"}, {
        n: r.get("error") for n, r in runs.items()
    }
    seeds = cfg["seeds"]
    for s in seeds:
        for name in (
            f"teacher-s{s}",
            f"random-s{s}",
            f"student-test-s{s}",
            f"student-test2-s{s}",
        ):
            assert name in runs
    # EMA steps are FLOP-matched to the SALT teacher + same-size student (within one EMA step)
    f = doc["plan"]["flops_per_step"]
    salt = runs["teacher-s0"]["flops"] + runs["student-test-s0"]["flops"]
    for name in ("ema-s1", doc["ema_choice"]["cell"]):
        assert abs(runs[name]["flops"] - salt) <= f["ema"], (name, runs[name]["flops"], salt)
    # the grid cell was chosen on held-out probe-train and seeds > 0 train it
    choice = doc["ema_choice"]
    cells = [n for n in runs if n.startswith("ema-m")]
    assert len(cells) == 2 and choice["heldout_top1"] == max(
        runs[c]["probes"][-1]["heldout_top1"] for c in cells
    )
    assert (runs["ema-s1"]["momentum"], runs["ema-s1"]["lr"]) == (choice["momentum"], choice["lr"])
    # EMA runs are probed through their target encoder, SALT runs through their only one
    ema_probes = runs["ema-s1"]["probes"] + runs["ema-curve-s0"]["probes"]
    assert ema_probes and all(p["which"] == "target" for p in ema_probes)
    # the loss-vs-top-1 curve: every periodic checkpoint of the same-size student, with its loss
    curve = runs["student-test-s0"]["probes"]
    assert [p["step"] for p in curve] == [2, 4, 6] and all(p["which"] == "online" for p in curve)
    assert all(p["train_loss"] is not None and p["train_loss"] > 0 for p in curve)
    for p in curve:
        assert set(p) >= {"attentive", "linear", "health", "heldout_top1"}
        assert 0.0 <= p["attentive"]["top1"] <= 1.0 and p["health"]["rankme_tokens"] > 1.0
    assert (
        set(runs["random-s0"]["controls"])
        == set(runs["student-test-s0"]["controls"])
        == {"single_frame", "shuffled"}
    )
    assert "train/loss" in runs["student-test-s0"]["curves"]
    # the report: every section, a verdict per claim, both plots
    table = (out / "table.md").read_text()
    for section in ("verdicts", "encoders", "grid", "controls", "selection", "run"):
        assert f"## {section}" in table
    assert (
        table.count("**inconclusive") + table.count("**holds") + table.count("**does not hold") == 4
    )
    for png in report.PLOTS:
        assert (out / png).stat().st_size > 10_000


@pytest.mark.slow
def test_report_fills_the_readme_and_log(smoke: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = smoke
    readme, log = tmp_path / "README.md", tmp_path / "LOG.md"
    readme.write_text((CLAIMS / "README.md").read_text())
    log.write_text((REPO / "experiments" / "LOG.md").read_text())
    args = [str(out / "results.json"), "--out", str(tmp_path / "r"), "--readme", str(readme),
            "--log", str(log), "--plots-dir", str(tmp_path)]  # fmt: skip
    assert report.main(args) == 0
    text = readme.read_text()
    assert "filled by report.py" not in text and "| (c) the test student" in text
    assert "ran " in log.read_text() and "filled by" not in log.read_text()
    assert (tmp_path / "top1_vs_flops.png").is_file()


@pytest.mark.slow
def test_a_deadline_still_leaves_results(tmp_path: Path) -> None:
    # far more steps than 16 s allow on any CPU (and kept: --no-fit-budget), so the deadline cuts
    proc = _run(tmp_path, "--time-limit", "20", "--reserve", "4", "--no-fit-budget",
                "--teacher-steps", "5000", "--student-steps", "5000")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert not doc["meta"]["finished"] or any(r.get("truncated") for r in doc["runs"].values())
    statuses = {r["status"] for r in doc["runs"].values()}
    assert statuses & {"skipped", "unfinished"} or any(
        r.get("truncated") for r in doc["runs"].values()
    )
    assert (tmp_path / "table.md").is_file()


def test_motion_task_is_deterministic_balanced_and_controls_are_what_they_say() -> None:
    task = motion.MotionTask(size=32, frames=6)
    v, y = motion.generate(task, 16, seed=3, split="val")
    assert v.shape == (16, 3, 6, 32, 32) and v.dtype == torch.uint8
    assert torch.bincount(y, minlength=8).tolist() == [2] * 8
    v2, _ = motion.generate(task, 16, seed=3, split="val")
    assert torch.equal(v, v2)
    assert not torch.equal(v, motion.generate(task, 16, seed=3, split="train")[0])
    assert not torch.equal(v[:, :, 0], v[:, :, 1])  # things move
    single = motion.single_frame(v)
    assert all(torch.equal(single[:, :, t], v[:, :, 3]) for t in range(6))
    shuffled = motion.shuffle_frames(v, seed=1)
    assert not torch.equal(shuffled, v)
    for i in range(16):  # every clip's frames, reordered
        a = sorted(v[i].transpose(0, 1).flatten(1).tolist())
        assert a == sorted(shuffled[i].transpose(0, 1).flatten(1).tolist())


def _doc(student: float, teacher: float, ema: float, collapsed_ema: bool = False) -> dict:
    """A results document with 3 seeds whose numbers are set by the arguments (± a seed offset)."""
    cfg = {"seeds": [0, 1, 2], "grid_seed": 0, "teacher_size": "tiny", "student_sizes": ["tiny"],
           "task": {"num_classes": 8, "frames": 8, "size": 64}, "ema_momenta": [0.99],
           "ema_lrs": [1e-3], "preset": "unit", "batch_size": 1, "device": "cpu"}  # fmt: skip
    health = {"rankme_tokens": 50.0, "std_ratio": 0.9}

    def probe(top: float, step: int, loss: float | None, h: dict = health) -> dict:
        return {"step": step, "train_loss": loss, "flops": 1e12 * step, "heldout_top1": top,
                "attentive": {"top1": top}, "linear": {"top1": top - 0.05}, "health": h}  # fmt: skip

    runs = {}
    for s in cfg["seeds"]:
        d = 0.002 * s
        runs[f"teacher-s{s}"] = {
            "status": "done",
            "flops": 1e13,
            "probes": [probe(teacher + d, 10, None)],
        }
        runs[f"random-s{s}"] = {"status": "done", "probes": [probe(0.2, 0, None)]}
        # 4 checkpoints: top-1 rises as the loss falls (a perfect linear relation)
        curve = [probe(student - 0.1 + 0.1 * k / 3 + d, k + 1, 1.0 - 0.1 * k) for k in range(4)]
        runs[f"student-tiny-s{s}"] = {"status": "done", "probes": curve}
        h = {"rankme_tokens": 1.0, "std_ratio": 0.01} if collapsed_ema else health
        name = "ema-m0.99-lr0.001-s0" if s == 0 else f"ema-s{s}"
        runs[name] = {"status": "done", "flops": 2e13, "probes": [probe(ema + d, 20, 0.1, h)]}
    choice = {"cell": "ema-m0.99-lr0.001-s0", "momentum": 0.99, "lr": 1e-3, "heldout_top1": ema}
    return {
        "meta": {"config": cfg, "started": "2026-01-01"},
        "plan": {},
        "runs": runs,
        "ema_choice": choice,
    }


def test_decision_rules() -> None:
    v = report.verdicts(report.Study(_doc(student=0.6, teacher=0.4, ema=0.5)))
    assert [r["verdict"] for r in v] == ["holds", "holds", "holds"]
    v = report.verdicts(report.Study(_doc(student=0.4, teacher=0.6, ema=0.7)))
    assert [r["verdict"] for r in v[:2]] == ["does not hold", "does not hold"]
    v = report.verdicts(report.Study(_doc(student=0.6, teacher=0.4, ema=0.5, collapsed_ema=True)))
    assert v[1]["verdict"] == "inconclusive (the EMA baseline collapsed in most seeds)"
    doc = _doc(student=0.6, teacher=0.4, ema=0.5)
    mixed = copy.deepcopy(doc)
    mixed["runs"]["teacher-s1"]["probes"][0]["attentive"]["top1"] = 0.9  # one seed the other way
    assert report.verdicts(report.Study(mixed))[0]["verdict"].startswith("inconclusive")
    flat = copy.deepcopy(doc)  # top-1 unrelated to loss in every seed
    for s in (0, 1, 2):
        for k, p in enumerate(flat["runs"][f"student-tiny-s{s}"]["probes"]):
            p["attentive"]["top1"] = p["linear"]["top1"] = 0.5 + 0.01 * ((k * 7 + s) % 3 == 0)
            p["train_loss"] = 1.0 - 0.1 * k
    assert report.verdicts(report.Study(flat))[2]["verdict"] == "does not hold"
    chance = report.verdicts(report.Study(_doc(student=0.13, teacher=0.12, ema=0.12)))
    assert "nothing learned" in chance[0]["verdict"]
