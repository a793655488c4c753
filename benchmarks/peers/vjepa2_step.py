"""Time V-JEPA 2's own training step, imported from a checkout, with salt's timing protocol.

Nothing of V-JEPA 2 is copied here: its modules, optimizer and masks are imported from the
checkout given by ``--vjepa2 DIR`` (facebookresearch/vjepa2, its ``src/`` and ``app/vjepa/``):

- ``app.vjepa.utils.init_video_model``: its ViT encoder (``vit_large`` / ``vit_giant_xformers``,
  RoPE, ``use_sdpa``) and its predictor (12 × 384, 12 heads, mask tokens), each in its
  multi-sequence wrapper; the EMA target encoder is a deep copy, as in ``app/vjepa/train.py``;
- ``app.vjepa.utils.init_opt``: its AdamW param groups, warmup-cosine lr, cosine wd, GradScaler;
- ``src.masks.multiseq_multiblock3d._MaskGenerator``: its multi-block masks (8 × 0.15 and
  2 × 0.70, aspect 0.75–1.5, full temporal extent), ``src.masks.utils.apply_masks``.

The step is ``train_step`` of ``app/vjepa/train.py`` (a closure there, so it is restated from
those calls): lr / wd schedule step; target encoder forward without grad + parameter-free
LayerNorm; encoder on the context masks, predictor to the target masks; L1 averaged over masks;
``scaler.scale(loss).backward()``, ``unscale_``, ``scaler.step``, ``update``, ``zero_grad``; EMA of
the target encoder (momentum 0.99925, ``_foreach_mul_`` / ``_foreach_add_``); ``float(loss)`` (the
host read its loop does every step). bf16 autocast, ``--compile`` = ``.compile()`` on the three
modules (its ``compile_model`` flag). Single process: its DDP wrappers are left out.

Timing = salt's (``benchmarks/perf.py``): mask draws made before timing, one untimed-but-recorded
pass over every draw (``cold_ms``), then ``--warmup`` steps and ``--steps`` CUDA-event-timed steps
cycling over the same draws; median reported. FLOPs counted with ``FlopCounterMode`` over one
eager forward+backward (MFU against a matmul peak measured in the same process).

    python benchmarks/peers/vjepa2_step.py --vjepa2 /path/to/vjepa2 --compile --json out.json
    python benchmarks/peers/vjepa2_step.py --vjepa2 DIR --stage-to .peers/vjepa2  # files a run needs
    python benchmarks/peers/vjepa2_step.py --vjepa2 DIR --device cpu --smoke       # CI smoke

Fair-comparison notes: its clips arrive as float tensors already on the device (its loader
normalises in workers), salt's as uint8 normalised in the step; both use the same clip size,
batch, mask configs and bf16 autocast.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import perf  # noqa: E402

# What a run imports from the checkout (and nothing else travels to a GPU machine).
NEEDED_FILES = (
    "app/vjepa/utils.py",
    "src/masks/multiseq_multiblock3d.py",
    "src/masks/utils.py",
    "src/models/predictor.py",
    "src/models/vision_transformer.py",
    "src/models/utils/modules.py",
    "src/models/utils/patch_embed.py",
    "src/models/utils/pos_embs.py",
    "src/utils/checkpoint_loader.py",
    "src/utils/logging.py",
    "src/utils/schedulers.py",
    "src/utils/tensors.py",
    "src/utils/wrappers.py",
)
MODEL_NAMES = {"vit_large": "vit_large", "vit_giant": "vit_giant_xformers"}
MASKS = ({"npred": 8, "scale": 0.15}, {"npred": 2, "scale": 0.70})  # its pretrain configs
EMA_MOMENTUM = 0.99925
RESULT_PREFIX = "RESULT "


def stage_checkout(src: Path, dst: Path) -> list[str]:
    """Copy only ``NEEDED_FILES`` of a checkout to ``dst`` (what a GPU call carries)."""
    src, dst = Path(src), Path(dst)
    missing = [f for f in NEEDED_FILES if not (src / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} is not a V-JEPA 2 checkout: missing {missing}")
    for f in NEEDED_FILES:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / f, dst / f)
    return list(NEEDED_FILES)


def import_vjepa2(root: Path) -> types.SimpleNamespace:
    """Import V-JEPA 2's modules from a checkout at ``root``.

    ``src/models/utils/patch_embed.py`` imports ``einops.rearrange`` without calling it; when
    einops is not installed a module that raises on use stands in (recorded in the result).
    """
    root = Path(root).resolve()
    if not (root / "app" / "vjepa" / "utils.py").is_file():
        raise FileNotFoundError(f"--vjepa2 {root}: no app/vjepa/utils.py (not a V-JEPA 2 checkout)")
    einops_stub = False
    try:
        import einops  # noqa: F401
    except ImportError:
        stub = types.ModuleType("einops")

        def rearrange(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("einops is not installed (stand-in for an unused import)")

        stub.rearrange = rearrange
        sys.modules["einops"] = stub
        einops_stub = True
    sys.path.insert(0, str(root))
    from app.vjepa.utils import init_opt, init_video_model
    from src.masks.multiseq_multiblock3d import _MaskGenerator
    from src.masks.utils import apply_masks

    logging.getLogger().setLevel(logging.WARNING)  # its utils log every module at INFO
    return types.SimpleNamespace(
        init_video_model=init_video_model,
        init_opt=init_opt,
        MaskGenerator=_MaskGenerator,
        apply_masks=apply_masks,
        einops_stub=einops_stub,
        root=str(root),
    )


def build(vj: types.SimpleNamespace, cfg: dict, device: torch.device) -> dict:
    """Encoder, predictor, EMA target, optimizer/scaler/schedules and mask generators."""
    torch.manual_seed(0)
    encoder, predictor = vj.init_video_model(
        device=device,
        patch_size=16,
        max_num_frames=cfg["frames"],
        tubelet_size=2,
        model_name=MODEL_NAMES.get(cfg["model"], cfg["model"]),
        crop_size=cfg["img"],
        pred_depth=cfg["pred_depth"],
        pred_num_heads=cfg["pred_heads"],
        pred_embed_dim=cfg["pred_dim"],
        uniform_power=True,
        use_mask_tokens=True,
        num_mask_tokens=len(MASKS),
        zero_init_mask_tokens=True,
        use_sdpa=True,
        use_rope=True,
        use_silu=False,
        use_pred_silu=False,
        wide_silu=True,
        use_activation_checkpointing=cfg["act_ckpt"],
    )
    target = copy.deepcopy(encoder)
    for p in target.parameters():
        p.requires_grad = False
    amp = device.type == "cuda"
    optimizer, scaler, scheduler, wd_scheduler = vj.init_opt(
        is_anneal=False,
        encoder=encoder,
        predictor=predictor,
        wd=0.04,
        final_wd=0.4,
        start_lr=2e-4,
        ref_lr=6.25e-4,
        final_lr=1e-6,
        iterations_per_epoch=1000,
        warmup=10,
        num_epochs=100,
        ipe_scale=1.25,
        mixed_precision=amp,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    gens = [
        vj.MaskGenerator(
            crop_size=cfg["img"],
            num_frames=cfg["frames"],
            spatial_patch_size=16,
            temporal_patch_size=2,
            spatial_pred_mask_scale=(m["scale"], m["scale"]),
            temporal_pred_mask_scale=(1.0, 1.0),
            aspect_ratio=(0.75, 1.5),
            npred=m["npred"],
            max_context_frames_ratio=1.0,
            max_keep=None,
        )
        for m in MASKS
    ]
    return {
        "encoder": encoder,
        "predictor": predictor,
        "target": target,
        "optimizer": optimizer,
        "scaler": scaler,
        "scheduler": scheduler,
        "wd_scheduler": wd_scheduler,
        "gens": gens,
        "amp": amp,
    }


def draw_batches(parts: dict, cfg: dict, device: torch.device, n: int) -> list[dict]:
    """``n`` mask draws (its generators) with float clips on ``device`` (2 clips, rotating)."""
    g = torch.Generator().manual_seed(0)
    shape = (cfg["batch"], 3, cfg["frames"], cfg["img"], cfg["img"])
    clips = [torch.randn(shape, generator=g).to(device) for _ in range(2)]
    out = []
    for i in range(n):
        enc, pred = zip(*(gen(cfg["batch"]) for gen in parts["gens"]), strict=True)
        out.append(
            {
                "clips": clips[i % 2],
                "masks_enc": [m.to(device) for m in enc],
                "masks_pred": [m.to(device) for m in pred],
            }
        )
    return out


def forward_loss(parts: dict, vj: types.SimpleNamespace, batch: dict) -> torch.Tensor:
    """Its forward: target (no grad) + LayerNorm, encoder → predictor, L1 averaged over masks."""
    clips, masks_enc, masks_pred = [batch["clips"]], [batch["masks_enc"]], [batch["masks_pred"]]
    with torch.no_grad():
        h = parts["target"](clips)
        h = [F.layer_norm(hi, (hi.size(-1),)) for hi in h]
    z = parts["encoder"](clips, masks_enc)
    z = parts["predictor"](z, masks_enc, masks_pred)
    h = [vj.apply_masks(hi, mi, concat=False) for hi, mi in zip(h, masks_pred, strict=True)]
    losses = [
        (zij - hij).abs().mean()
        for zi, hi in zip(z, h, strict=True)
        for zij, hij in zip(zi, hi, strict=True)
    ]
    return sum(losses) / len(losses)


def make_step(parts: dict, vj: types.SimpleNamespace, batches: list[dict], device: torch.device):
    """``step(i)``: one of its training steps on ``batches[i % len]``; returns ``float(loss)``."""
    opt, scaler = parts["optimizer"], parts["scaler"]
    enc_params = list(parts["encoder"].parameters())
    tgt_params = list(parts["target"].parameters())

    def step(i: int) -> float:
        batch = batches[i % len(batches)]
        parts["scheduler"].step()
        parts["wd_scheduler"].step()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=parts["amp"]):
            loss = forward_loss(parts, vj, batch)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad()
        with torch.no_grad():
            torch._foreach_mul_(tgt_params, EMA_MOMENTUM)
            torch._foreach_add_(tgt_params, enc_params, alpha=1 - EMA_MOMENTUM)
        return float(loss.detach())  # its loop reads the loss on the host every step

    return step


def count_flops(parts: dict, vj: types.SimpleNamespace, batch: dict, device: torch.device) -> int:
    def fwd_bwd() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=parts["amp"]):
            loss = forward_loss(parts, vj, batch)
        loss.backward()
        parts["optimizer"].zero_grad()

    return perf.count_flops(fwd_bwd)


def run(cfg: dict, device: torch.device) -> dict:
    """Build, count, (compile,) time. Returns a JSON-able result (also on failure: ``status``)."""
    res: dict[str, Any] = {**cfg, "device_info": perf.device_info(device)}
    t0 = time.perf_counter()
    vj = import_vjepa2(Path(cfg["vjepa2"]))
    res["einops_stub"] = vj.einops_stub
    res["peak_tflops"] = perf.matmul_peak_tflops(device)
    parts = build(vj, cfg, device)
    res["trainable_params"] = sum(
        p.numel() for k in ("encoder", "predictor") for p in parts[k].parameters()
    )
    batches = draw_batches(parts, cfg, device, cfg["mask_sets"])
    res["mask_sizes"] = [
        [[e.shape[1], p.shape[1]] for e, p in zip(b["masks_enc"], b["masks_pred"], strict=True)]
        for b in batches
    ]
    if cfg.get("flops", True):
        res["flops"] = count_flops(parts, vj, batches[0], device)
    if cfg["compile"]:
        for k in ("encoder", "target", "predictor"):  # its compile_model flag
            parts[k].compile()
    step = make_step(parts, vj, batches, device)
    t_first = time.perf_counter()
    step(0)
    perf.synchronize(device)
    res["first_step_s"] = time.perf_counter() - t_first
    perf.reset_peak_memory(device)
    res["cold_ms"] = perf.time_steps(step, device, warmup=0, steps=len(batches))
    times = perf.time_steps(step, device, warmup=cfg["warmup"], steps=cfg["steps"])
    res.update(perf.summarize_ms(times))
    res["times_ms"] = times
    res["peak_mem_gib"] = perf.peak_memory_gib(device)
    res["clips_per_s"] = cfg["batch"] / (res["median_ms"] * 1e-3)
    if "flops" in res:
        res["tflop_per_step"] = res["flops"] / 1e12
        res["achieved_tflops"] = res["flops"] / (res["median_ms"] * 1e-3) / 1e12
        res["mfu"] = res["achieved_tflops"] / res["peak_tflops"]
    res["status"] = "ok"
    res["variant_s"] = round(time.perf_counter() - t0, 1)
    return res


def config_from_args(args: argparse.Namespace) -> dict:
    cfg = {
        "vjepa2": str(args.vjepa2),
        "model": args.model,
        "batch": args.batch,
        "img": args.img,
        "frames": args.frames,
        "pred_dim": args.pred_dim,
        "pred_depth": args.pred_depth,
        "pred_heads": args.pred_heads,
        "act_ckpt": args.act_ckpt,
        "compile": args.compile,
        "steps": args.steps,
        "warmup": args.warmup,
        "mask_sets": args.mask_sets,
    }
    if args.smoke:  # tiny but real: its vit_tiny at 64², 4 frames, a 2-block predictor
        cfg.update(model="vit_tiny", batch=2, img=64, frames=4, pred_dim=96, pred_depth=2,
                   pred_heads=4, steps=3, warmup=1, mask_sets=2)  # fmt: skip
    return cfg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vjepa2", required=True, type=Path, help="V-JEPA 2 checkout (src/, app/)")
    p.add_argument("--stage-to", type=Path, default=None, help="copy the needed files and exit")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="vit_large", help="vit_large | vit_giant | any of its names")
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--pred-dim", type=int, default=384)
    p.add_argument("--pred-depth", type=int, default=12)
    p.add_argument("--pred-heads", type=int, default=12)
    p.add_argument("--act-ckpt", action="store_true", help="its activation checkpointing")
    p.add_argument("--compile", action="store_true", help=".compile() its three modules")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mask-sets", type=int, default=8, help="distinct mask draws cycled over")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU smoke run)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage_to is not None:
        files = stage_checkout(args.vjepa2, args.stage_to)
        print(f"staged {len(files)} files of {args.vjepa2} in {args.stage_to}:")
        print("\n".join(f"  {f}" for f in files))
        return 0
    if args.device == "cpu":
        torch.set_num_threads(1)
    res = run(config_from_args(args), torch.device(args.device))
    print(
        f"V-JEPA 2 {res['model']} B={res['batch']} {'compiled' if res['compile'] else 'eager'}: "
        f"{res['median_ms']:.1f} ms/step (spread {res['spread']:.0%}), "
        f"{res['clips_per_s']:.1f} clips/s, MFU {res.get('mfu', float('nan')):.0%}, "
        f"first step {res['first_step_s']:.1f} s, cold median {statistics.median(res['cold_ms']):.0f} ms"
    )
    print(RESULT_PREFIX + json.dumps(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
