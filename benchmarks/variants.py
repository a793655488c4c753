"""The benchmark variants of ``step_throughput.py`` and how each one runs (in one process).

A variant is a JSON-able dict (``kind`` plus settings), so the driver can hand it to a fresh
subprocess. Kinds:

- ``peak``: bf16 8192^3 matmul TFLOP/s (the MFU denominator).
- ``step``: one stage (``student`` | ``teacher``) at one setting of activation checkpointing,
  ``torch.compile`` and attention backend: median step time, clips/s, model TFLOP/step (counted
  eagerly with checkpointing off), MFU, peak memory; optionally a kernel profile.
- ``memory``: one student size; doubling batch sizes until CUDA runs out of memory.
- ``lightning``: ``Trainer.fit`` on the same synthetic batches (what the Trainer loop adds).
- ``vjepa2``: V-JEPA 2's own step from a checkout (``peers/vjepa2_step.py``).
- ``attn`` / ``sync``: attention kernels at the step's shapes, host syncs per step
  (``perf_rows.py``); ``fp8_gate``: the FP8 teacher's quality gate (``fp8_gate.py``).

A step variant's ``overrides`` go to the module's constructor (``compile_scope``,
``compile_mode``, ``teacher_precision``, ...); ``perf_suite.py`` lists the ``perf`` suite.
"""

from __future__ import annotations

import gc
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

import perf
import torch
from bench_setup import (
    autocast_for,
    build_for,
    forward_backward,
    make_train_step,
    prepare_like_fit,
    restore_act_checkpoint,
    sdpa_context,
    set_act_checkpoint,
    synthetic_batches,
)
from child import print_result

# configs/demo/*.yaml: predictor / pixel decoder 2 blocks × 48 wide (the CPU smoke run).
TINY_HEADS = {
    "student": {
        "predictor_dim": 48,
        "predictor_depth": 2,
        "predictor_heads": 4,
        "predictor_mlp_hidden": 96,
    },
    "teacher": {
        "decoder_dim": 48,
        "decoder_depth": 2,
        "decoder_heads": 4,
        "decoder_mlp_hidden": 96,
    },
}


def default_variants(args: Any) -> list[dict]:
    """The default variant list, most important first (a time budget cuts from the end)."""
    base = {
        "model": args.model,
        "teacher_model": args.teacher_model,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "max_norm": args.max_norm,
    }
    if args.model == "vit_test":  # CI smoke: the demo configs' tiny predictor/decoder and clips
        base.update(img_size=64, num_frames=8, module_kwargs=TINY_HEADS)
    st = {
        **base,
        "kind": "step",
        "stage": "student",
        "attn": "sdpa",
        "act_ckpt": False,
        "compile": False,
    }
    te = {**st, "stage": "teacher", "model": args.teacher_model}
    if args.device == "cpu":  # smoke run: the two stages, eager, plus the peak probe
        return [
            {"name": "peak", "kind": "peak"},
            {**st, "name": "student", "flops": True},
            {**te, "name": "teacher", "flops": True},
        ]
    big = args.model == "vit_large"
    mem = {**base, "kind": "memory", "stage": "student"}
    out = [
        {"name": "peak", "kind": "peak", "limit_s": 60},
        {**st, "name": "student", "flops": True, "profile": True, "limit_s": 120},
        {
            **st,
            "name": "student_compile",
            "compile": True,
            "flops": True,
            "profile": True,
            "limit_s": 240,
        },
        {**te, "name": "teacher", "flops": True, "profile": True, "limit_s": 120},
        {
            **te,
            "name": "teacher_compile",
            "compile": True,
            "flops": True,
            "profile": True,
            "limit_s": 240,
        },
        {**st, "name": "student_ckpt", "act_ckpt": True, "flops": True, "limit_s": 120},
        {
            **st,
            "name": "student_compile_ckpt",
            "compile": True,
            "act_ckpt": True,
            "flops": True,
            "limit_s": 240,
        },
        # diagnostic: FlashAttention-2 instead of PyTorch's pick (cuDNN on H100), which builds a
        # plan per new sequence length (see cold_ms)
        {**st, "name": "student_flash", "sdpa_backend": "flash", "flops": True, "limit_s": 120},
    ]
    if big:
        out += [
            {
                **mem,
                "name": "mem_vit_gigantic_ckpt",
                "model": "vit_gigantic",
                "act_ckpt": True,
                "batches": [8, 16, 32, 64, 128],
                "limit_s": 150,
            },
            {
                **mem,
                "name": "mem_vit_gigantic",
                "model": "vit_gigantic",
                "act_ckpt": False,
                "batches": [8, 16, 24, 32],
                "limit_s": 120,
            },
            {
                **mem,
                "name": "mem_vit_huge",
                "model": "vit_huge",
                "act_ckpt": False,
                "batches": [8, 16, 24, 32, 48],
                "limit_s": 120,
            },
            {
                **mem,
                "name": "mem_vit_giant_ckpt",
                "model": "vit_giant",
                "act_ckpt": True,
                "batches": [16, 32, 64, 128, 192],
                "limit_s": 150,
            },
            {
                **mem,
                "name": "mem_vit_giant",
                "model": "vit_giant",
                "act_ckpt": False,
                "batches": [8, 16, 24, 32, 48],
                "limit_s": 120,
            },
            {
                **mem,
                "name": "mem_vit_huge_ckpt",
                "model": "vit_huge",
                "act_ckpt": True,
                "batches": [16, 32, 64, 128],
                "limit_s": 150,
            },
        ]
    out += [
        # diagnostics: is the stage-1 step host-bound at B=24 (GPU busy ≈ 2/3 of the step)?
        # and the compiled student with FlashAttention-2 instead of cuDNN attention
        {
            **te,
            "name": "teacher_compile_b48",
            "compile": True,
            "batch": 48,
            "flops": True,
            "limit_s": 150,
        },
        {
            **st,
            "name": "student_compile_flash",
            "compile": True,
            "sdpa_backend": "flash",
            "flops": True,
            "limit_s": 240,
        },
        {**st, "name": "student_auto", "attn": "auto", "flops": True, "limit_s": 120},
        # Trainer.fit itself; warm-up covers the 8 mask draws it cycles over
        {**st, "kind": "lightning", "name": "student_lightning", "warmup": 10, "limit_s": 150},
        {"name": "peak_end", "kind": "peak", "limit_s": 60},
    ]
    return out


def run_variant(spec: dict, device: torch.device, workdir: Path) -> dict:
    """Run one variant in this process; never raises (errors become ``status``)."""
    out: dict[str, Any] = {**spec, "device_info": perf.device_info(device)}
    t0 = time.perf_counter()
    try:
        kind = spec["kind"]
        if kind == "peak":
            out["peak_tflops"] = perf.matmul_peak_tflops(device)
            out["peak_n"] = 8192 if device.type == "cuda" else 256  # perf.matmul_peak_tflops
        elif kind == "step":
            out.update(_run_step(spec, device, workdir))
        elif kind == "memory":
            out.update(_run_memory(spec, device, workdir))
        elif kind == "lightning":
            from lightning_run import run_lightning

            out.update(run_lightning(spec, device, workdir))
        elif kind == "vjepa2":
            from peers.vjepa2_step import run as run_vjepa2

            out.update(run_vjepa2(spec, device))
        elif kind == "attn":
            from perf_rows import attention_row

            out.update(attention_row(spec, device, workdir))
        elif kind == "sync":
            from perf_rows import sync_row

            out.update(sync_row(spec, device, workdir))
        elif kind == "fp8_gate":
            import fp8_gate

            out.update(fp8_gate.run(fp8_gate.parse_args(spec.get("argv", []))))
        else:
            raise ValueError(f"unknown variant kind {kind!r}")
        out.setdefault("status", "ok")
    except Exception as exc:  # reported in the table; the driver goes on with the next variant
        out["status"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        out["traceback"] = traceback.format_exc()[-3000:]
        print(out["traceback"], flush=True)
    out["variant_s"] = round(time.perf_counter() - t0, 1)
    return out


def count_step_flops(
    module, batches: list[dict], device: torch.device, amp: bool = True, n: int = 2
) -> float:
    """Mean FLOPs of forward+backward over the first ``n`` batches, checkpointing off."""
    saved = set_act_checkpoint(module, False)
    try:
        counts = [
            perf.count_flops(lambda b=b: forward_backward(module, b, device, amp))
            for b in batches[:n]
        ]
    finally:
        restore_act_checkpoint(saved)
    return statistics.mean(counts)


def _mask_sizes(batches: list[dict]) -> list[list[list[int]]]:
    return [[[c.shape[1], t.shape[1]] for c, t in b["masks"]] for b in batches]


def _amp(spec: dict, device: torch.device) -> bool:
    """bf16 autocast as `salt fit` runs on GPUs (precision bf16-mixed); fp32 on CPU (the demo)."""
    return bool(spec.get("amp", device.type == "cuda"))


def _run_step(spec: dict, device: torch.device, workdir: Path) -> dict:
    amp = _amp(spec, device)
    peak = perf.matmul_peak_tflops(device)
    module = build_for(spec, device, workdir)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    # Distinct mask draws: the context/target lengths differ per draw, and each new length costs
    # extra the first time (cuDNN attention plans, compile's dynamic-shape recompile), so the
    # timed steps cycle over draws already seen; the first pass is reported as `cold_ms`.
    n_batches = spec.get("mask_sets", 8 if device.type == "cuda" else 2)
    batches, collate_ms = synthetic_batches(module, device, spec["batch"], 2, n_batches)
    res: dict[str, Any] = {
        "peak_tflops": peak,
        "trainable_params": trainable,
        "collate_ms": collate_ms,
        "mask_sizes": _mask_sizes(batches),
    }
    if spec.get("flops"):
        try:  # a counting failure (e.g. a tensor subclass it cannot see through) costs the count only
            res["flops"] = count_step_flops(module, batches, device, amp)
            if spec.get("profile"):  # one more eager pass: only where the kernels are studied
                res["flop_breakdown"] = perf.flop_breakdown(
                    lambda: forward_backward(module, batches[0], device, amp)
                )
        except Exception as exc:
            res["flops_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            module.zero_grad(set_to_none=True)
    module.use_compile = bool(spec.get("compile"))
    prepare_like_fit(module)  # what setup("fit") does: collator, per-block compile
    step = make_train_step(module, batches, device, amp=amp, max_norm=spec.get("max_norm"))
    with sdpa_context(spec.get("sdpa_backend")):
        t_first = time.perf_counter()
        step(0)
        perf.synchronize(device)
        res["first_step_s"] = time.perf_counter() - t_first  # includes compilation when compiled
        perf.reset_peak_memory(device)
        res["cold_ms"] = perf.time_steps(step, device, warmup=0, steps=n_batches)
        times = perf.time_steps(step, device, warmup=spec["warmup"], steps=spec["steps"])
        if spec.get("profile") and device.type == "cuda":
            from profile_step import profile_steps

            res["profile"] = profile_steps(
                step, device, workdir / f"profile_{spec['name']}.txt", statistics.median(times)
            )
        if spec.get("teacher_fwd") and spec.get("stage", "student") == "student":
            res["teacher_fwd_ms"] = _teacher_forward_ms(module, batches[0], device, amp)
    res["attn_backend_used"] = module.encoder.attn_backend_used
    res["compiled"] = bool(getattr(module, "compiled", False))
    res["fp8_backend"] = getattr(module, "fp8_backend", None)
    res.update(perf.summarize_ms(times))
    res["times_ms"] = times
    res["peak_mem_gib"] = perf.peak_memory_gib(device)
    res["peak_reserved_gib"] = perf.peak_reserved_gib(device)
    res["clips_per_s"] = spec["batch"] / (res["median_ms"] * 1e-3)
    if "flops" in res:
        res["tflop_per_step"] = res["flops"] / 1e12
        res["achieved_tflops"] = res["flops"] / (res["median_ms"] * 1e-3) / 1e12
        res["mfu"] = res["achieved_tflops"] / peak
    return res


def _teacher_forward_ms(module, batch: dict, device: torch.device, amp: bool) -> float:
    """Median ms of the frozen teacher's forward alone, as ``training_loss`` runs it (no grad,
    autocast, its compiled blocks), on one batch: what the teacher precision changes."""
    from salt.fp8 import teacher_input
    from salt.step import latent_targets

    video = module.normalize(batch["video"])
    teacher = module.teacher_on(video.device)
    clip = teacher_input(video, module.teacher_precision)

    def fwd(_: int) -> None:
        with torch.no_grad(), autocast_for(device, amp):
            latent_targets(teacher.encoder, clip, module.target_layer)

    return statistics.median(perf.time_steps(fwd, device, warmup=2, steps=10))


def run_variant_into(conn: Any, spec: dict, device: str, workdir: str) -> None:
    """``run_variant`` in a forked worker: the result goes back through ``conn`` (a Pipe end)
    and is printed as the ``RESULT`` line the subprocess path prints."""

    res = run_variant(spec, torch.device(device), Path(workdir))
    print_result(res)
    conn.send(res)
    conn.close()


def _cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _run_memory(spec: dict, device: torch.device, workdir: Path) -> dict:
    module = build_for(spec, device, workdir)
    prepare_like_fit(module)
    rows, fits = [], 0
    for batch in spec["batches"]:
        row: dict[str, Any] = {"batch": batch}
        oom = False
        try:
            batches, _ = synthetic_batches(module, device, batch, 1, 2)
            step = make_train_step(
                module, batches, device, amp=_amp(spec, device), max_norm=spec.get("max_norm")
            )
            perf.reset_peak_memory(device)
            times = perf.time_steps(step, device, warmup=1, steps=2)
            row.update(
                median_ms=statistics.median(times),
                clips_per_s=batch / (statistics.median(times) * 1e-3),
                peak_mem_gib=perf.peak_memory_gib(device),
                peak_reserved_gib=perf.peak_reserved_gib(device),
            )
            fits = batch
        except Exception as exc:
            if not perf.is_oom(exc):
                raise
            oom = True
            row["oom"] = True
        step = batches = None  # drop the optimizer state and activations before the next try
        module.zero_grad(set_to_none=True)
        _cleanup(device)
        rows.append(row)
        print(f"   {spec['name']} batch {batch}: {row}", flush=True)
        if oom:
            break
    return {
        "rows": rows,
        "max_batch_fit": fits,
        "max_batch_tried": spec["batches"][-1],
        "hit_oom": any(r.get("oom") for r in rows),
        "total_mem_gib": perf.device_info(device).get("total_memory_gib"),
    }
