"""End-to-end `salt fit` throughput of a shipped config: real shards, workers, Lightning, bf16.

`step_throughput.py` times the training step alone; this times what a user gets from
`salt fit -c configs/student/vitl16.yaml`: decoding workers, the Trainer loop, logging and the
shipped settings, read from the module's own `train/clips_per_s` and `train/data_wait_s` meters
(salt/module_base.py). Each variant runs in its own process (clean compile caches and memory peak).

    python benchmarks/fit_throughput.py --json fit.json                 # on a GPU machine
    python benchmarks/fit_throughput.py --smoke                         # CPU plumbing check

Shards: synthetic motion clips (`salt.data.synthetic`) at the config's crop size, written once to
--workdir. Student configs get a random-init teacher of the config's encoder (speed does not
depend on the teacher's weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from child import print_result, run_child

REPO = Path(__file__).resolve().parents[1]

# name -> extra `salt fit` arguments on top of the shipped config
CKPT, NO_CKPT = (
    ["--model.init_args.act_checkpoint", "true"],
    ["--model.init_args.act_checkpoint", "false"],
)
COMPILE, EAGER, CUDNN = (
    ["--model.init_args.compile", "true"],
    ["--model.init_args.compile", "false"],
    ["--model.init_args.cudnn_attention", "true"],
)
SETTINGS = ("act_checkpoint", "compile", "cudnn_attention")  # reported per variant, as fitted
VARIANTS = {
    "shipped": [],
    "ckpt": CKPT,
    "ckpt+cudnn": CKPT + CUDNN,
    "no-ckpt": NO_CKPT,
    "no-ckpt+cudnn": NO_CKPT + CUDNN,
    "compile": COMPILE,
    "compile+ckpt": COMPILE + CKPT,
    "compile+no-ckpt": COMPILE + NO_CKPT,
    "compile+no-ckpt+cudnn": COMPILE + NO_CKPT + CUDNN,
    "cudnn": CUDNN,
    "eager": EAGER,  # the shipped ViT configs compile; these are the eager counterparts
    "eager+no-ckpt": EAGER + NO_CKPT,
    "eager+ckpt": EAGER + CKPT,
    "no-pin": ["--data.pin_memory", "false"],
    "simple-profiler": ["--trainer.profiler", "simple"],
}


def make_shards(workdir: Path, size: int, frames: int, count: int) -> str:
    """Synthetic train shards at `size`² (written once, reused)."""
    from salt.data.synthetic import write_synthetic_shards

    out = workdir / f"shards_{size}_{frames}_{count}"
    info = out / "synthetic.json"
    if info.is_file():
        return json.loads(info.read_text())["train"]
    return write_synthetic_shards(
        str(out), num_train=count, num_probe_train=4, num_val=4, frames=frames, size=size,
        shard_size=max(1, count // 16),
    )["train"]  # fmt: skip


def _profiler_callback():  # noqa: ANN202 (pl imported lazily: the parent process does not need it)
    import pytorch_lightning as pl
    import torch

    class StepProfiler(pl.Callback):
        """Where a step's wall time goes: torch.profiler over 3 steps from `start`, CPU ops and
        CUDA kernels, written as text tables to `out`/profile.txt."""

        def __init__(self, start: int, out: Path) -> None:
            self.start, self.out, self.prof = start, out, None

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
            if trainer.global_step == self.start and self.prof is None:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts, record_shapes=False)
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if self.prof is None or trainer.global_step != self.start + 3:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            avg = self.prof.key_averages()
            self.out.mkdir(parents=True, exist_ok=True)
            text = f"3 steps from step {self.start}: {wall:.3f} s wall\n\nby CPU time\n"
            text += avg.table(sort_by="cpu_time_total", row_limit=60, max_name_column_width=70)
            if torch.cuda.is_available():
                text += "\n\nby CUDA time\n"
                text += avg.table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)
            (self.out / "profile.txt").write_text(text)
            self.prof = None
            print(f"profiled 3 steps: {wall:.3f} s -> {self.out}", flush=True)

    return StepProfiler


def run_one(args: argparse.Namespace) -> dict:
    """One `salt fit` of `args.config` + `args.extra`; the meters after warm-up."""
    import pytorch_lightning as pl
    import torch

    from salt.cli import SaltCLI

    StepProfiler = _profiler_callback()  # noqa: N806
    cli = SaltCLI(args=["-c", args.config, *args.extra], run=False)
    meters: list[tuple[int, float, float]] = []

    class Meter(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
            tp = module._throughput
            if tp is not None and (not meters or tp != meters[-1][1:]):
                meters.append((trainer.global_step, *tp))

    cli.trainer.callbacks.append(Meter())
    if args.profile:
        cli.trainer.callbacks.append(StepProfiler(args.warmup_steps, Path(args.profile)))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    wall = time.time() - t0
    steady = [m for m in meters if m[0] >= args.warmup_steps] or meters
    return {
        "clips_per_s": statistics.median(m[1] for m in steady) if steady else None,
        "data_wait_s": statistics.median(m[2] for m in steady) if steady else None,
        "windows": len(steady),
        "by_window": [[m[0], round(m[1], 1)] for m in meters],  # (step, clips/s) of every window
        "steps": cli.trainer.global_step,
        "settings": {k: cli.model.hparams.get(k) for k in SETTINGS},
        "wall_s": round(wall, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)
        if torch.cuda.is_available()
        else None,
    }


def data_defaults() -> dict:
    """``VideoDataModule``'s constructor defaults (what a config leaves out)."""
    import inspect

    from salt.data import VideoDataModule

    params = inspect.signature(VideoDataModule).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs/student/vitl16.yaml"))
    p.add_argument("--variants", default="shipped,ckpt,compile")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--warmup-steps", type=int, default=30, help="meters before this are dropped")
    p.add_argument("--clips", type=int, default=160)
    p.add_argument("--workdir", default="/tmp/salt_fit_bench")
    p.add_argument("--deadline", type=float, default=None, help="unix time: skip what won't fit")
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="vit_test at 64² on CPU (plumbing only)")
    p.add_argument("--profile", default=None, help="DIR: torch.profiler tables of 3 steps")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("extra", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.one:
        print_result(run_one(args))
        return

    import yaml

    cfg = yaml.safe_load(Path(args.config).read_text())
    init = cfg["model"]["init_args"]
    data = {**data_defaults(), **(cfg.get("data") or {})}  # shipped configs are override-only
    encoder, size, frames = init["encoder"], data["crop_size"], data["frames_per_clip"]
    base = []
    if args.smoke:
        encoder, size, frames = "vit_test", 64, 8
        base += ["--model.init_args.encoder", encoder, "--data.crop_size", "64",
                 "--data.frames_per_clip", "8", "--data.frame_step", "2",
                 "--trainer.accelerator", "cpu", "--trainer.precision", "32",
                 "--data.num_workers", "1", "--data.batch_size", "4"]  # fmt: skip
        if "predictor_dim" in init or "student" in args.config:
            base += ["--model.init_args.predictor_dim", "32", "--model.init_args.predictor_depth",
                     "1", "--model.init_args.predictor_heads", "2",
                     "--model.init_args.predictor_mlp_hidden", "64"]  # fmt: skip
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    span = (frames - 1) * data.get("frame_step", 4) + 1
    t0 = time.time()
    shards = make_shards(work, size, span + 3, args.clips)
    print(f"shards ready in {time.time() - t0:.0f} s: {shards}", flush=True)
    base += ["--data.train_shards", shards, "--trainer.max_steps", str(args.steps),
             "--trainer.log_every_n_steps", "10", "--trainer.enable_progress_bar", "false",
             "--tracking", "false", "--checkpoint_every", str(10**9),
             "--trainer.default_root_dir", str(work / "runs"),
             "--data.epoch_length", str(args.steps),
             "--model.init_args.warmup_steps", str(args.steps // 4)]  # fmt: skip
    if cfg["model"]["class_path"].endswith("StudentModule"):
        from bench_setup import make_teacher_file  # imports torch: only where a teacher is needed

        teacher = make_teacher_file(
            work / f"teacher_{encoder}_{size}_{frames}.safetensors", encoder, size, frames
        )
        base += ["--model.init_args.teacher", str(teacher)]

    rows = {}
    for name in args.variants.split(","):
        if args.deadline and time.time() > args.deadline - 60:
            rows[name] = {"skipped": "deadline"}
            continue
        prof = ["--profile", str(Path(args.profile) / name)] if args.profile else []
        cmd = [sys.executable, __file__, "--one", "--warmup-steps", str(args.warmup_steps),
               "--config", args.config, *prof, "--", *base, *VARIANTS[name]]  # fmt: skip
        timeout = None if args.deadline is None else max(30, args.deadline - time.time())
        child = run_child(cmd, timeout=timeout)
        if args.profile:  # the child's log beside its profile (Lightning's hook timings)
            (Path(args.profile) / name).mkdir(parents=True, exist_ok=True)
            (Path(args.profile) / name / "log.txt").write_text(child.stdout + child.stderr)
        if child.timed_out:
            rows[name] = {"error": "timeout"}
        elif child.results:
            rows[name] = child.results[-1]
        else:
            rows[name] = {"error": (child.stderr or child.stdout)[-1500:]}
        print(name, json.dumps(rows[name])[:2000], flush=True)

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(
        f"\n`salt fit -c {Path(args.config).resolve().relative_to(REPO)}` end to end, {args.steps} steps, "
        f"median of 10-step windows from step {args.warmup_steps}; {device}, torch "
        f"{torch.__version__}"
    )
    print("| variant | clips/s | data wait s/step | peak GiB | wall s |\n|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        if "clips_per_s" in r and r["clips_per_s"] is not None:
            print(
                f"| {name} | {r['clips_per_s']:.1f} | {r['data_wait_s']:.3f} | "
                f"{r['peak_gib']} | {r['wall_s']} |"
            )
        else:
            print(f"| {name} | {r.get('skipped') or 'failed'} | | | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "torch": torch.__version__,
                                               "config": args.config, "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
