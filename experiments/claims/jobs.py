"""The study's jobs: what one worker process does for one run (train, then probe its checkpoints).

A worker builds the dataset once (``init_worker``: the same clips in every worker, from the data
seed) and then runs job specs (plain dicts made by run.py) through ``run_job``, which returns a
JSON-able result and also writes it to ``<workdir>/jobs/<name>.json``. Kinds:

- ``plan``: FLOPs per optimizer step of every run kind, counted with the benchmarks' counter
  (``benchmarks/perf.py: count_flops`` over ``bench_setup.forward_backward``) at the real batch and
  mask draws, and measured ms per step (``perf.time_steps``);
- ``teacher`` / ``student`` / ``ema``: train (fitting.py), then probe the checkpoints asked for;
- ``probe``: probe checkpoints another job wrote (the chosen EMA cell's curve);
- ``random``: probe a random-init encoder.

Module settings come from ``spec["cfg"]`` (see run.py ``build_config``); sizes by name from
``SIZES``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parents[1] / "benchmarks"))  # perf, bench_setup (after ours)

from evaluate import ProbeData, probe  # noqa: E402
from motion import MotionTask, generate, shuffle_frames, single_frame  # noqa: E402

# Encoder sizes of the study (width, depth, heads, MLP): ViT-Ti and ViT-S, and two for the smoke.
SIZES = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_hidden_dim": 768},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_hidden_dim": 1536},
    "test": {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_hidden_dim": 256},
    "test2": {"embed_dim": 96, "depth": 2, "num_heads": 4, "mlp_hidden_dim": 384},
}

_STATE: dict[str, Any] = {}  # per worker process: config, device, clips


def init_worker(cfg: dict) -> None:
    """Make the dataset on this worker's device (once per process)."""
    import logging
    import warnings

    import pytorch_lightning  # noqa: F401 - sets its loggers' levels on import; ours come after

    torch.set_num_threads(cfg["threads"])
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore",
        ".*(srun|val_dataloader|treespec|LeafSpec|does not have many workers|IterableDataset).*",
    )
    device = torch.device(cfg["device"])
    if device.type == "cuda":
        # as salt fit does (SaltModule.setup): cuDNN attention plans every new mask length anew,
        # which would also distort the plan job's step times
        torch.backends.cuda.enable_cudnn_sdp(False)
    task = MotionTask(**cfg["task"])
    seed = cfg["data_seed"]
    train, _ = generate(task, cfg["num_train"], seed, "train", device)
    ptv, ptl = generate(task, cfg["num_probe"], seed, "probe_train", device)
    vv, vl = generate(task, cfg["num_val"], seed, "val", device)
    _STATE.update(cfg=cfg, device=device, train=train, probe=ProbeData(ptv, ptl, vv, vl))


# ----------------------------------------------------------------------------- modules
def _common(cfg: dict, size: str) -> dict:
    enc = {**SIZES[size], "patch_size": cfg["patch"], "tubelet_size": cfg["tubelet"]}
    return {
        "encoder": "vit_small",  # the registry row; SIZES overrides its dimensions
        "encoder_kwargs": enc,
        "img_size": cfg["task"]["size"],
        "num_frames": cfg["task"]["frames"],
        "health_every": cfg["health_every"],
        "compile": cfg["compile"],
    }


def _warmup(steps: int, fraction: float) -> int:
    return min(max(1, round(fraction * steps)), steps - 1)


def build(kind: str, cfg: dict, steps: int, **kw: Any):
    """The LightningModule of one run kind, from its real constructor."""
    from salt.ema import EMAModule
    from salt.student import StudentModule
    from salt.teacher import TeacherModule

    p = cfg["predictor"]
    warm = _warmup(steps, cfg["warmup_fraction"])
    if kind == "teacher":
        dec = {f"decoder_{k}": v for k, v in p.items()}
        return TeacherModule(**_common(cfg, cfg["teacher_size"]), **dec, warmup_steps=warm)
    pred = {f"predictor_{k}": v for k, v in p.items()}
    if kind == "student":
        return StudentModule(
            **_common(cfg, kw["size"]), teacher=kw["teacher"], **pred, warmup_steps=warm
        )
    if kind == "ema":  # V-JEPA 2's recipe (EMAModule defaults), grid cell's momentum and peak lr
        lr = kw["lr"]
        return EMAModule(
            **_common(cfg, cfg["teacher_size"]), **pred, warmup_steps=warm,
            ema_momentum=kw["momentum"], lr=lr, start_lr=lr * 1e-4 / 5.25e-4,
        )  # fmt: skip
    raise ValueError(f"unknown run kind {kind!r}")


def _random_teacher_file(cfg: dict, path: Path) -> Path:
    """An untrained stage-1 checkpoint (what a student of the plan job needs to exist)."""
    if not path.is_file():
        module = build("teacher", cfg, steps=10)
        torch.save({"state_dict": module.state_dict(), "salt": module.checkpoint_metadata()}, path)
    return path


# ----------------------------------------------------------------------------- jobs
def run_job(spec: dict) -> dict:
    """Run one job spec; never raises (an error is recorded in the result)."""
    t0 = time.time()
    out = {k: v for k, v in spec.items() if k not in ("cfg",)}
    try:
        torch.manual_seed(spec.get("seed", 0))
        out.update(_JOBS[spec["kind"]](spec))
        out["status"] = "done"
    except Exception as e:  # recorded, reported; the study goes on without this run
        out.update(
            status="error", error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-3000:]
        )
    out["job_wall_s"] = round(time.time() - t0, 2)
    path = Path(spec["cfg"]["workdir"]) / "jobs" / f"{spec['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(path)
    return out


def _plan(spec: dict) -> dict:
    import perf
    from bench_setup import forward_backward, make_train_step

    cfg, device = spec["cfg"], _STATE["device"]
    B = cfg["batch_size"]
    teacher_file = _random_teacher_file(cfg, Path(cfg["workdir"]) / "random_teacher.ckpt")
    kinds = {"teacher": ("teacher", {})}
    for size in cfg["student_sizes"]:
        kinds[f"student-{size}"] = ("student", {"size": size, "teacher": str(teacher_file)})
    kinds["ema"] = ("ema", {"momentum": 0.999, "lr": 5.25e-4})
    flops, ms = {}, {}
    for name, (kind, kw) in kinds.items():
        module = build(kind, cfg, steps=1000, **kw).to(device).train()
        if hasattr(module, "teacher_on"):
            module.teacher_on(device)
        collator = module.build_mask_collator(seed=1)
        batches = [
            {
                "video": _STATE["train"][:B],
                "masks": [(c.to(device), t.to(device)) for c, t in collator(B)],
            }
            for _ in range(cfg["plan_batches"])
        ]
        amp = device.type == "cuda"
        flops[name] = _mean_flops(perf, forward_backward, module, batches, device, amp)
        step = make_train_step(module, batches, device, amp=amp)
        times = perf.time_steps(step, device, warmup=cfg["plan_warmup"], steps=cfg["plan_steps"])
        ms[name] = perf.summarize_ms(times)["median_ms"]
    return {"flops_per_step": flops, "ms_per_step": ms, "device_info": perf.device_info(device)}


def _mean_flops(perf, forward_backward, module, batches, device, amp: bool) -> float:
    """Mean counted FLOPs of forward + backward over the batches (benchmarks' counter)."""
    total = sum(
        perf.count_flops(lambda b=b: forward_backward(module, b, device, amp)) for b in batches
    )
    return total / len(batches)


def _probe_ckpts(spec: dict, paths: list[str], flops_per_step: float) -> list[dict]:
    """Probe each checkpoint (the EMA target encoder by default); stops at the deadline."""
    from salt.encoder_io import load_encoder

    cfg, device = spec["cfg"], _STATE["device"]
    pcfg = _protocol(cfg)
    rows = []
    for path in paths[-1:] + paths[:-1]:  # the final checkpoint first: the claims need it most
        if spec.get("probe_deadline") and time.time() > spec["probe_deadline"]:
            break
        encoder, meta = load_encoder(path)
        res = probe(encoder, _STATE["probe"], pcfg, cfg["task"]["num_classes"],
                    mean=meta["mean"], std=meta["std"], device=device)  # fmt: skip
        rows.append({"path": path, "step": meta["step"], "train_loss": meta["train_loss"],
                     "which": meta["which"], "flops": flops_per_step * meta["step"], **res})  # fmt: skip
    return sorted(rows, key=lambda r: r["step"])


def _protocol(cfg: dict):
    from evaluate import default_protocol

    return default_protocol(**cfg["probe"])


def _train(spec: dict) -> dict:
    from fitting import fit

    cfg, device = spec["cfg"], _STATE["device"]
    kind, steps = spec["kind"], int(spec["steps"])
    kw = {k: spec[k] for k in ("size", "teacher", "momentum", "lr") if k in spec}
    torch.manual_seed(spec["seed"])
    with torch.device(device):
        module = build(kind, cfg, steps, **kw)
    run = fit(
        module, _STATE["train"], steps=steps, batch_size=cfg["batch_size"],
        checkpoints=cfg["checkpoints"], run_dir=Path(cfg["workdir"]) / "runs" / spec["name"],
        seed=spec["seed"], deadline=spec.get("train_deadline"), num_workers=cfg["loader_workers"],
    )  # fmt: skip
    paths = run["checkpoints"] if spec.get("probe_all") else run["checkpoints"][-1:]
    fps = float(spec["flops_per_step"])
    rows = _probe_ckpts(spec, paths, fps)
    out = {**run, "flops": fps * run["steps_done"], "probes": rows}
    if spec.get("with_controls") and rows:
        out["controls"] = _controls(spec, run["checkpoints"][-1])
    return out


def _controls(spec: dict, path: str | None) -> dict:
    """Probes of single-frame and frame-shuffled clips (an encoder from ``path``, or random)."""
    from salt.encoder_io import load_encoder

    cfg, device = spec["cfg"], _STATE["device"]
    if path is None:
        encoder, meta = _random_encoder(spec)
    else:
        encoder, meta = load_encoder(path)
    out = {}
    for name, fn in (("single_frame", single_frame), ("shuffled", shuffle_frames)):
        if spec.get("probe_deadline") and time.time() > spec["probe_deadline"]:
            break
        data = _STATE["probe"].transformed(fn)
        out[name] = probe(encoder, data, _protocol(cfg), cfg["task"]["num_classes"],
                          mean=meta["mean"], std=meta["std"], device=device)  # fmt: skip
    return out


def _random_encoder(spec: dict):
    from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        module = build("teacher", spec["cfg"], steps=10)
    return module.encoder.eval(), {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def _random(spec: dict) -> dict:
    cfg, device = spec["cfg"], _STATE["device"]
    encoder, meta = _random_encoder(spec)
    res = probe(encoder, _STATE["probe"], _protocol(cfg), cfg["task"]["num_classes"],
                mean=meta["mean"], std=meta["std"], device=device)  # fmt: skip
    out = {"probes": [{"step": 0, "train_loss": None, "flops": 0.0, **res}]}
    if spec.get("with_controls"):
        out["controls"] = _controls(spec, None)
    return out


def _probe_only(spec: dict) -> dict:
    paths = [p for p in spec["paths"] if p not in set(spec.get("skip", []))]
    return {"probes": _probe_ckpts(spec, paths, float(spec["flops_per_step"]))}


_JOBS = {
    "plan": _plan,
    "teacher": _train,
    "student": _train,
    "ema": _train,
    "random": _random,
    "probe": _probe_only,
}
