"""Data pipeline throughput: clips/s per CPU core, per decoder backend and end to end.

Workload (SPEC/issue 3): 16 frames at step 4 -> 224x224 clips from H.264 shards stored at short
side 256 (340x256, 5 s at 30 fps, keyframe every second as ``salt-shards make --resize 256``
writes them). The script generates those videos itself with PyAV: a textured scene panning with a
moving object and sensor noise, tuned to a web-like bitrate (printed).

Measured:
  decode/<backend>   one process, one decoder thread: read 16 frames at a random window.
  decode+aug/<b>     the same plus random-resized crop + flip to 224 (uint8), i.e. one worker's job.
  end_to_end         ``VideoDataModule`` with N workers: shards -> decode -> augment -> collate with
                     masks (``salt.masks.MultiMaskCollator`` on the 8x14x14 grid when importable).
  end_to_end_float   the same with uint8 -> normalised float32 done in the worker (the choice the
                     pipeline does NOT make); shows what moving ``normalize`` to the device saves.
Per-core figures divide by CPU seconds actually used (process + reaped worker children), which is
robust on a shared machine; wall-clock rates are printed beside them.

    python benchmarks/data_throughput.py [--workers 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import webdataset as wds

from salt.data import VideoDataModule
from salt.data.dataset import TrainClipStream
from salt.data.decode import HAVE_DECORD, decode_clip
from salt.data.encode import H264Writer
from salt.data.sampling import train_indices
from salt.data.transforms import normalize, train_transform


def scene_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [T, H, W, 3]: detailed texture panning diagonally, a moving blob, mild noise."""
    rng = np.random.default_rng(seed)
    big_h, big_w = height + 2 * num_frames, width + 2 * num_frames
    coarse = rng.integers(0, 256, (big_h // 16 + 1, big_w // 16 + 1, 3)).astype(np.float32)
    tex = np.kron(coarse, np.ones((16, 16, 1), np.float32))[:big_h, :big_w]
    tex = 0.7 * tex + 0.3 * rng.integers(0, 256, (big_h, big_w, 3)).astype(np.float32)
    yy, xx = np.mgrid[:height, :width]
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frame = tex[t : t + height, 2 * t : 2 * t + width].copy()
        cy, cx = height / 2 + 60 * np.sin(t / 15), width / 2 + 100 * np.cos(t / 20)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < 30**2
        frame[blob] = (240, 60, 60)
        frame += rng.normal(0, 4, frame.shape).astype(np.float32)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def make_shards(out_dir: str, args: argparse.Namespace) -> tuple[str, list[bytes]]:
    videos = []
    for i in range(args.videos):
        frames = scene_frames(int(args.seconds * args.fps), args.height, args.width, seed=i)
        writer = H264Writer(args.width, args.height, fps=args.fps, gop=args.gop)
        for f in frames:
            writer.add(f)
        videos.append(writer.finish())
    per_shard = max(1, args.videos // 4)
    with wds.ShardWriter(
        os.path.join(out_dir, "bench-%06d.tar"), maxcount=per_shard, verbose=0
    ) as sink:
        for i, data in enumerate(videos):
            sink.write(
                {"__key__": f"{i:06d}", "mp4": data, "json": json.dumps({"label": i % 10}).encode()}
            )
    return os.path.join(out_dir, "bench-*.tar"), videos


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_decode(
    videos: list[bytes], backend: str, args: argparse.Namespace, augment: bool
) -> dict:
    rng = random.Random(0)
    torch.set_num_threads(1)

    def one(i: int) -> None:
        choose = lambda n, fps: train_indices(n, args.frames, args.step, rng)[0]  # noqa: E731
        clip = decode_clip(videos[i % len(videos)], choose, backend=backend)
        if augment:
            train_transform(clip.frames, args.crop, rng)

    for i in range(3):  # warm-up
        one(i)
    wall, cpu = time.perf_counter(), cpu_seconds()
    for i in range(args.clips):
        one(i)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {
        "clips": args.clips,
        "clips_per_s": args.clips / wall,
        "clips_per_cpu_s": args.clips / cpu,
    }


class FloatInWorker(TrainClipStream):
    """The alternative design: normalise to float32 in the worker (4x the bytes per batch)."""

    def collate(self, clips, labels, counts):
        batch = super().collate(clips, labels, counts)
        batch["video"] = normalize(batch["video"])
        return batch


def bench_end_to_end(pattern: str, args: argparse.Namespace, float_in_worker: bool) -> dict:
    dm = VideoDataModule(
        pattern,
        frames_per_clip=args.frames,
        frame_step=args.step,
        crop_size=args.crop,
        batch_size=args.batch,
        num_workers=args.workers,
        epoch_length=args.batches + args.warmup_batches,
        shuffle_buffer=8,
        pin_memory=False,
    )
    masks = "none"
    try:
        from salt.masks import MultiMaskCollator

        grid = (args.frames // 2, args.crop // 16, args.crop // 16)
        dm.set_mask_fn(MultiMaskCollator(grid))
        masks = f"MultiMaskCollator{grid}"
    except ImportError:
        pass
    loader = dm.train_dataloader()
    if float_in_worker:  # same stream object, only its collate differs
        loader.dataset.__class__ = FloatInWorker
    cpu0 = cpu_seconds()
    it = iter(loader)
    for _ in range(args.warmup_batches):
        batch = next(it)
    wall = time.perf_counter()
    for _ in range(args.batches):
        batch = next(it)
    wall = time.perf_counter() - wall
    for _ in it:  # let the workers finish and exit so their CPU time is reaped
        pass
    del it
    cpu = cpu_seconds() - cpu0  # includes warm-up batches: scale by total clips
    total = (args.batches + args.warmup_batches) * args.batch
    clips = args.batches * args.batch
    return {
        "workers": args.workers,
        "clips_per_s": clips / wall,
        "clips_per_s_per_worker": clips / wall / max(1, args.workers),
        "clips_per_cpu_s": total / cpu,
        "batch_bytes": batch["video"].numel() * batch["video"].element_size(),
        "masks": masks,
    }


def environment() -> dict:
    with open("/proc/cpuinfo") as f:
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), platform.processor()
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "commit": commit,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--width", type=int, default=340)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--gop", type=int, default=30, help="keyframe interval of the generated videos")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--step", type=int, default=4)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--clips", type=int, default=60, help="clips per single-process measurement")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--warmup-batches", type=int, default=2)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()

    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        pattern, videos = make_shards(tmp, args)
        kbps = np.mean([len(v) for v in videos]) * 8 / args.seconds / 1000
        backends = (["decord"] if HAVE_DECORD else []) + ["pyav"]
        results: dict = {
            "env": env,
            "video_kbps": kbps,
            "args": vars(args),
            "decode": {},
            "decode_augment": {},
        }
        for b in backends:
            results["decode"][b] = bench_decode(videos, b, args, augment=False)
            results["decode_augment"][b] = bench_decode(videos, b, args, augment=True)
        results["end_to_end"] = bench_end_to_end(pattern, args, float_in_worker=False)
        results["end_to_end_float"] = bench_end_to_end(pattern, args, float_in_worker=True)
    e2e = results["end_to_end"]
    results["end_to_end_clips_per_s_per_core"] = e2e["clips_per_cpu_s"]

    print(
        f"# {env['cpu']} | {env['cores']} cores (load {env['loadavg_1m']:.1f}) | torch {env['torch']} | {env['commit']}"
    )
    print(
        f"# {args.videos} videos {args.width}x{args.height} {args.seconds:g}s@{args.fps:g} gop {args.gop}, {kbps:.0f} kbit/s;"
    )
    print(f"# clips {args.frames}x step {args.step} -> {args.crop}^2")
    print(f"{'measurement':<26}{'clips/s (wall)':>16}{'clips/CPU-s':>14}")
    for kind in ("decode", "decode_augment"):
        for b, r in results[kind].items():
            print(f"{kind + '/' + b:<26}{r['clips_per_s']:>16.1f}{r['clips_per_cpu_s']:>14.1f}")
    for kind in ("end_to_end", "end_to_end_float"):
        r = results[kind]
        name = f"{kind} ({r['workers']}w)"
        print(f"{name:<26}{r['clips_per_s']:>16.1f}{r['clips_per_cpu_s']:>14.1f}")
    mb = (e2e["batch_bytes"], results["end_to_end_float"]["batch_bytes"])
    print(
        f"# batch bytes uint8 {mb[0] / 2**20:.1f} MiB vs float32 {mb[1] / 2**20:.1f} MiB; masks: {e2e['masks']}"
    )
    print(f"end_to_end_clips_per_s_per_core = {results['end_to_end_clips_per_s_per_core']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
