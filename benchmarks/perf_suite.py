"""The ``perf`` suite of ``step_throughput.py``: salt's step beside V-JEPA 2's, in one GPU call.

``perf_variants`` is the final call (``benchmarks/run_gpu.sh perf 420``), most important row
first, each with a hard limit (``limit_s``) and its expected wall seconds on one H200 with a cold
compile cache (``expect_s``, from the exploratory call: a row's fixed cost — a fresh process,
imports, CUDA, building the models — is ≈ 16 s in a subprocess and a few seconds forked):

1. ``peak``: bf16 matmul peak (the MFU denominator).
2. ``student_compile``: the ViT-L student step exactly as ``salt fit`` runs the shipped config
   (blocks compiled, cuDNN SDPA off process-wide, the teacher's attention on cuDNN, the
   student's and predictor's on FlashAttention-2, fp32 teacher weights), profiled, with the
   compiled teacher forward timed on its own (``teacher_fwd_ms``).
3. ``vjepa2_compile``: V-JEPA 2's own step (``--vjepa2 DIR``) at the same sizes, masks, batch.
4. ``teacher_compile_b64``: the stage-1 step, blocks compiled, batch 64 (the MFU target).
5. ``student_fp8``: row 2 with the FP8 teacher (its compiled blocks fuse the activation
   quantisation), ``teacher_fwd_ms`` against row 2's.
6. ``fp8_loss``: the FP8 teacher's 300-step loss gate (``fp8_gate.py --part loss``).
7. ``student_vitg``: ViT-g student, batch 16, ViT-L teacher, compiled.
8. ``vitg_memory``: largest ViT-g student batch without checkpointing (runs if time is left).

``explore_variants`` is the exploratory list (levers one at a time, attention kernels at the
step's shapes, the FP8 cosine gate, host syncs): ``--suite explore``.
"""

from __future__ import annotations

from typing import Any


def explore_variants(args: Any) -> list[dict]:
    """The exploratory list for ``args`` (step_throughput's arguments); on CPU the smoke subset."""
    if args.device == "cpu":
        return smoke_variants(args)
    st, vj = _bases(args)
    te = {**st, "stage": "teacher", "model": args.teacher_model}
    modules = {"compile_scope": "modules"}
    fp8 = {"teacher_precision": "fp8"}
    rows = [
        {"name": "peak", "kind": "peak", "limit_s": 40},  # ~8 s
        {**st, "name": "student_compile", "flops": True, "profile": True, "limit_s": 150},  # ~75
    ]
    if args.vjepa2:
        rows += [
            {**vj, "name": "vjepa2_compile", "compile": True, "limit_s": 200},  # ~100
            {**vj, "name": "vjepa2_eager", "compile": False, "limit_s": 90},  # ~30
        ]
    rows += [
        {"name": "fp8_cos", "kind": "fp8_gate", "argv": ["--part", "cosine"], "limit_s": 60},  # ~25
        {
            "name": "attn",
            "kind": "attn",
            "kernels": ["flash", "cudnn", "efficient", "xformers"],
            "limit_s": 60,
        },  # ~20
        {
            **st,
            "name": "student_modules_fp8",
            "overrides": {**modules, **fp8},
            "profile": True,
            "limit_s": 180,
        },  # ~95
        {
            **te,
            "name": "teacher_modules_b64",
            "batch": 64,
            "overrides": modules,
            "flops": True,
            "limit_s": 150,
        },  # ~80
        # ---- about 8 minutes to here; one lever at a time below
        {**st, "name": "student_modules", "overrides": modules, "limit_s": 150},  # ~50
        {**st, "name": "student_xformers", "attn": "xformers", "limit_s": 150},  # ~70
        {**te, "name": "teacher_compile", "flops": True, "limit_s": 120},  # ~40
        {
            **te,
            "name": "teacher_cudagraphs",
            "overrides": {"compile_mode": "reduce-overhead"},
            "limit_s": 150,
        },  # ~60
        {
            **st,
            "name": "sync",
            "kind": "sync",
            "compile": False,
            "batch": 4,
            "steps": 3,
            "limit_s": 60,
        },  # ~25
        {
            **st,
            "name": "student_bf16t",
            "overrides": {"teacher_precision": "bf16"},
            "limit_s": 120,
        },  # ~45
        {**st, "name": "student_fp8", "overrides": fp8, "limit_s": 120},  # ~45
        {**te, "name": "teacher_modules", "overrides": modules, "limit_s": 120},  # ~40
        {
            **te,
            "name": "teacher_modules_b96",
            "batch": 96,
            "overrides": modules,
            "flops": True,
            "limit_s": 150,
        },  # ~60
        {"name": "attn_flex", "kind": "attn", "kernels": ["flex"], "limit_s": 90},  # ~40
        {
            **st,
            "name": "student_modules_flex",
            "attn": "flex",
            "overrides": {**modules, **fp8},
            "limit_s": 180,
        },  # ~90
        {"name": "fp8_loss", "kind": "fp8_gate", "argv": ["--part", "loss"], "limit_s": 120},  # ~50
    ]
    if args.vjepa2:
        rows.append(
            {
                **vj,
                "name": "vjepa2_vitg_compile",
                "model": "vit_giant",
                "batch": 16,
                "compile": True,
                "limit_s": 240,
            }  # ~120
        )
    rows += [
        {
            **st,
            "name": "student_vitg_modules_fp8",
            "model": "vit_giant",
            "batch": 16,
            "overrides": {**modules, **fp8},
            "flops": True,
            "limit_s": 240,
        },  # ~120
        {"name": "peak_end", "kind": "peak", "limit_s": 40},
    ]
    return rows


def _bases(args: Any) -> tuple[dict, dict]:
    """(salt student step row, V-JEPA 2 row) at ``args``' sizes, batch and step counts."""
    st = {
        "model": args.model,
        "teacher_model": args.teacher_model,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "max_norm": args.max_norm,
        "kind": "step",
        "stage": "student",
        "attn": "sdpa",
        "act_ckpt": False,
        "compile": True,
    }
    vj = {
        "kind": "vjepa2",
        "vjepa2": args.vjepa2,
        "model": "vit_large",
        "batch": args.batch,
        "img": 224,
        "frames": 16,
        "pred_dim": 384,
        "pred_depth": 12,
        "pred_heads": 12,
        "act_ckpt": False,
        "steps": args.steps,
        "warmup": args.warmup,
        "mask_sets": 8,
    }
    return st, vj


def perf_variants(args: Any) -> list[dict]:
    """The final call's rows for ``args``, in order; on CPU the smoke subset."""
    if args.device == "cpu":
        return smoke_variants(args)
    st, vj = _bases(args)
    te = {**st, "stage": "teacher", "model": args.teacher_model}
    rows = [
        {"name": "peak", "kind": "peak", "limit_s": 40, "expect_s": 12},
        {**st, "name": "student_compile", "flops": True, "profile": True, "teacher_fwd": True,
         "limit_s": 110, "expect_s": 70},
    ]  # fmt: skip
    if args.vjepa2:
        rows.append(
            {**vj, "name": "vjepa2_compile", "compile": True, "limit_s": 150, "expect_s": 108}
        )
    rows += [
        {**te, "name": "teacher_compile_b64", "batch": 64, "flops": True, "limit_s": 80,
         "expect_s": 45},
        {**st, "name": "student_fp8", "overrides": {"teacher_precision": "fp8"},
         "teacher_fwd": True, "limit_s": 90, "expect_s": 50},
        {"name": "fp8_loss", "kind": "fp8_gate", "argv": ["--part", "loss"], "limit_s": 60,
         "expect_s": 35},
        {**st, "name": "student_vitg", "model": "vit_giant", "batch": 16, "flops": True,
         "limit_s": 100, "expect_s": 55},
        {**st, "kind": "memory", "name": "vitg_memory", "model": "vit_giant",
         "compile": False, "batches": [32, 48, 64, 96], "limit_s": 90, "expect_s": 60},
    ]  # fmt: skip
    return rows


def smoke_variants(args: Any) -> list[dict]:
    """CPU smoke of the suite's machinery (tiny sizes, eager): a salt student row that asks for
    whole-module compile (falls back to eager on the CPU) and V-JEPA 2's step at its tiny sizes."""
    from variants import TINY_HEADS

    rows = [
        {"name": "peak", "kind": "peak"},
        {"name": "student_compile", "kind": "step", "stage": "student", "model": args.model,
         "teacher_model": args.teacher_model, "batch": args.batch, "steps": args.steps,
         "warmup": args.warmup, "max_norm": None, "attn": "sdpa", "act_ckpt": False,
         "compile": True, "overrides": {"compile_scope": "modules"}, "img_size": 64,
         "num_frames": 8, "module_kwargs": TINY_HEADS, "flops": True},
    ]  # fmt: skip
    if args.vjepa2:
        rows.append(
            {
                "name": "vjepa2_eager",
                "kind": "vjepa2",
                "vjepa2": args.vjepa2,
                "model": "vit_tiny",
                "batch": 2,
                "img": 64,
                "frames": 4,
                "pred_dim": 96,
                "pred_depth": 2,
                "pred_heads": 4,
                "act_ckpt": False,
                "compile": False,
                "steps": args.steps,
                "warmup": 1,
                "mask_sets": 2,
            }
        )
    return rows
