"""`salt demo`: the whole two-stage pipeline, tiny, on a laptop CPU, from the shipped configs.

    salt demo [--out DIR] [--fast]

1. synthesize the motion-only dataset (pretraining, probe-train and validation shards);
2. stage 1: train a tiny pixel teacher (`salt fit` on configs/demo/teacher.yaml);
3. stage 2: freeze it and train a tiny student (configs/demo/student.yaml), saving several
   checkpoints;
4. probe the teacher, every student checkpoint and a random-init encoder (`salt-probe` with
   configs/probe/tiny.yaml updated by configs/demo/probe.yaml);
5. relate the students' training loss to their probe accuracy (`salt-runs compare`);
6. print the final table and write `DIR/summary.json` and the plots.

The recipe lives only in those YAML files (package data `salt.configs`); this module adds the run's
paths and, for `--fast`, fewer steps. Everything is logged to one MLflow sqlite store in
`DIR/runs/mlflow.db`, and the configs this run used are written to `DIR/configs/`, so
`salt fit -c DIR/configs/teacher.yaml` reproduces a stage by hand.

Two settings differ from the paper's, because of what this dataset is (measured on it). The class
is the direction of motion of a random texture: a single frame is at chance, and a patch of
texture cannot be predicted from its spatial neighbours. (1) Masks: the paper's multi-block masks
span the whole clip in time, so the only route to a masked tubelet would be spatial and there is
nothing to learn (the teacher's loss sticks at ≈ 0.78 and its features collapse); the demo masks
the frames of one contiguous half of the clip instead, so predicting them needs the motion.
(2) Probe: a linear probe on mean-pooled tokens, because an attentive probe reads motion out of
random-init tokens too (≈ 0.95 top-1): it would measure the probe, not the pretraining.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

EXPERIMENT = "salt-demo"
STAGES = ("teacher", "student")
# Run sizes: full (default) and --fast (CI). "clips" = (pretraining, probe-train, validation) of the
# synthetic dataset; the full run's steps and checkpoint interval are configs/demo/*.yaml's, --fast
# overrides them (its runs check the plumbing only, see FAST_NOTE).
SIZES: dict[str, dict[str, Any]] = {
    "full": {"clips": (512, 256, 128)},
    "fast": {"clips": (192, 96, 64), "teacher_steps": 200, "student_steps": 300,
             "ckpt_every": 100},
}  # fmt: skip


def config_dir() -> Path:
    """The shipped configs: package data ``salt.configs`` (the repository's ``configs/``), or the
    checkout's ``configs/`` where an older editable install does not map that package."""
    try:
        from importlib.resources import files

        return Path(str(files("salt.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs"


def shipped_config(name: str) -> dict[str, Any]:
    """``configs/<name>`` parsed (e.g. ``demo/teacher.yaml``)."""
    path = config_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"shipped config {name} not found under {config_dir()}")
    return yaml.safe_load(path.read_text())


def fit_config(
    stage: str,
    root: Path,
    shards: str,
    fast: bool = False,
    teacher: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """configs/demo/<stage>.yaml with this run's paths (and the --fast sizes, and ``seed`` as the
    run's and the data's seed where given)."""
    cfg = shipped_config(f"demo/{stage}.yaml")
    if seed is not None:
        cfg["seed_everything"] = cfg["data"]["seed"] = seed
    cfg["trainer"]["default_root_dir"] = str(root)
    cfg["data"]["train_shards"] = shards
    if fast:
        size = SIZES["fast"]
        steps = size[f"{stage}_steps"]
        cfg["trainer"]["max_steps"] = cfg["data"]["epoch_length"] = steps  # one bar per stage
        cfg["checkpoint_every"] = steps if stage == "teacher" else size["ckpt_every"]
    if stage == "student":
        cfg["model"]["init_args"]["teacher"] = teacher
    return cfg


def probe_config() -> dict[str, Any]:
    """The demo's probe protocol: configs/probe/tiny.yaml updated by configs/demo/probe.yaml."""
    return {**shipped_config("probe/tiny.yaml"), **shipped_config("demo/probe.yaml")}


def __getattr__(name: str) -> Any:
    """``MASKS``, ``PROBE``, ``PROBE_OVERRIDES``: the demo's masks and probe protocol (tiny.yaml and
    the demo's overrides), read from the shipped configs for code that imported them from here."""
    views = {
        "MASKS": lambda: shipped_config("demo/teacher.yaml")["model"]["init_args"]["masks"],
        "PROBE": lambda: shipped_config("probe/tiny.yaml"),
        "PROBE_OVERRIDES": lambda: shipped_config("demo/probe.yaml"),
    }
    if name in views:
        return views[name]()
    raise AttributeError(f"module 'salt.demo' has no attribute {name!r}")


# The probes' ops (a 64-wide encoder, linear heads on [B, 64] features) are too small to split:
# with 2 threads a probe of one checkpoint spent its time in thread hand-offs (measured on 2
# shared cores: 272 s with 2 threads, 89 s with 1, most of that start-up).
PROBE_THREADS = 1


def torch_threads(n: int) -> int:
    """Set torch's intra-op threads to ``n``; returns it."""
    import torch

    torch.set_num_threads(n)
    return n


def set_threads(busy_cores: int) -> int:
    """Intra-op threads for the main process: the cores left to it after `busy_cores` workers.

    More threads than free cores make OpenMP spin-wait against the decoding worker (measured on
    2 cores: a vit_test step took 2.4 s with 2 threads beside a worker, 0.23 s with 1).
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) - busy_cores)
    torch.set_num_threads(threads)
    return threads


class _Stages:
    """Prints numbered stage headers and keeps each stage's wall-clock seconds."""

    def __init__(self, total: int) -> None:
        self.total, self.seconds, self._open = total, {}, None

    def start(self, i: int, key: str, text: str) -> None:
        self.stop()
        self._open = (key, time.time())
        print(f"\n{'=' * 78}\n[{i}/{self.total}] {text}\n{'=' * 78}", flush=True)

    def stop(self) -> None:
        if self._open is not None:
            key, t = self._open
            self.seconds[key] = round(time.time() - t, 1)
            self._open = None


# Warnings every demo run would print that say nothing about it (the val loader without a
# validation_step is the DataModule's; `srun` on PATH is Lightning's Slurm hint).
_QUIET = ("The `srun` command is available", "You passed in a `val_dataloader`", "treespec")
# A progress bar redrawn every step costs ~25 ms of a ~55 ms vit_test step on 2 CPU cores. A run
# option, not a config value: configs stay usable with `--trainer.enable_progress_bar false`.
_PROGRESS = ["--trainer.callbacks+=TQDMProgressBar", "--trainer.callbacks.refresh_rate", "25"]


def _fit(cfg: dict, path: Path) -> None:
    """Write `cfg` to `path` and train it: `salt fit -c path` in-process."""
    from salt.fit_cli import fit

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with warnings.catch_warnings():
        for text in _QUIET:
            warnings.filterwarnings("ignore", message=f".*{re.escape(text)}")
        fit(["-c", str(path), *_PROGRESS])


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


def _cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds of this process and of its finished children (data workers):
    on a loaded machine these, not wall-clock time, say what the demo costs."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {"main": round(me.ru_utime + me.ru_stime, 1),
            "workers": round(kids.ru_utime + kids.ru_stime, 1)}  # fmt: skip


def _checkpoints(run_dir: Path) -> list[Path]:
    """Periodic student checkpoints (`step=NNNNNNN.ckpt`), oldest first."""
    return sorted((run_dir / "checkpoints").glob("step=*.ckpt"))


def run_demo(out: Path, fast: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run the six stages into `out` with `seed` (videos, initialisation, data order, masks);
    returns (and writes) the summary."""
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
    stages = _Stages(6)

    stages.start(1, "shards", "synthetic motion-only videos (class = direction of motion)")
    n_train, n_probe, n_val = size["clips"]
    data = write_synthetic_shards(
        str(out / "shards"), num_train=n_train, num_probe_train=n_probe, num_val=n_val, seed=seed
    )
    print(f"shards in {out / 'shards'}: {data['counts']}  ({data['num_classes']} classes)")

    teacher_cfg = fit_config("teacher", root, data["train"], fast, seed=seed)
    threads = set_threads(teacher_cfg["data"]["num_workers"])
    stages.start(
        2,
        "teacher",
        f"stage 1: tiny pixel teacher, {teacher_cfg['trainer']['max_steps']} steps "
        f"({threads} torch thread(s), {teacher_cfg['data']['num_workers']} data worker(s))",
    )
    _fit(teacher_cfg, cfg_dir / "teacher.yaml")
    teacher_ckpt = root / EXPERIMENT / "teacher" / "checkpoints" / "last.ckpt"

    student_cfg = fit_config(
        "student", root, data["train"], fast, teacher=str(teacher_ckpt), seed=seed
    )
    threads = set_threads(student_cfg["data"]["num_workers"])
    stages.start(
        3,
        "student",
        f"stage 2: frozen teacher, tiny student, {student_cfg['trainer']['max_steps']} steps",
    )
    _fit(student_cfg, cfg_dir / "student.yaml")
    student_ckpts = _checkpoints(root / EXPERIMENT / "student")

    probe = probe_config()
    torch_threads(PROBE_THREADS)
    stages.start(
        4,
        "probes",
        f"linear probes: teacher, {len(student_ckpts)} student checkpoints, random init",
    )
    (probe_dir / "probe.yaml").write_text(yaml.safe_dump(probe, sort_keys=False))
    results: dict[str, dict] = {}
    results["teacher"] = _probe(teacher_ckpt, data, probe_dir / "teacher.json", tracking_uri, [])
    for i, ckpt in enumerate(student_ckpts):
        extra = ["--baseline", "random"] if i == len(student_ckpts) - 1 else []
        results[ckpt.stem] = _probe(
            ckpt, data, probe_dir / f"{ckpt.stem}.json", tracking_uri, extra
        )
    final = results[student_ckpts[-1].stem]

    stages.start(5, "compare", "model selection: student training loss vs probe top-1")
    plot = out / "loss_vs_top1.png"
    cmp_args = runs_parser().parse_args(
        ["compare", "--experiment", EXPERIMENT, "--tracking-uri", tracking_uri, "--plot", str(plot)]
    )
    fit = compare(cmp_args)["fit"]

    stages.start(6, "summary", "summary")
    stages.stop()
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
        "probe": "linear head on mean-pooled frozen tokens (configs/demo/probe.yaml)",
        "chance": 1.0 / data["num_classes"],
        "fast": fast,
        "seed": seed,
        "threads": threads,
        "tracking_uri": tracking_uri,
        "plots": [str(plot), *sorted(str(p) for p in probe_dir.glob("*_confusion.png"))],
        "stage_seconds": stages.seconds,
        "cpu_seconds": _cpu_seconds(),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary, out))
    return summary


# Printed under a --fast table: its accuracies must not be read as a result (measured: students
# of 600-1000 steps stay at chance on this task over 3 seeds; experiments/demo_recipe/README.md).
FAST_NOTE = [
    "--fast checks the plumbing only: its runs are too short to learn motion (the student needs",
    "~1000 steps), so the accuracies above are noise; the default run (no --fast) is the result.",
]


def format_summary(s: dict[str, Any], out: Path) -> str:
    """The final table and what to open next."""
    top = s["probe_top1"]
    lines = [
        f"{'encoder':<22}{'linear-probe top-1':>20}",
        f"{'random init':<22}{top['random']:>20.3f}",
        f"{'teacher (stage 1)':<22}{top['teacher']:>20.3f}",
        f"{'student (stage 2)':<22}{top['student']:>20.3f}",
        f"chance = {s['chance']:.3f}; student - random = {top['student'] - top['random']:+.3f}",
        *(FAST_NOTE if s["fast"] else []),
        f"student loss vs top-1 over {len(s['student_checkpoints'])} checkpoints: "
        f"R² = {s['r2']:.3f}, Spearman ρ = {s['spearman']:.3f}",
        f"done in {s['seconds']:.0f} s (CPU: main {s['cpu_seconds']['main']:.0f} s, data workers "
        f"{s['cpu_seconds']['workers']:.0f} s); summary: {out / 'summary.json'}",
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
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the videos, initialisation, data order and masks (default 0)")  # fmt: skip
    args = p.parse_args(argv)
    out = Path(args.out)
    if (out / "runs").exists() and any((out / "runs").iterdir()):
        print(f"salt demo: error: {out}/runs already holds a run; choose another --out",
              file=sys.stderr)  # fmt: skip
        return 2
    run_demo(out, fast=args.fast, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
