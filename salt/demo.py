"""`salt demo`: the whole two-stage pipeline, tiny, on a laptop CPU, from embedded defaults.

    salt demo [--out DIR] [--fast]

1. synthesize the motion-only dataset (pretraining, probe-train and validation shards);
2. stage 1: train a tiny pixel teacher (`salt fit` on the embedded teacher config);
3. stage 2: freeze it and train a tiny student, saving several checkpoints;
4. probe the teacher, every student checkpoint and a random-init encoder (`salt-probe`);
5. relate the students' training loss to their probe accuracy (`salt-runs compare`);
6. print the final table and write `DIR/summary.json` and the plots.

Everything is logged to one MLflow sqlite store in `DIR/runs/mlflow.db`. The configs this run used
are written to `DIR/configs/` (they match `configs/demo/*.yaml`, which a test keeps in step), so
`salt fit -c DIR/configs/teacher.yaml` reproduces a stage by hand. The task is chance for a single
frame (4 motion directions, random textures), so any accuracy above 25 % comes from motion.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

EXPERIMENT = "salt-demo"

# The shared optimisation / model settings of configs/demo/{teacher,student}.yaml.
_OPTIM = {
    "lr": 2.0e-3,
    "start_lr": 2.0e-4,
    "final_lr": 1.0e-5,
    "warmup_steps": 10,
    "weight_decay": 0.04,
    "final_weight_decay": 0.1,
    "health_every": 20,
}
_DATA = {
    "frames_per_clip": 8,
    "frame_step": 2,
    "crop_size": 64,
    "batch_size": 8,
    "num_workers": 1,
    "epoch_length": 1000,
    "shuffle_buffer": 16,
}
TEACHER_MODEL = {
    "class_path": "salt.teacher.TeacherModule",
    "init_args": {
        "encoder": "vit_test",
        "decoder_dim": 48,
        "decoder_depth": 2,
        "decoder_heads": 4,
        "decoder_mlp_hidden": 96,
        **_OPTIM,
    },
}
STUDENT_MODEL = {
    "class_path": "salt.student.StudentModule",
    "init_args": {
        "encoder": "vit_test",
        "teacher": None,
        "predictor_dim": 48,
        "predictor_depth": 2,
        "predictor_heads": 4,
        "predictor_mlp_hidden": 96,
        **_OPTIM,
    },
}
# The probe protocol of configs/probe/tiny.yaml (kept in step by a test).
PROBE = {
    "frames_per_clip": 8,
    "frame_step": 2,
    "crop_size": 64,
    "num_segments": 1,
    "num_views": 1,
    "num_workers": 0,
    "extract_batch_size": 8,
    "probe_depth": 1,
    "probe_heads": 4,
    "head_kinds": ["attentive", "linear"],
    "lrs": [3.0e-3, 1.0e-3],
    "wds": [0.01, 0.1],
    "linear_lrs": [3.0e-2, 1.0e-2],
    "epochs": 30,
    "batch_size": 16,
    "heldout_fraction": 0.2,
}

# Sizes: full (default) and --fast (CI).
SIZES = {
    "full": {
        "clips": (512, 256, 128),
        "teacher_steps": 150,
        "student_steps": 200,
        "ckpt_every": 40,
        "probe_epochs": 30,
    },
    "fast": {
        "clips": (192, 96, 64),
        "teacher_steps": 40,
        "student_steps": 60,
        "ckpt_every": 20,
        "probe_epochs": 15,
    },
}


def fit_config(stage: str, root: Path, shards: str, steps: int, ckpt_every: int) -> dict:
    """The `salt fit` config of one demo stage (what configs/demo/<stage>.yaml holds)."""
    return {
        "experiment": EXPERIMENT,
        "run_name": stage,
        "checkpoint_every": ckpt_every,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": 1,
            "precision": 32,
            "max_steps": steps,
            "log_every_n_steps": 5,
            "enable_model_summary": False,
        },
        "model": copy.deepcopy(TEACHER_MODEL if stage == "teacher" else STUDENT_MODEL),
        "data": {"train_shards": shards, **_DATA},
    }


def _header(i: int, n: int, text: str) -> None:
    print(f"\n{'=' * 78}\n[{i}/{n}] {text}\n{'=' * 78}", flush=True)


def _fit(cfg: dict, path: Path, extra: list[str]) -> None:
    from salt.cli import SaltCLI

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    SaltCLI(args=["fit", "-c", str(path), *extra])


def _probe(ckpt: Path, data: dict, out_json: Path, tracking_uri: str, extra: list[str]) -> dict:
    from salt.probes.cli import build_parser, run

    args = build_parser().parse_args(
        [
            "--ckpt", str(ckpt), "--train", data["probe_train"], "--val", data["val"],
            "--num-classes", str(data["num_classes"]), "-c", str(out_json.parent / "probe.yaml"),
            "--output-json", str(out_json), "--tracking-uri", tracking_uri,
            "--experiment", EXPERIMENT, "--device", "cpu", *extra,
        ]
    )  # fmt: skip
    return run(args)


def _checkpoints(run_dir: Path) -> list[Path]:
    """Periodic student checkpoints (`step=NNNNNNN.ckpt`), oldest first."""
    return sorted((run_dir / "checkpoints").glob("step=*.ckpt"))


def run_demo(out: Path, fast: bool = False) -> dict[str, Any]:
    """Run the six stages into `out`; returns (and writes) the summary."""
    from salt.data.synthetic import write_synthetic_shards
    from salt.probes.runs_cli import build_parser as runs_parser
    from salt.probes.runs_cli import compare

    t0 = time.time()
    size = SIZES["fast" if fast else "full"]
    out = out.resolve()
    root, cfg_dir, probe_dir = out / "runs", out / "configs", out / "probes"
    for d in (root, cfg_dir, probe_dir):
        d.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    n = 6

    _header(1, n, "synthetic motion-only videos (class = direction of motion)")
    n_train, n_probe, n_val = size["clips"]
    data = write_synthetic_shards(
        str(out / "shards"), num_train=n_train, num_probe_train=n_probe, num_val=n_val, seed=0
    )
    print(f"shards in {out / 'shards'}: {data['counts']}  ({data['num_classes']} classes)")

    _header(2, n, f"stage 1: tiny pixel teacher, {size['teacher_steps']} steps")
    steps = size["teacher_steps"]
    _fit(fit_config("teacher", root, data["train"], steps, steps), cfg_dir / "teacher.yaml", [])
    teacher_ckpt = root / EXPERIMENT / "teacher" / "checkpoints" / "last.ckpt"

    _header(3, n, f"stage 2: frozen teacher, tiny student, {size['student_steps']} steps")
    scfg = fit_config("student", root, data["train"], size["student_steps"], size["ckpt_every"])
    scfg["model"]["init_args"]["teacher"] = str(teacher_ckpt)
    _fit(scfg, cfg_dir / "student.yaml", [])
    student_dir = root / EXPERIMENT / "student"
    student_ckpts = _checkpoints(student_dir)

    _header(4, n, f"probes: teacher, {len(student_ckpts)} student checkpoints, random init")
    (probe_dir / "probe.yaml").write_text(
        yaml.safe_dump({**PROBE, "epochs": size["probe_epochs"]}, sort_keys=False)
    )
    results: dict[str, dict] = {}
    results["teacher"] = _probe(teacher_ckpt, data, probe_dir / "teacher.json", tracking_uri, [])
    for i, ckpt in enumerate(student_ckpts):
        last = i == len(student_ckpts) - 1
        extra = ["--baseline", "random"] if last else []
        results[ckpt.stem] = _probe(
            ckpt, data, probe_dir / f"{ckpt.stem}.json", tracking_uri, extra
        )
    final = results[student_ckpts[-1].stem]

    _header(5, n, "model selection: student training loss vs probe top-1")
    plot = out / "loss_vs_top1.png"
    cmp_args = runs_parser().parse_args(
        ["compare", "--experiment", EXPERIMENT, "--tracking-uri", tracking_uri, "--plot", str(plot)]
    )
    fit = compare(cmp_args)["fit"]

    _header(6, n, "summary")
    summary = {
        "probe_top1": {
            "random": final["random_top1"],
            "teacher": results["teacher"]["top1"],
            "student": final["top1"],
        },
        "r2": fit["r2"],
        "spearman": fit["spearman"],
        "student_checkpoints": [
            {
                "checkpoint": r["checkpoint"],
                "step": r["step"],
                "train_loss": r["train_loss"],
                "top1": r["top1"],
            }
            for k, r in results.items()
            if k != "teacher"
        ],  # fmt: skip
        "chance": 1.0 / data["num_classes"],
        "fast": fast,
        "tracking_uri": tracking_uri,
        "plots": [str(plot), *sorted(str(p) for p in probe_dir.glob("*_confusion.png"))],
        "seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary, out))
    return summary


def format_summary(s: dict[str, Any], out: Path) -> str:
    """The final table and what to open next."""
    top = s["probe_top1"]
    lines = [
        f"{'encoder':<22}{'probe top-1':>12}",
        f"{'random init':<22}{top['random']:>12.3f}",
        f"{'teacher (stage 1)':<22}{top['teacher']:>12.3f}",
        f"{'student (stage 2)':<22}{top['student']:>12.3f}",
        f"chance = {s['chance']:.3f}; student - random = {top['student'] - top['random']:+.3f}",
        f"student loss vs top-1 over {len(s['student_checkpoints'])} checkpoints: "
        f"R² = {s['r2']:.3f}, Spearman ρ = {s['spearman']:.3f}",
        f"done in {s['seconds']:.0f} s; summary: {out / 'summary.json'}",
        "",
        "Next:",
        f"  mlflow ui --backend-store-uri {s['tracking_uri']}",
        f"  open {s['plots'][0]}  (loss vs accuracy), {out / 'probes'}/*_confusion.png",
        f"  salt fit -c {out / 'configs' / 'teacher.yaml'}   (rerun a stage by hand)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="salt demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="salt_demo", help="output folder (default ./salt_demo)")
    p.add_argument("--fast", action="store_true", help="smaller data and fewer steps (CI)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if (out / "runs").exists() and any((out / "runs").iterdir()):
        print(f"salt demo: error: {out}/runs already holds a run; choose another --out",
              file=sys.stderr)  # fmt: skip
        return 2
    run_demo(out, fast=args.fast)
    return 0


if __name__ == "__main__":
    sys.exit(main())
