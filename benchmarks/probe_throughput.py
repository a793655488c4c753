"""Online probe throughput at the SSv2 protocol: clips/s per GPU, memory, projected SSv2 wall time.

What one step is (probes/online.py + probes/grid.py, the code `salt-probe --mode online` runs):
synthetic uint8 clips already on the GPU (B clips × 2 segments × 16 frames × 256², one view) →
frozen encoder (eval, no grad, bf16 autocast) → tokens [B, 4096, D] shared by the whole grid of 20
attentive heads (4 blocks, 16 heads, stacked) → forward + backward + per-head AdamW. Measured per
variant (model, per-GPU batch B, micro-batch, head activation checkpointing):

- `train`: clips/s of the full 20-head step, and of the 1-head step (retrain / late halving);
- `enc`: the encoder alone (its share of the step);
- `heldout` / `val`: evaluation clips/s (2 segments × 3 views) with 20 heads / 1 head;
- peak GPU memory (allocated) and host RSS.

Then the projected wall time of full SSv2 (168,913 train clips, 85 % fit + 15 % held-out,
24,777 val, 20 epochs, then the chosen setting retrained 20 epochs on all of train) on 8 and 64
GPUs, for the full grid and for `--grid-schedule halving` (rungs after epochs 2, 4, 6, 10, keep
half), assuming linear scaling over GPUs (the 2-GPU torchrun mode measures that). A row prints as
soon as its variant finishes, so a deadline still leaves rows.

    python benchmarks/probe_throughput.py --deadline $(( $(date +%s) + 300 ))     # one GPU
    torchrun --nproc-per-node 2 benchmarks/probe_throughput.py --models vit_large  # scaling
    python benchmarks/probe_throughput.py --smoke                                  # CPU, seconds
    python benchmarks/probe_throughput.py --rss-cpu                                # host RSS vs data size
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import device_info, is_oom, peak_memory_gib, reset_peak_memory, time_steps  # noqa: E402

from salt.models import create_encoder  # noqa: E402
from salt.probes.features import compile_encoder, encode_clips  # noqa: E402
from salt.probes.grid import ProbeGrid, make_grid  # noqa: E402

SSV2 = {"train": 168_913, "val": 24_777, "classes": 174, "epochs": 20, "heldout": 0.15}
LRS, WDS = [5e-3, 3e-3, 1e-3, 3e-4, 1e-4], [0.01, 0.1, 0.4, 0.8]
HALVING = {"rungs": [2, 4, 6, 10], "keep": 0.5}
# (model, per-GPU batch, micro-batch, head checkpointing): first the ones that must fit 80 GB
VARIANTS = {
    "vit_large": [(16, 4, False), (16, 8, True), (32, 8, True)],
    "vit_giant": [(8, 2, False), (8, 4, True)],
}


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def halving_heads(epochs: int, g: int) -> list[int]:
    """Heads trained in each epoch under the halving schedule."""
    heads, out = g, []
    for e in range(1, epochs + 1):
        out.append(heads)
        if e in HALVING["rungs"] and heads > 1:
            heads = max(1, math.ceil(heads * HALVING["keep"]))
    return out


def project(r: dict, g: int, gpus: int) -> dict:
    """Wall hours of full SSv2 on `gpus` GPUs from one GPU's rates (linear scaling)."""
    n, e = SSV2["train"], SSV2["epochs"]
    fit, held = n * (1 - SSV2["heldout"]), n * SSV2["heldout"]
    t1, tg = 1 / r["train_1"], 1 / r["train_g"]  # seconds per clip, 1 head / g heads
    per_clip = lambda h: t1 + (h - 1) * (tg - t1) / max(g - 1, 1)  # noqa: E731 (linear in heads)
    val = 2 * SSV2["val"] / r["val_1"]  # chosen head, then the retrained one
    retrain = e * n * t1
    full = e * fit * tg + held / r["heldout_g"] + val + retrain
    heads = halving_heads(e, g)
    rungs = sum(
        held / (r["heldout_1"] + (r["heldout_g"] - r["heldout_1"]) * (h - 1) / (g - 1))
        for i, h in enumerate(heads, 1)
        if i in HALVING["rungs"] or i == e
    )
    halv = sum(fit * per_clip(h) for h in heads) + rungs + val + retrain
    sel_full, sel_halv = e * fit * tg + held / r["heldout_g"], halv - val - retrain
    return {
        "full_h": full / gpus / 3600,
        "halving_h": halv / gpus / 3600,
        "select_avg_clips_s_full": e * fit / sel_full,
        "select_avg_clips_s_halving": e * fit / sel_halv,
    }


def measure(model: str, batch: int, micro: int, ckpt: bool, a: argparse.Namespace, dev) -> dict:
    row = {"model": model, "batch": batch, "micro": micro, "ckpt": ckpt}
    reset_peak_memory(dev)
    with torch.device(dev):
        enc = create_encoder(model, img_size=a.crop, num_frames=a.frames).eval()
    enc.requires_grad_(False)
    if a.compile:
        compile_encoder(enc)
    S, T, H = a.segments, a.frames, a.crop
    g = torch.Generator(device=dev).manual_seed(0)
    video = torch.randint(
        0, 256, (batch, S, 1, 3, T, H, H), dtype=torch.uint8, device=dev, generator=g
    )
    vb = max(1, micro // 2)
    vvideo = torch.randint(
        0, 256, (vb, S, 3, 3, T, H, H), dtype=torch.uint8, device=dev, generator=g
    )
    y = torch.randint(0, a.classes, (batch,), device=dev, generator=g)
    specs = make_grid(["attentive"], a.lrs, a.wds)
    kw = dict(depth=a.depth, num_heads=16, device=dev, checkpoint=ckpt, micro_batch=micro,
              all_reduce=a.dist.all_reduce, world_size=a.dist.world_size)  # fmt: skip
    grid = ProbeGrid(specs, enc.embed_dim, a.classes, **kw)
    one = ProbeGrid(specs[:1], enc.embed_dim, a.classes, **kw)
    encode = lambda v: encode_clips(enc, v, chunk=micro * S)  # noqa: E731

    def rate(fn, clips: int, steps: int) -> float:
        ms = time_steps(lambda i: fn(), dev, warmup=a.warmup, steps=steps)
        return clips / (sorted(ms)[len(ms) // 2] / 1e3)

    row["enc"] = rate(lambda: encode(video), batch, a.steps)
    row["train_g"] = rate(lambda: grid.train_step(encode(video)[:, 0], y, 1.0), batch, a.steps)
    row["peak_gib"] = peak_memory_gib(dev)
    row["train_1"] = rate(lambda: one.train_step(encode(video)[:, 0], y, 1.0), batch, a.steps)
    row["heldout_g"] = rate(lambda: grid.view_probs(encode(vvideo)), vb, max(2, a.steps // 2))
    row["heldout_1"] = rate(lambda: one.view_probs(encode(vvideo)), vb, max(2, a.steps // 2))
    row["val_1"] = row["heldout_1"]
    row["peak_gib"] = max(row["peak_gib"] or 0, peak_memory_gib(dev) or 0) or None
    row["rss_gib"] = rss_gib()
    row["enc_share"] = row["train_g"] / row["enc"]
    for gpus in (8, 64):
        row[f"proj{gpus}"] = project(row, len(specs), gpus)
    return row


def fmt(r: dict) -> str:
    if "error" in r:
        return f"{r['model']:<10}{r['batch']:>4}{r['micro']:>4} {str(r['ckpt']):<6} {r['error']}"
    p8, p64 = r["proj8"], r["proj64"]
    return (
        f"{r['model']:<10}{r['batch']:>4}{r['micro']:>4} {str(r['ckpt']):<6}"
        f"{r['train_g']:8.2f}{r['train_1']:8.2f}{r['enc']:8.1f}{r['enc_share']:6.0%}"
        f"{r['heldout_g']:8.2f}{r['val_1']:8.2f}{(r['peak_gib'] or 0):7.1f}{r['rss_gib']:6.1f}"
        f"{p8['full_h']:7.1f}{p8['halving_h']:7.1f}{p64['full_h']:7.2f}{p64['halving_h']:7.2f}"
        f"{p8['select_avg_clips_s_halving']:7.1f}"
    )


HEAD = (
    f"{'model':<10}{'B':>4}{'mb':>4} {'ckpt':<6}{'train20':>8}{'train1':>8}{'enc':>8}"
    f"{'enc%':>6}{'held20':>8}{'val1':>8}{'GiB':>7}{'RSS':>6}{'8g-h':>7}{'8g-hv':>7}"
    f"{'64g-h':>7}{'64g-hv':>7}{'hv-avg':>7}"
)


def rss_cpu(a: argparse.Namespace) -> list[dict]:
    """Peak host RSS of a CPU online probe (tiny model) on N and 4N clips, in fresh processes."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (a.rss_clips, 4 * a.rss_clips):
            out = subprocess.run([sys.executable, __file__, "--rss-child", tmp, str(n)],
                                 capture_output=True, text=True, check=True)  # fmt: skip
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(
                f"clips {n:5d}  peak RSS {rows[-1]['rss_mib']:.0f} MiB  ({rows[-1]['s']:.0f} s)",
                flush=True,
            )
    ratio = rows[1]["rss_mib"] / rows[0]["rss_mib"]
    print(f"4x the clips: {ratio:.3f}x the peak RSS (target < 1.3)")
    return rows + [{"ratio": ratio}]


def rss_child(tmp: str, n: int) -> None:
    from salt.data.synthetic import write_synthetic_shards
    from salt.probes.config import load_config
    from salt.probes.protocol import evaluate_encoder

    torch.set_num_threads(1)
    d = Path(tmp) / str(n)
    s = write_synthetic_shards(str(d), num_train=4, num_probe_train=n, num_val=16, num_classes=4,
                               frames=12, size=32, shard_size=64)  # fmt: skip
    cfg = load_config(None, dict(mode="online", frames_per_clip=4, frame_step=2, crop_size=32,
                                 num_workers=0, probe_depth=1, probe_heads=4, lrs=[1e-3],
                                 wds=[0.01], epochs=1, batch_size=8, retrain=False,
                                 progress_every_s=1e9))  # fmt: skip
    torch.manual_seed(0)
    t0 = time.time()
    enc = create_encoder("vit_test", img_size=32, num_frames=4)
    evaluate_encoder(enc, cfg, s["probe_train"], s["val"], 4, log=lambda m: None)
    print(json.dumps({"clips": n, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "s": time.time() - t0}))  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vit_large", "vit_giant"])
    p.add_argument("--variants", help='JSON {"model": [[B, micro, ckpt], ...]} (default: built in)')
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--segments", type=int, default=2)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--classes", type=int, default=SSV2["classes"])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    p.add_argument("--deadline", type=float, help="unix time: start no variant after ~it")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model: seconds")
    p.add_argument("--rss-cpu", action="store_true", help="host RSS at N vs 4N clips (CPU)")
    p.add_argument("--rss-clips", type=int, default=64)
    p.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.rss_child:
        return rss_child(a.rss_child[0], int(a.rss_child[1]))
    if a.rss_cpu:
        return rss_cpu(a)
    from salt.probes.dist import init_distributed

    a.dist = init_distributed("cpu" if a.smoke else "auto")
    dev = a.dist.device
    a.lrs, a.wds = LRS, WDS
    variants = {m: VARIANTS.get(m, [(8, 4, True)]) for m in a.models}
    if a.variants:
        variants = {m: [tuple(v) for v in vs] for m, vs in json.loads(a.variants).items()}
    if a.smoke:
        a.frames, a.crop, a.depth, a.steps, a.warmup = 4, 32, 2, 1, 1
        a.lrs, a.wds = [1e-3, 3e-4], [0.01]
        variants = {"vit_test": [(4, 2, True)]}
    say = print if a.dist.is_main else (lambda *x, **k: None)
    say(json.dumps({**device_info(dev), "world": a.dist.world_size}), flush=True)
    say(
        f"clips/s per GPU; step = encoder + {len(a.lrs) * len(a.wds)} attentive heads "
        f"(depth {a.depth}), {a.segments}x{a.frames}x{a.crop}²; projections in hours",
        flush=True,
    )
    say(HEAD, flush=True)
    rows = []
    for model, vs in variants.items():
        for batch, micro, ckpt in vs:
            left = None if a.deadline is None else a.deadline - time.time()
            if left is not None and left < 45:
                say(
                    f"{model:<10}{batch:>4}{micro:>4} skipped: {left:.0f} s left before the deadline"
                )
                continue
            try:
                r = measure(model, batch, micro, bool(ckpt), a, dev)
            except Exception as err:  # an OOM is a result (the setting does not fit)
                if not is_oom(err):
                    raise
                r = {"model": model, "batch": batch, "micro": micro, "ckpt": ckpt,
                     "error": f"out of memory: {str(err)[:80]}"}  # fmt: skip
                torch.cuda.empty_cache() if dev.type == "cuda" else None
            r["world"] = a.dist.world_size
            rows.append(r)
            say(fmt(r), flush=True)
            if a.json and a.dist.is_main:
                Path(a.json).write_text(json.dumps(rows, indent=2))
    a.dist.close()
    return rows


if __name__ == "__main__":
    main()
