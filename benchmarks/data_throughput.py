"""Data pipeline throughput: clips/s per CPU core, per decoder backend and end to end.

Workload (docs/method.md, "Data throughput"): 16 frames at step 4 -> 224x224 clips from H.264 shards stored at short
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

Decoders compared (``--decoders``), each in its own child process on the same shards, because
decord 0.6.0 and its maintained fork ``decord2`` install the same ``decord`` module:
  decord      decord 0.6.0 from the environment (salt's default on Linux x86-64)
  decord2     the fork, importable from ``--site decord2=DIR`` (``pip install --target DIR decord2``)
  torchcodec  PyTorch's decoder (system FFmpeg 4-7 libraries), ``--site torchcodec=DIR`` or the
              environment; ``seek_mode="exact"`` (scans the file like decord) and "approximate"
              (trusts the header) as two rows. The child swaps salt's decord call for a
              torchcodec one (``_decode_torchcodec``), so everything else is the pipeline salt runs.
  pyav        PyAV (salt's fallback everywhere)

    python benchmarks/data_throughput.py [--workers 2] [--decoders decord,pyav] [--json OUT]
    python benchmarks/data_throughput.py --decoders decord,decord2,torchcodec,torchcodec-approx,pyav \
        --site decord2=/tmp/dec/decord2 --site torchcodec=/tmp/dec/torchcodec
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
from child import print_result
from child import run_child as run_process

import salt.data.decode as salt_decode
from salt.data import VideoDataModule
from salt.data.dataset import TrainClipStream
from salt.data.decode import DecodedClip, decode_clip
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

    for i in range(min(3, args.clips)):  # warm-up
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


# ---------------------------------------------------------------------- decoders under test

DECODERS = ("decord", "decord2", "torchcodec", "torchcodec-approx", "pyav")


def _torchcodec_decoder(seek_mode: str):
    """A drop-in for salt's decord call (same signature) that decodes with torchcodec."""
    from torchcodec.decoders import VideoDecoder

    def decode(data: bytes, choose, threads: int, true_count: int | None) -> DecodedClip:
        dec = VideoDecoder(
            data, dimension_order="NHWC", num_ffmpeg_threads=threads, seek_mode=seek_mode
        )
        meta = dec.metadata
        n = salt_decode._cap(meta.num_frames, true_count) or 0
        fps = float(meta.average_fps or salt_decode.DEFAULT_FPS)
        indices = [int(i) for i in choose(n, fps)]
        frames = dec.get_frames_at(indices).data.numpy()  # [n, H, W, 3], requested order
        return DecodedClip(frames, indices, n, fps, "torchcodec")

    return decode


def use_decoder(name: str) -> tuple[str, str]:
    """Route salt's decoding to ``name`` in this process; returns (salt backend, version)."""
    if name == "pyav":
        import av

        return "pyav", av.__version__
    if name in ("decord", "decord2"):
        import decord

        fork = not decord.__version__.startswith("0.")  # decord2 is 1.0 and later
        if fork != (name == "decord2"):
            where = os.path.dirname(decord.__file__)
            raise SystemExit(f"{name}: the importable decord is {decord.__version__} at {where}")
        return "decord", decord.__version__
    import torchcodec

    seek = "approximate" if name.endswith("-approx") else "exact"
    salt_decode.HAVE_DECORD = True  # the "decord" slot of decode_clip now calls torchcodec
    salt_decode._decode_decord = _torchcodec_decoder(seek)
    return "decord", f"{torchcodec.__version__} ({seek})"


def run_child(args: argparse.Namespace) -> None:
    """One decoder's rows (decode, decode+augment, end to end) as JSON on stdout."""
    backend, version = use_decoder(args.child)
    videos = []
    for name in sorted(os.listdir(args.shards_dir)):
        if name.endswith(".tar"):
            for sample in wds.tarfile_samples([{"url": os.path.join(args.shards_dir, name)}]):
                videos.append(sample["mp4"])
    pattern = os.path.join(args.shards_dir, "bench-*.tar")
    out = {
        "version": version,
        "decode": bench_decode(videos, backend, args, augment=False),
        "decode_augment": bench_decode(videos, backend, args, augment=True),
        "end_to_end": bench_end_to_end(pattern, args, float_in_worker=False, backend=backend),
    }
    if args.float_check:
        out["end_to_end_float"] = bench_end_to_end(
            pattern, args, float_in_worker=True, backend=backend
        )
    print_result(out)


def run_decoder(name: str, shards_dir: str, args: argparse.Namespace, float_check: bool) -> dict:
    """Run one decoder's child process (its own ``--site`` first on the path)."""
    env = dict(os.environ)
    site = dict(s.split("=", 1) for s in args.site).get(name.removesuffix("-approx"))
    if site:
        env["PYTHONPATH"] = site + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, *sys.argv[1:], "--child", name, "--shards-dir", shards_dir]
    if float_check:
        cmd.append("--float-check")
    child = run_process(cmd, env=env)
    if child.returncode or not child.results:
        tail = (child.stderr or child.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:200]}
    return child.results[0]


class FloatInWorker(TrainClipStream):
    """The alternative design: normalise to float32 in the worker (4x the bytes per batch)."""

    def collate(self, clips, labels, counts):
        batch = super().collate(clips, labels, counts)
        batch["video"] = normalize(batch["video"])
        return batch


def bench_end_to_end(
    pattern: str, args: argparse.Namespace, float_in_worker: bool, backend: str = "auto"
) -> dict:
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
        decoder=backend,
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


ROWS = ("decode", "decode_augment", "end_to_end")


def summarize(runs: list[dict]) -> dict:
    """The first run's record with each row's clips/CPU-s replaced by the median over runs
    (``<row>_range``: min and max), or the first error."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    for row in ROWS:
        values = sorted(r[row]["clips_per_cpu_s"] for r in ok)
        out[row] = {**ok[0][row], "clips_per_cpu_s": float(np.median(values))}
        out[row + "_range"] = (values[0], values[-1])
    out["runs"] = len(ok)
    return out


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
    p.add_argument("--decoders", default="decord,pyav", help=f"comma list of {', '.join(DECODERS)}")
    p.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="put DIR first on the path of decoder NAME's process (decord2, torchcodec)",
    )
    p.add_argument("--repeats", type=int, default=1, help="runs per decoder (median reported)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--shards-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--float-check", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_child(args)
        return
    decoders = [d for d in args.decoders.split(",") if d]
    unknown = sorted(set(decoders) - set(DECODERS))
    if unknown:
        p.error(f"unknown decoders {unknown}; choose from {', '.join(DECODERS)}")

    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        _, videos = make_shards(tmp, args)
        kbps = np.mean([len(v) for v in videos]) * 8 / args.seconds / 1000
        results: dict = {"env": env, "video_kbps": kbps, "args": vars(args), "decoders": {}}
        runs: dict[str, list[dict]] = {name: [] for name in decoders}
        for rep in range(args.repeats):  # interleaved, so load drifts hit every decoder alike
            for i, name in enumerate(decoders):
                runs[name].append(run_decoder(name, tmp, args, float_check=i == 0 and rep == 0))
        for name, rs in runs.items():
            results["decoders"][name] = summarize(rs)

    print(
        f"# {env['cpu']} | {env['cores']} cores (load {env['loadavg_1m']:.1f}) | torch {env['torch']} | {env['commit']}"
    )
    print(
        f"# {args.videos} videos {args.width}x{args.height} {args.seconds:g}s@{args.fps:g} gop {args.gop}, {kbps:.0f} kbit/s;"
    )
    print(
        f"# clips {args.frames}x step {args.step} -> {args.crop}^2; end to end: {args.workers} workers"
    )
    print(
        f"{'decoder':<20}{'version':<28}{'decode':>9}{'+augment':>10}{'end to end':>12}"
        f"{'e2e min-max':>14}   (clips per CPU-second, median of {args.repeats})"
    )
    for name, r in results["decoders"].items():
        if "error" in r:
            print(f"{name:<20}{'-':<28}  not run: {r['error']}")
            continue
        lo, hi = r["end_to_end_range"]
        print(
            f"{name:<20}{r['version']:<28}{r['decode']['clips_per_cpu_s']:>9.1f}"
            f"{r['decode_augment']['clips_per_cpu_s']:>10.1f}"
            f"{r['end_to_end']['clips_per_cpu_s']:>12.1f}{f'{lo:.1f}-{hi:.1f}':>14}"
        )
    first = results["decoders"][decoders[0]]
    if "end_to_end_float" in first:
        mb = (first["end_to_end"]["batch_bytes"], first["end_to_end_float"]["batch_bytes"])
        print(
            f"# {decoders[0]}: float32 normalised in the worker instead: "
            f"{first['end_to_end_float']['clips_per_cpu_s']:.1f} clips/CPU-s; batch bytes uint8 "
            f"{mb[0] / 2**20:.1f} MiB vs float32 {mb[1] / 2**20:.1f} MiB; "
            f"masks: {first['end_to_end']['masks']}"
        )
        print(f"end_to_end_clips_per_s_per_core = {first['end_to_end']['clips_per_cpu_s']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
