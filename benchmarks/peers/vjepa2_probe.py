"""V-JEPA 2's own frozen-evaluation training step, timed on this GPU (the reference for
benchmarks/probe_throughput.py). Its code is imported from a checkout given by path, never copied.

The step is V-JEPA 2's (`evals/video_classification_frozen/eval.py`, `run_one_epoch` with
`training=True`, called on synthetic batches shaped like its loader's: a list of S segments, each a
list of one view `[B, 3, 16, 256, 256]`), with its models (`src.models.vision_transformer.vit_large`
/ `vit_giant_xformers` wrapped in `modelcustom/vit_encoder_multiclip.ClipAggregation`; 20
`src.models.attentive_pooler.AttentiveClassifier`s of 4 blocks and 16 heads with activation
checkpointing, as its eval builds them) and its optimizers (`init_opt`: one AdamW + GradScaler per
head, fp16 autocast as its `use_bfloat16: true` config actually runs). One process, so no DDP
wrapper (the all-reduce would be a no-op). Validation: the same with `training=False` and 3 views.

    python benchmarks/peers/vjepa2_probe.py --vjepa2 /path/to/vjepa2 --batches 4 8
    python benchmarks/peers/vjepa2_probe.py --vjepa2 /path/to/vjepa2 --smoke   # CPU, tiny

Needs the checkout's own imports (timm, einops; decord only for its data code, which is not used).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from perf import device_info, is_oom, peak_memory_gib, reset_peak_memory, synchronize  # noqa: E402


def _import(vjepa2: str):
    sys.path.insert(0, str(Path(vjepa2).resolve()))
    import src.models.vision_transformer as vit
    from evals.video_classification_frozen.modelcustom.vit_encoder_multiclip import ClipAggregation
    from src.models.attentive_pooler import AttentiveClassifier

    stubbed = []
    for _ in range(20):  # eval.py imports V-JEPA 2's data stack (cv2, decord, ...) at top level
        try:
            from evals.video_classification_frozen.eval import init_opt, run_one_epoch

            break
        except ModuleNotFoundError as err:
            if not err.name or err.name in stubbed:
                raise
            sys.modules[err.name] = _Stub(err.name)  # only its data loaders would use it
            stubbed.append(err.name)
            for m in [m for m in sys.modules if m.startswith(("evals.", "src.datasets"))]:
                del sys.modules[m]
    if stubbed:
        print(f"stubbed modules V-JEPA 2's data code imports but the step never runs: {stubbed}")
    return vit, ClipAggregation, AttentiveClassifier, init_opt, run_one_epoch


class _Stub(types.ModuleType):
    """An importable placeholder for a module only V-JEPA 2's data pipeline uses."""

    __path__: list = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is a stub (V-JEPA 2 data code is not benchmarked)")


def measure(a: argparse.Namespace, batch: int, dev: torch.device) -> dict:
    vit, ClipAggregation, AttentiveClassifier, init_opt, run_one_epoch = _import(a.vjepa2)
    reset_peak_memory(dev)
    model = getattr(vit, a.model)(img_size=a.crop, num_frames=a.frames, patch_size=16,
                                  tubelet_size=2, uniform_power=True, use_rope=True)  # fmt: skip
    enc = ClipAggregation(model, tubelet_size=2, max_frames=128, use_pos_embed=False).to(dev)
    enc.eval().requires_grad_(False)
    heads = [AttentiveClassifier(embed_dim=enc.embed_dim, num_heads=16, depth=a.depth,
                                 num_classes=a.classes, use_activation_checkpointing=True).to(dev)
             for _ in range(a.heads)]  # fmt: skip
    opt_kwargs = [
        dict(ref_wd=0.01, final_wd=0.01, start_lr=1e-3, ref_lr=1e-3, final_lr=0.0, warmup=0.0)
        for _ in heads
    ]
    fp16 = dev.type == "cuda"
    optimizer, scaler, scheduler, wd_scheduler = init_opt(heads, 1000, opt_kwargs, 20, fp16)

    def batches(n: int, views: int, b: int):
        for _ in range(n):
            clips = [[torch.randint(0, 255, (b, 3, a.frames, a.crop, a.crop), device=dev).float()
                      for _ in range(views)] for _ in range(a.segments)]  # fmt: skip
            yield clips, torch.randint(0, a.classes, (b,)), [torch.zeros(b, a.frames)] * a.segments

    def timed(n: int, training: bool, views: int, b: int) -> float:
        run_one_epoch(dev, training, enc, heads, scaler, optimizer, scheduler, wd_scheduler,
                      list(batches(a.warmup, views, b)), fp16)  # fmt: skip
        data = list(batches(n, views, b))
        synchronize(dev)
        t0 = time.perf_counter()
        run_one_epoch(
            dev, training, enc, heads, scaler, optimizer, scheduler, wd_scheduler, data, fp16
        )
        synchronize(dev)
        return n * b / (time.perf_counter() - t0)

    row = {"model": a.model, "batch": batch, "heads": a.heads}
    row["train"] = timed(a.steps, True, 1, batch)
    row["peak_gib"] = peak_memory_gib(dev)
    row["val"] = timed(max(2, a.steps // 2), False, 3, batch)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vjepa2", required=True, help="a facebookresearch/vjepa2 checkout")
    p.add_argument("--model", default="vit_large", help="vit_large | vit_giant_xformers")
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8])
    p.add_argument("--heads", type=int, default=20)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--segments", type=int, default=2)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--classes", type=int, default=174)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--deadline", type=float, help="unix time: start no batch size after ~it")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny (vit_tiny, 32 px, 2 heads)")
    a = p.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    if a.smoke:
        a.model, a.frames, a.crop, a.heads, a.depth, a.steps, a.warmup = (
            "vit_tiny",
            4,
            32,
            2,
            2,
            1,
            1,
        )
        a.batches = [2]
    print(json.dumps(device_info(dev)), flush=True)
    print(
        f"V-JEPA 2 frozen eval step ({a.model}, {a.heads} heads of {a.depth} blocks, "
        f"{a.segments}x{a.frames}x{a.crop}², fp16 + GradScaler): clips/s per GPU",
        flush=True,
    )
    print(f"{'model':<20}{'B':>4}{'train':>9}{'val':>9}{'GiB':>7}", flush=True)
    rows = []
    for b in a.batches:
        if a.deadline is not None and a.deadline - time.time() < 40:
            print(f"{a.model:<20}{b:>4} skipped: deadline", flush=True)
            continue
        try:
            r = measure(a, b, dev)
            print(
                f"{r['model']:<20}{b:>4}{r['train']:9.2f}{r['val']:9.2f}"
                f"{(r['peak_gib'] or 0):7.1f}",
                flush=True,
            )
        except Exception as err:
            if not is_oom(err):
                raise
            r = {"model": a.model, "batch": b, "error": "out of memory"}
            print(f"{a.model:<20}{b:>4} out of memory", flush=True)
            torch.cuda.empty_cache()
        rows.append(r)
        if a.json:
            Path(a.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
