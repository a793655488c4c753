"""Measurement utilities shared by the benchmarks: step timing, FLOP counting, matmul peak, memory.

Why a separate file: ``step_throughput.py`` and ``multi_gpu.py`` must time, count and report in
exactly the same way, so a figure in one table means the same as in the other.

Conventions (benchmarks/NOTES.md has the reasoning):
- Step time on CUDA is measured with CUDA events around each step (the device is asynchronous);
  on CPU with ``time.perf_counter``. The reported figure is the median of the timed steps.
- Model FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one forward+backward with
  activation checkpointing off, so recomputation is never counted as useful work.
- MFU = achieved model FLOP/s over a bf16 matmul peak measured in the same process
  (8192^3, random data, median of repeated products).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[int], Any], device: torch.device, warmup: int, steps: int
) -> list[float]:
    """Run ``step(i)`` ``warmup`` times untimed, then ``steps`` times timed.

    Args:
        step: one full training step; receives the step index.
        device: where the work runs; CUDA uses events, CPU a host clock.
        warmup: untimed steps first (compilation, cuDNN/cuBLAS heuristics, allocator warm-up).
        steps: timed steps.

    Returns:
        Per-step wall times in milliseconds, in order.
    """
    for i in range(warmup):
        step(i)
    synchronize(device)
    times: list[float] = []
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        for i in range(steps):
            starts[i].record()
            step(warmup + i)
            ends[i].record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    else:
        for i in range(steps):
            t0 = time.perf_counter()
            step(warmup + i)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def summarize_ms(times: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max-min)/median) of step times in ms."""
    med = statistics.median(times)
    return {
        "median_ms": med,
        "min_ms": min(times),
        "max_ms": max(times),
        "spread": (max(times) - min(times)) / med if med > 0 else 0.0,
    }


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matmul/conv/attention ops run by ``fn()`` (FlopCounterMode's accounting)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def flop_breakdown(fn: Callable[[], Any], top: int = 8) -> dict[str, int]:
    """The ``top`` ops by FLOPs for one call of ``fn()`` (to see where the work is)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    flat = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    return dict(sorted(flat.items(), key=lambda kv: -kv[1])[:top])


def matmul_peak_tflops(
    device: torch.device, n: int = 8192, reps: int = 20, dtype: torch.dtype = torch.bfloat16
) -> float:
    """Median TFLOP/s of an n^3 matmul on random data (the MFU denominator).

    Rotates between two input pairs so repeats do not reuse a cached result pattern; on CPU a tiny
    size keeps the smoke run fast (the figure is then meaningless, and labelled so by the caller).
    """
    if device.type != "cuda":
        n, reps = 256, 3
    g = torch.Generator(device=device).manual_seed(0)
    pairs = [
        (
            torch.randn(n, n, device=device, dtype=dtype, generator=g),
            torch.randn(n, n, device=device, dtype=dtype, generator=g),
        )
        for _ in range(2)
    ]
    for a, b in pairs:  # warm-up: cuBLAS handle, heuristics
        torch.mm(a, b)
    times = time_steps(lambda i: torch.mm(*pairs[i % 2]), device, warmup=3, steps=reps)
    return 2 * n**3 / (statistics.median(times) * 1e-3) / 1e12


def reset_peak_memory(device: torch.device) -> None:
    """Free cached blocks and zero the peak counter before a measured section."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak allocated memory since the last reset, GiB (None on CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def peak_reserved_gib(device: torch.device) -> float | None:
    """Peak reserved (allocator-held) memory since the last reset, GiB (None on CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_reserved(device) / 2**30


def is_oom(exc: BaseException) -> bool:
    """True for a CUDA out-of-memory error (also when wrapped by compile/Lightning)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return "out of memory" in str(exc).lower()


def device_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: device name, memory, torch/CUDA versions."""
    info: dict[str, Any] = {"torch": torch.__version__, "device_type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            total_memory_gib=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info
