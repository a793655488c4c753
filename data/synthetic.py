"""Synthetic videos whose class is visible ONLY through motion, written as real H.264 shards.

Each clip is a periodic texture (a sum of a few plane waves with integer frequencies, random
orientations, phases and two random colours) translating with wrap-around in one of
``num_classes`` directions (class c moves at angle 2*pi*c/K, +-jitter, 1-2 px/frame at 64 px).
Because the phases are uniform and the texture wraps around, every single frame has the same
distribution whatever the class: a single frame gives chance accuracy, while two frames reveal the
direction (``I_t = -v . grad I``). Deterministic from the seed; hundreds of 32x64x64 clips/s.

Note for probes: a horizontal flip swaps left/right classes; use ``flip_prob=0`` when the labels
matter (self-supervised pretraining may flip).

The demo uses three disjoint splits: ``train`` (pretraining), ``probe_train`` (probe fitting and
head selection) and ``val`` (reported once).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import webdataset as wds

from .encode import REPRODUCIBLE, encode_video

SPLITS = ("train", "probe_train", "val")
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}


def motion_frames(
    label: int,
    num_classes: int,
    frames: int,
    size: int,
    rng: np.random.Generator,
    speed: tuple[float, float] = (1.0, 2.0),
    waves: int = 6,
) -> np.ndarray:
    """One clip, uint8 [frames, size, size, 3], moving in direction ``label`` of ``num_classes``."""
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} outside [0, {num_classes})")
    angle = 2 * math.pi * label / num_classes + rng.uniform(-1, 1) * math.pi / (4 * num_classes)
    v = rng.uniform(*speed) * size / 64  # pixels per frame
    vx, vy = v * math.cos(angle), -v * math.sin(angle)  # image y points down: angle pi/2 = up
    freq = rng.integers(1, 5, size=(waves, 2)) * rng.choice(
        [-1, 1], size=(waves, 2)
    )  # cycles/frame
    amp = rng.uniform(0.5, 1.0, size=waves)
    phase = rng.uniform(0, 2 * math.pi, size=waves)
    coords = np.arange(size, dtype=np.float32)
    spatial = (
        2 * math.pi * (freq[:, 0, None, None] * coords + freq[:, 1, None, None] * coords[:, None])
    )
    spatial = (spatial / size + phase[:, None, None]).reshape(waves, -1)  # [K, H*W]
    omega = 2 * math.pi * (freq[:, 0] * vx + freq[:, 1] * vy) / size  # phase change per frame [K]
    wt = np.arange(frames)[:, None] * omega  # [T, K]
    # sum_k a_k cos(spatial_k - omega_k t) = [cos wt, sin wt] @ [a cos spatial; a sin spatial]
    temporal = np.concatenate([np.cos(wt), np.sin(wt)], axis=1).astype(np.float32)  # [T, 2K]
    basis = np.concatenate(
        [amp[:, None] * np.cos(spatial), amp[:, None] * np.sin(spatial)]
    )  # [2K, HW]
    # einsum, not @: a multi-threaded BLAS call on this tiny product burns 3x the CPU in spin-waits
    field = np.einsum("tk,kp->tp", temporal, basis.astype(np.float32)).reshape(frames, size, size)
    std = math.sqrt(float((amp**2).sum()) / 2)  # std of the field over uniform phases
    u = 0.5 + 0.5 * np.tanh(field / (1.2 * std))  # [T, H, W] in (0, 1), good contrast
    dark, light = rng.uniform(0, 110, size=3), rng.uniform(145, 255, size=3)
    c0, c1 = (dark, light) if rng.random() < 0.5 else (light, dark)
    rgb = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * u[..., None]  # [T, H, W, 3]
    return (rgb + 0.5).astype(np.uint8)  # convex mix of two colours in [0, 255]: no clip needed


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of clip ``index`` of ``split``: the shards' clips can be remade in memory."""
    return np.random.default_rng([seed, _SPLIT_IDS[split], index])


def _write_split(
    out_dir: str,
    split: str,
    count: int,
    num_classes: int,
    frames: int,
    size: int,
    seed: int,
    fps: float,
    shard_size: int,
) -> str:
    pattern = os.path.join(out_dir, f"{split}-%06d.tar")
    shards: list[str] = []
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, post=shards.append) as writer:
        for i in range(count):
            label = i % num_classes
            clip = motion_frames(label, num_classes, frames, size, clip_rng(seed, split, i))
            meta = {
                "label": label,
                "source": f"synthetic:{split}:{seed}:{i}",
                "fps": fps,
                "num_frames": frames,
                "width": size,
                "height": size,
            }
            writer.write(
                {
                    "__key__": f"{split}{i:07d}",
                    "mp4": encode_video(
                        clip, fps=fps, crf=23, preset="veryfast", gop=8, x264_params=REPRODUCIBLE
                    ),
                    "json": json.dumps(meta).encode(),
                }
            )
    last = len(shards) - 1
    return os.path.join(out_dir, f"{split}-{{000000..{last:06d}}}.tar")


def write_synthetic_shards(
    out_dir: str,
    num_train: int = 512,
    num_val: int = 128,
    num_classes: int = 4,
    frames: int = 32,
    size: int = 64,
    seed: int = 0,
    num_probe_train: int | None = None,
    fps: float = 30.0,
    shard_size: int = 256,
) -> dict:
    """Write the three splits as H.264 shards under ``out_dir``; also writes ``synthetic.json``.

    Returns ``{"train": pattern, "probe_train": pattern, "val": pattern, "num_classes", "counts",
    "frames", "size", "seed"}``; patterns use braces (``train-{000000..000001}.tar``) and can be
    passed to ``VideoDataModule``/``eval_loader`` as they are. Labels cycle 0..K-1 (balanced).
    """
    if min(num_train, num_val) < 1 or num_classes < 2 or frames < 2 or size < 16:
        raise ValueError("need num_train, num_val >= 1, num_classes >= 2, frames >= 2, size >= 16")
    os.makedirs(out_dir, exist_ok=True)
    counts = {"train": num_train, "probe_train": num_probe_train or num_train, "val": num_val}
    info: dict = {
        split: _write_split(out_dir, split, n, num_classes, frames, size, seed, fps, shard_size)
        for split, n in counts.items()
    }
    info.update(
        num_classes=num_classes, counts=counts, frames=frames, size=size, seed=seed, fps=fps
    )
    with open(os.path.join(out_dir, "synthetic.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info
