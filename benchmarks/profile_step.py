"""Kernel profile of a few training steps: where the GPU time goes (torch.profiler).

Writes the full ``key_averages`` table to a file and returns a summary: the top kernels by GPU
time, GPU time by category (matmul, attention, norm, elementwise/other, optimizer), and how much
of the step's wall time the GPU was busy (a low figure means launch- or host-bound steps).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

CATEGORIES = (  # first match wins; kernel names of cuBLAS/cuDNN/flash/ATen on Hopper
    ("conv", re.compile(r"convolve|wgrad|dgrad|nchwToNhwc|nhwcToNchw", re.I)),
    ("attention", re.compile(r"sdpa|flash|fmha|attention", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|xmma|cutlass|wgmma|splitK", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor", re.I)),
    ("layernorm", re.compile(r"layer_norm|GammaBeta", re.I)),
    ("reduce", re.compile(r"reduce_kernel", re.I)),
    ("copy/cat/index", re.compile(r"copy_kernel|CatArray|index|gather|scatter|flip", re.I)),
)


def categorize(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if pattern.search(name):
            return cat
    return "elementwise"


def _self_device_us(evt: Any) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def _device_total_us(evt: Any) -> float:
    for attr in ("device_time_total", "cuda_time_total"):
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def profile_steps(
    step: Callable[[int], Any], device: torch.device, out_file: Path, step_ms: float, n: int = 3
) -> dict:
    """Profile ``n`` steps; write the table to ``out_file``; return a JSON-able summary."""
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            step(1000 + i)
        torch.cuda.synchronize(device)
    averages = prof.key_averages()
    kernels = [e for e in averages if _self_device_us(e) > 0 and e.device_type.name == "CUDA"]
    if not kernels:  # older/newer profilers mark device events differently
        kernels = [e for e in averages if _self_device_us(e) > 0]
    total_us = sum(_self_device_us(e) for e in kernels)
    by_cat: dict[str, float] = {}
    for e in kernels:
        cat = categorize(e.key)
        by_cat[cat] = by_cat.get(cat, 0.0) + _self_device_us(e)
    top = sorted(kernels, key=_self_device_us, reverse=True)[:20]
    ops = [e for e in averages if e.key.startswith("aten::") and _device_total_us(e) > 0]
    top_ops = [
        {"op": e.key, "ms_per_step": _device_total_us(e) / 1e3 / n, "calls_per_step": e.count / n}
        for e in sorted(ops, key=_device_total_us, reverse=True)[:15]
    ]
    rows = [
        {
            "kernel": e.key[:110],
            "ms_per_step": _self_device_us(e) / 1e3 / n,
            "calls_per_step": e.count / n,
            "share": _self_device_us(e) / total_us if total_us else 0.0,
        }
        for e in top
    ]
    sort_key = "self_device_time_total"
    try:
        table = averages.table(sort_by=sort_key, row_limit=60)
    except Exception:
        table = averages.table(sort_by="self_cuda_time_total", row_limit=60)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(table)
    gpu_ms = total_us / 1e3 / n
    summary = {
        "gpu_busy_ms_per_step": gpu_ms,
        "gpu_busy_fraction": gpu_ms / step_ms if step_ms else None,
        "kernel_launches_per_step": sum(e.count for e in kernels) / n,
        "by_category_ms": {
            k: v / 1e3 / n for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])
        },
        "top_kernels": rows,
        "top_aten_ops": top_ops,
        "table_file": str(out_file),
    }
    print(
        f"   profile: GPU busy {gpu_ms:.1f} ms/step of {step_ms:.1f} ms; by category (ms/step): "
        + ", ".join(f"{k} {v:.1f}" for k, v in summary["by_category_ms"].items()),
        flush=True,
    )
    print(
        "   aten ops (device ms/step incl. children): "
        + ", ".join(f"{o['op'][6:]} {o['ms_per_step']:.1f}" for o in top_ops[:12]),
        flush=True,
    )
    for r in rows[:12]:
        print(
            f"   {r['ms_per_step']:8.2f} ms {r['calls_per_step']:6.0f}x {r['share']:6.1%}  "
            f"{r['kernel']}",
            flush=True,
        )
    return summary
