"""Quality gate of the FP8 frozen teacher (``teacher_precision: fp8``) against the bf16 teacher.

Two checks, both on one GPU with FP8 tensor cores (compute capability ≥ 8.9):

- ``cosine``: a ViT-L teacher (16 × 224², the real size) on the same clips in bf16 and in FP8
  (each FP8 backend that loads: torchao's float8 inference, salt's ``torch._scaled_mm``
  fallback); per-token cosine similarity of the layer-normed targets, mean (gate ≥ 0.995) and
  minimum, plus the teacher forward time of each (eager; informative only).
- ``loss``: two stage-2 runs from the same initialisation on the same batches and masks, one with
  the bf16 teacher, one with the FP8 teacher; the student's mean L1 loss over the steps (gate:
  within 1%). To fit ~a minute it uses a ViT-S student at 8 × 112² (4 × 7 × 7 tokens) with the
  ViT-L teacher at that input, batch 16, 300 steps, eager, bf16 autocast.

The clips are ``salt.data.synthetic.motion_frames`` (moving textures, the demo's videos), not
noise. The teacher has random weights (no trained checkpoint is available offline): trained
teachers have larger activation outliers, which per-token scales absorb better than per-tensor
ones, but the gate should be re-run on a trained teacher before relying on it.

    python benchmarks/fp8_gate.py --part cosine --json cos.json
    python benchmarks/fp8_gate.py --part loss --steps 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf  # noqa: E402

from salt.data.synthetic import motion_frames  # noqa: E402
from salt.data.transforms import normalize  # noqa: E402
from salt.fp8 import fp8_unavailable_reason, prepare_teacher  # noqa: E402
from salt.models import create_encoder  # noqa: E402
from salt.step import latent_targets  # noqa: E402

COSINE_GATE = 0.995
LOSS_GATE = 0.01


def synthetic_clips(n: int, frames: int, size: int, device: torch.device) -> torch.Tensor:
    """``n`` uint8 motion clips ``[n, 3, frames, size, size]`` on ``device`` (seeded)."""
    rng = np.random.default_rng(0)
    clips = [motion_frames(i % 4, 4, frames, size, rng) for i in range(n)]  # [T, H, W, 3] each
    video = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).contiguous()
    return video.to(device)


def _teacher(model: str, size: int, frames: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.device(device):
        enc = create_encoder(model, img_size=size, num_frames=frames)
    return enc.eval().requires_grad_(False)


def _timed_forward(enc: torch.nn.Module, video: torch.Tensor, device: torch.device) -> float:
    def fwd(_: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            latent_targets(enc, video)

    return statistics.median(perf.time_steps(fwd, device, warmup=2, steps=5))


def cosine_part(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Per-token cosine of FP8 vs bf16 layer-normed ViT-L targets on the same clips."""
    video = normalize(synthetic_clips(args.clips, args.frames, args.size, device))
    ref_enc = _teacher(args.model, args.size, args.frames, device)
    prepare_teacher(ref_enc, "bf16", device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        ref = latent_targets(ref_enc, video.to(torch.bfloat16)).float()  # [B, N, D]
    out: dict[str, Any] = {
        "tokens": int(ref.shape[0] * ref.shape[1]),
        "bf16_forward_ms": _timed_forward(ref_enc, video.to(torch.bfloat16), device),
        "backends": {},
    }
    for backend in args.backends.split(","):
        row: dict[str, Any] = {}
        try:
            enc = _teacher(args.model, args.size, args.frames, device)
            row["backend_used"] = prepare_teacher(enc, "fp8", device, backend)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                got = latent_targets(enc, video.to(torch.bfloat16)).float()
            cos = F.cosine_similarity(got, ref, dim=-1)  # [B, N]
            row.update(
                mean_cos=float(cos.mean()),
                min_cos=float(cos.min()),
                p01_cos=float(cos.flatten().quantile(0.001)),
                mean_abs_err=float((got - ref).abs().mean()),
                passes=bool(cos.mean() >= COSINE_GATE),
                fp8_forward_ms=_timed_forward(enc, video.to(torch.bfloat16), device),
                status="ok",
            )
            del enc
        except Exception as exc:  # one backend failing must not hide the other
            row["status"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        out["backends"][backend] = row
        print(f"   fp8 cosine [{backend}]: {row}", flush=True)
    return out


def _student_run(
    args: argparse.Namespace, device: torch.device, precision: str, batches: list[dict]
) -> list[float]:
    from bench_setup import build_module, make_teacher_file, make_train_step

    teacher = make_teacher_file(
        Path(args.workdir)
        / f"gate_teacher_{args.model}_{args.loss_frames}x{args.loss_size}.safetensors",
        args.model,
        args.loss_size,
        args.loss_frames,
    )
    torch.manual_seed(0)
    module = build_module(
        "student", device, args.loss_student, teacher_file=teacher, img_size=args.loss_size,
        num_frames=args.loss_frames, teacher_precision=precision, warmup_steps=args.steps // 10,
    )  # fmt: skip
    step = make_train_step(module, batches, device, amp=True, total_steps=args.steps)
    losses = [step(i) for i in range(args.steps)]
    return [float(x) for x in torch.stack(losses).cpu()]


def loss_part(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Student L1 loss over ``args.steps`` steps with a bf16 vs an FP8 teacher (same batches)."""
    from bench_setup import build_module, make_teacher_file

    teacher = make_teacher_file(
        Path(args.workdir)
        / f"gate_teacher_{args.model}_{args.loss_frames}x{args.loss_size}.safetensors",
        args.model,
        args.loss_size,
        args.loss_frames,
    )
    probe = build_module("student", device, args.loss_student, teacher_file=teacher,
                         img_size=args.loss_size, num_frames=args.loss_frames)  # fmt: skip
    collator = probe.build_mask_collator(seed=0)
    videos = synthetic_clips(4 * args.loss_batch, args.loss_frames, args.loss_size, device)
    batches = [
        {
            "video": videos[(i % 4) * args.loss_batch : (i % 4 + 1) * args.loss_batch],
            "masks": [(c.to(device), t.to(device)) for c, t in collator(args.loss_batch)],
        }
        for i in range(args.steps)
    ]
    del probe
    t0 = time.perf_counter()
    ref = _student_run(args, device, "bf16", batches)
    fp8 = _student_run(args, device, "fp8", batches)
    mean_ref, mean_fp8 = statistics.mean(ref), statistics.mean(fp8)
    tail = max(1, args.steps // 3)
    rel = (mean_fp8 - mean_ref) / mean_ref
    rel_tail = (statistics.mean(fp8[-tail:]) - statistics.mean(ref[-tail:])) / statistics.mean(
        ref[-tail:]
    )
    return {
        "steps": args.steps,
        "student": args.loss_student,
        "clip": f"{args.loss_frames}x{args.loss_size}^2",
        "batch": args.loss_batch,
        "mean_loss_bf16": mean_ref,
        "mean_loss_fp8": mean_fp8,
        "rel_diff": rel,
        "rel_diff_last_third": rel_tail,
        "first_last_bf16": [ref[0], ref[-1]],
        "first_last_fp8": [fp8[0], fp8[-1]],
        "passes": bool(abs(rel) <= LOSS_GATE and abs(rel_tail) <= LOSS_GATE),
        "seconds": time.perf_counter() - t0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    reason = fp8_unavailable_reason(device)
    res: dict[str, Any] = {"part": args.part, "device_info": perf.device_info(device)}
    if reason is not None:
        res["status"] = f"skipped: no FP8 here ({reason})"
        return res
    if args.part in ("cosine", "both"):
        res["cosine"] = cosine_part(args, device)
    if args.part in ("loss", "both"):
        res["loss"] = loss_part(args, device)
    res["status"] = "ok"
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("cosine", "loss", "both"), default="both")
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="vit_large", help="teacher encoder")
    p.add_argument("--backends", default="torchao,scaled_mm", help="FP8 backends to compare")
    p.add_argument("--clips", type=int, default=8, help="clips for the cosine check")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=300, help="student steps per run (loss check)")
    p.add_argument("--loss-student", default="vit_small")
    p.add_argument("--loss-size", type=int, default=112)
    p.add_argument("--loss-frames", type=int, default=8)
    p.add_argument("--loss-batch", type=int, default=16)
    p.add_argument("--workdir", default="/tmp/salt_bench")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    print(json.dumps({k: v for k, v in res.items() if k != "device_info"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
