"""Diagnostic rows of the ``perf`` suite that are not a whole training step.

- ``attention``: each attention kernel at the shapes of the ViT-L student step (teacher forward
  at 1568 tokens, head dim 64; student context fwd+bwd at ~328 tokens; predictor fwd+bwd at ~1150
  tokens, head dim 32): ms and TFLOP/s per kernel (SDPA's FlashAttention-2, cuDNN and
  memory-efficient kernels, xformers' dispatch, FlexAttention compiled), and each kernel's
  output / input gradients against an fp32 reference on two samples (the xformers parity check).
- ``sync``: a few eager training steps under ``torch.cuda.set_sync_debug_mode("warn")``; every
  host↔device synchronisation in the step is counted with the line of salt code that caused it.
"""

from __future__ import annotations

import statistics
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import perf
import torch
import torch.nn.functional as F

# name → (B, H, N, head_dim, backward?)
ATTN_SHAPES = {
    "teacher_fwd": (24, 16, 1568, 64, False),
    "student_ctx": (24, 16, 328, 64, True),
    "predictor": (24, 12, 1152, 32, True),
}
SDPA_KERNELS = {
    "flash": "FLASH_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
}


def _sdpa(kernel: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, SDPA_KERNELS[kernel])

    def fn(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v)

    return fn


def _xformers():
    import xformers.ops as xops

    def fn(q, k, v):  # [B, H, N, hd] in and out; xformers wants [B, N, H, hd]
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return out.transpose(1, 2)

    return fn


def _xformers_op(q: torch.Tensor, needs_grad: bool) -> str:
    """Name of the forward operator xformers' dispatcher picks for this input (best effort)."""
    try:
        from xformers.ops.fmha import _dispatch_fw
        from xformers.ops.fmha.common import Inputs

        x = q.transpose(1, 2)
        return _dispatch_fw(Inputs(x, x, x), needs_grad).NAME
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"


def _flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _reference(q, k, v) -> torch.Tensor:
    w = (q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
    return w.softmax(-1) @ v.float()


def _parity(fn, q, k, v, backward: bool) -> dict[str, float]:
    """Max abs error of output (and dq, dk, dv) vs fp32 math on the first two samples."""
    q, k, v = (t[:2].detach().clone().requires_grad_(backward) for t in (q, k, v))
    out = fn(q, k, v)
    qr, kr, vr = (t.detach().float().requires_grad_(backward) for t in (q, k, v))
    ref = _reference(qr, kr, vr)
    res = {"out_max_err": float((out.float() - ref).abs().max())}
    if backward:
        g = torch.randn_like(ref)
        out.backward(g.to(out.dtype))
        ref.backward(g)
        for name, a, b in (("dq", q, qr), ("dk", k, kr), ("dv", v, vr)):
            res[f"{name}_max_err"] = float((a.grad.float() - b.grad).abs().max())
    return res


def attention_row(spec: dict, device: torch.device, workdir: Path) -> dict[str, Any]:
    """Time and check every kernel in ``spec["kernels"]`` at ``ATTN_SHAPES``."""
    out: dict[str, Any] = {"kernels": {}}
    makers = {
        "xformers": _xformers,
        "flex": _flex,
        **{k: (lambda k=k: _sdpa(k)) for k in SDPA_KERNELS},
    }
    for kernel in spec.get("kernels", ["flash", "cudnn", "efficient", "xformers"]):
        rows: dict[str, Any] = {}
        try:
            fn = makers[kernel]()
        except Exception as exc:
            out["kernels"][kernel] = {"status": f"unusable: {type(exc).__name__}: {str(exc)[:200]}"}
            print(f"   attention {kernel}: {out['kernels'][kernel]['status']}", flush=True)
            continue
        for shape_name, (B, H, N, hd, bwd) in ATTN_SHAPES.items():
            row: dict[str, Any] = {}
            try:
                g = torch.Generator(device=device).manual_seed(0)
                q, k, v = (
                    torch.randn(
                        B, H, N, hd, device=device, dtype=torch.bfloat16, generator=g
                    ).requires_grad_(bwd)
                    for _ in range(3)
                )
                dout = torch.randn(B, H, N, hd, device=device, dtype=torch.bfloat16, generator=g)

                def run(_: int, q=q, k=k, v=v, dout=dout, bwd=bwd, fn=fn) -> None:
                    o = fn(q, k, v)
                    if bwd:
                        torch.autograd.grad(o, (q, k, v), dout)

                times = perf.time_steps(run, device, warmup=3, steps=10)
                ms = statistics.median(times)
                flops = 4 * B * H * N * N * hd * (3.5 if bwd else 1.0)  # bwd = 2.5 x fwd
                row.update(ms=ms, tflops=flops / (ms * 1e-3) / 1e12)
                row.update(_parity(fn, q, k, v, bwd))
                if kernel == "xformers":
                    row["xformers_op"] = _xformers_op(q, bwd)
                row["status"] = "ok"
            except Exception as exc:
                row["status"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            rows[shape_name] = row
            print(f"   attention {kernel} {shape_name}: {row}", flush=True)
        out["kernels"][kernel] = rows
    return out


def _salt_frames(stack: list[traceback.FrameSummary]) -> str:
    root = str(Path(__file__).resolve().parents[1])
    mine = [f for f in stack if f.filename.startswith(root) and "perf_rows.py" not in f.filename]
    f = (mine or stack)[-1]
    return f"{Path(f.filename).name}:{f.lineno} {f.line}"


def sync_row(spec: dict, device: torch.device, workdir: Path) -> dict[str, Any]:
    """Count host syncs per training step (eager) and where in salt they come from."""
    from bench_setup import build_for, make_train_step, synthetic_batches

    module = build_for(spec, device, workdir)
    module.mask_collator = module.build_mask_collator()
    batches, _ = synthetic_batches(module, device, spec["batch"], 2, 2)
    step = make_train_step(module, batches, device, amp=True)
    step(0)  # lazy initialisation (cuBLAS handles, allocator) is not the step's
    torch.cuda.synchronize(device)
    where: Counter[str] = Counter()

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            where[_salt_frames(traceback.extract_stack()[:-1])] += 1

    n = spec.get("steps", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for i in range(n):
                step(1 + i)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return {
        "syncs_per_step": sum(where.values()) / n,
        "where": dict(where.most_common(10)),
    }
