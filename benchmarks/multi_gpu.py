"""1- vs 2-GPU DDP and FSDP for ViT-L and ViT-g students (ViT-L teacher): step time, memory, scaling.

Every case is a real ``Trainer.fit`` (``lightning_run.run_lightning``) of the
module `salt fit` builds, with the strategy `salt fit` uses (``salt.strategies.build_strategy``:
``SaltDDPStrategy`` with the frozen teacher on DDP's ignore list, ``SaltFSDPStrategy`` = FSDP2 per
block), launched by ``torchrun`` with one process per GPU. The per-GPU batch is the same on 1 and
on 2 GPUs (weak scaling), so

    scaling efficiency = (2-GPU clips/s) / (2 × 1-GPU clips/s) = t(1 GPU) / t(2 GPUs).

    python benchmarks/multi_gpu.py --json out.json              # every case, then a table
    python benchmarks/multi_gpu.py --device cpu --model vit_test --cases ddp:vit_test:1,ddp:vit_test:2

NVLink multicast stays off (NCCL_NVLS_ENABLE=0 etc.; set here for every child too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from child import print_result, run_child  # noqa: E402

SAFE_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}

# strategy:model:gpus -> per-GPU batch and activation checkpointing (DDP ViT-L runs without it,
# as its 1-GPU benchmark does; ViT-g needs it; the FSDP strategy switches it on itself).
CASE_SETTINGS = {
    ("ddp", "vit_large"): {"batch": 24, "act_ckpt": False},
    ("fsdp", "vit_large"): {"batch": 24, "act_ckpt": True},
    ("ddp", "vit_giant"): {"batch": 16, "act_ckpt": True},
    ("fsdp", "vit_giant"): {"batch": 16, "act_ckpt": True},
    ("ddp", "vit_test"): {"batch": 2, "act_ckpt": False},
    ("fsdp", "vit_test"): {"batch": 2, "act_ckpt": True},
}
DEFAULT_CASES = ",".join(
    f"{s}:{m}:{g}" for m in ("vit_large", "vit_giant") for s in ("ddp", "fsdp") for g in (1, 2)
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument(
        "--cases", default=None, help=f"strategy:model:gpus,... (default {DEFAULT_CASES})"
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=10, help="untimed steps (cover the 8 mask draws)")
    p.add_argument("--budget", type=float, default=None, help="seconds for all cases")
    p.add_argument("--deadline", type=float, default=None, help="unix time to stop by")
    p.add_argument("--json", default=None)
    p.add_argument("--workdir", default=os.environ.get("TMPDIR", "/tmp"))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def case_spec(case: str, args: argparse.Namespace) -> dict:
    strategy, model, gpus = case.split(":")
    settings = CASE_SETTINGS.get((strategy, model), {"batch": 16, "act_ckpt": True})
    spec = {
        "name": case,
        "kind": "lightning",
        "stage": "student",
        "strategy": strategy,
        "model": model,
        "teacher_model": "vit_test" if model == "vit_test" else "vit_large",
        "gpus": int(gpus),
        "steps": args.steps,
        "warmup": args.warmup,
        "attn": "sdpa",
        **settings,
    }
    if model == "vit_test":
        from variants import TINY_HEADS

        spec.update(img_size=64, num_frames=8, module_kwargs=TINY_HEADS)
    return spec


def run_one(spec: dict, device_type: str, workdir: Path) -> dict:
    """Child (one rank under torchrun): build strategy and module, fit, report this rank."""
    import torch
    from lightning_run import run_lightning

    from salt.strategies import build_strategy

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    kwargs = {}
    if spec["strategy"] == "fsdp":
        kwargs["activation_checkpointing"] = spec["act_ckpt"]
        if device_type == "cpu":
            kwargs["param_dtype"] = None
    strategy = build_strategy(spec["strategy"], **kwargs)
    spec = {**spec, "seed": int(os.environ.get("RANK", "0"))}  # different clips per rank
    res = run_lightning(
        spec, torch.device(device_type), workdir, strategy=strategy, devices=spec["gpus"]
    )
    return {**spec, **res, "rank": int(os.environ.get("RANK", "0"))}


def _launch(spec: dict, args: argparse.Namespace, timeout: float) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={spec['gpus']}",
        __file__,
        "--one",
        json.dumps(spec),
        "--device",
        args.device,
        "--workdir",
        args.workdir,
    ]
    env = {**os.environ, **SAFE_ENV, "PYTHONUNBUFFERED": "1"}
    child = run_child(cmd, timeout=timeout, env=env)
    if child.timed_out:
        return {**spec, "status": child.status()}
    ranks = child.results
    if child.returncode != 0 or len(ranks) != spec["gpus"]:
        tail = (child.stdout[-1500:] + "\n" + child.stderr[-3000:]).strip()
        print(tail, flush=True)
        return {**spec, "status": child.status()}
    ranks.sort(key=lambda r: r["rank"])
    out = {**spec, "status": "ok", "wall_s": child.wall_s}
    out["median_ms"] = max(r["median_ms"] for r in ranks)  # the slowest rank sets the pace
    out["spread"] = max(r["spread"] for r in ranks)
    out["peak_mem_gib"] = [r["peak_mem_gib"] or 0.0 for r in ranks]  # None on CPU
    out["peak_reserved_gib"] = [r["peak_reserved_gib"] for r in ranks]
    out["clips_per_s"] = spec["batch"] * spec["gpus"] / (out["median_ms"] * 1e-3)
    out["world_size"] = ranks[0]["world_size"]
    return out


def add_scaling(results: list[dict]) -> None:
    """Efficiency of each multi-GPU case against the 1-GPU case of the same strategy and model."""
    one = {
        (r["strategy"], r["model"]): r for r in results if r.get("gpus") == 1 and r.get("median_ms")
    }
    for r in results:
        base = one.get((r["strategy"], r["model"]))
        if base and r.get("median_ms") and r["gpus"] > 1:
            r["scaling_efficiency"] = r["clips_per_s"] / (r["gpus"] * base["clips_per_s"])


def format_table(results: list[dict]) -> str:
    head = (
        f"{'case':<20}{'GPUs':>5}{'B/GPU':>6} {'ckpt':<5}{'ms/step':>9}{'sprd':>6}"
        f"{'clips/s':>9}{'peak GiB/GPU':>15}{'scaling':>9}  status"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        mem = r.get("peak_mem_gib")
        mem_s = "/".join(f"{m:.1f}" for m in mem) if isinstance(mem, list) else "-"
        eff = r.get("scaling_efficiency")
        ms = r.get("median_ms")
        lines.append(
            f"{r['strategy'] + ' ' + r['model']:<20}{r['gpus']:>5}{r['batch']:>6} "
            f"{('on' if r.get('act_ckpt') else 'off'):<5}"
            f"{(f'{ms:.1f}' if ms else '-'):>9}"
            f"{(format(r['spread'], '.0%') if r.get('spread') is not None else '-'):>6}"
            f"{(format(r['clips_per_s'], '.1f') if r.get('clips_per_s') else '-'):>9}"
            f"{mem_s:>15}{(format(eff, '.0%') if eff else '-'):>9}  {str(r.get('status'))[:60]}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for k, v in SAFE_ENV.items():
        os.environ.setdefault(k, v)
    workdir = Path(args.workdir) / "salt_bench"
    if args.one:
        res = run_one(json.loads(args.one), args.device, workdir)
        print_result(res)
        return 0
    cases = (args.cases or DEFAULT_CASES).split(",")
    # perf_counter time at which to stop: --deadline (unix time, from run_gpu.sh) or --budget
    deadline = None
    if args.deadline:
        deadline = time.perf_counter() + (args.deadline - time.time())
    elif args.budget:
        deadline = time.perf_counter() + args.budget
    results = []
    for case in cases:
        spec = case_spec(case, args)
        remaining = deadline - time.perf_counter() if deadline else 600.0
        if remaining < 30:
            results.append({**spec, "status": "skipped: budget spent"})
            continue
        print(f"== {case}", flush=True)
        res = _launch(spec, args, min(remaining, 240.0))
        print(f"-- {case}: {res['status']} {res.get('median_ms', '')}", flush=True)
        results.append(res)
        add_scaling(results)
        if args.json:
            Path(args.json).write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1))
    print(format_table(results), flush=True)
    failed = [r for r in results if str(r.get("status", "")).startswith("failed")]
    return 1 if failed and args.device == "cpu" else 0


if __name__ == "__main__":
    sys.exit(main())
