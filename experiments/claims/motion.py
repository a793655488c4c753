"""A synthetic video task that needs motion: the class is how objects move against the scene.

Each clip (uint8 ``[3, T, H, W]``, generated on any device with torch, deterministic from a seed):

- a textured background (a sum of plane waves with integer frequencies, so it tiles the frame)
  that translates with a random *camera motion* (direction uniform, 0–``camera_speed`` px/frame);
- two or three textured *actors* (disks, squares or diamonds, each with its own texture and
  colours) that move with the camera plus their class velocity: direction ``2π·c/K`` (± a small
  jitter) at ``actor_speed`` px/frame, the same for every actor of the clip;
- one *distractor* of the same kind moving in a random direction, drawn on top: it occludes the
  actors and the background (and actors occlude each other and the background);
- everything wraps around the frame edges (the scene is a torus).

The label is the direction of the actors' motion *relative to the background* (K = 8 classes):
neither the absolute motion in the image (the camera adds a random velocity) nor any single
frame carries it. Positions, texture phases, shapes and colours are uniform and independent of the
label, so every single frame has the same distribution whatever the class — a single-frame model
is at chance by construction, which ``single_frame`` lets a probe check. ``shuffle_frames``
destroys the temporal order but keeps the set of frames: the set still shows the *axis* of the
relative motion (not its sign), so up to twice chance is reachable from it.

All lengths scale with the frame size (given for 64 px). Sizes and speeds are generator options;
the defaults are the study's and are fixed before any model was trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SPLITS = {"train": 0, "probe_train": 1, "val": 2}


@dataclass(frozen=True)
class MotionTask:
    """Generator settings (lengths in pixels at 64 px; scaled with ``size``)."""

    num_classes: int = 8
    frames: int = 8
    size: int = 64
    actors: tuple[int, int] = (2, 3)  # min, max per clip
    radius: tuple[float, float] = (6.0, 11.0)
    actor_speed: tuple[float, float] = (1.5, 3.0)  # px / frame, relative to the background
    camera_speed: float = 2.0  # max px / frame of the background
    distractor_speed: tuple[float, float] = (1.0, 3.0)
    waves: int = 4  # plane waves per texture
    jitter: float = math.pi / 16  # max deviation from the class direction (classes are π/4 apart)


def _texture(
    g: torch.Generator, n: int, waves: int, size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Random periodic textures for ``n`` layers: integer frequencies, phases, two colours."""
    kw = {"generator": g, "device": device}
    freq = torch.randint(1, 5, (n, waves, 2), **kw) * (
        torch.randint(0, 2, (n, waves, 2), **kw) * 2 - 1
    )
    amp = 0.5 + 0.5 * torch.rand(n, waves, **kw)
    phase = 2 * math.pi * torch.rand(n, waves, **kw)
    dark = 110 * torch.rand(n, 3, **kw)
    light = 145 + 110 * torch.rand(n, 3, **kw)
    swap = torch.rand(n, 1, **kw) < 0.5
    c0, c1 = torch.where(swap, light, dark), torch.where(swap, dark, light)
    return {"freq": freq.float(), "amp": amp, "phase": phase, "c0": c0, "c1": c1, "size": size}


def _paint(tex: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Colour of textures at coordinates ``x, y [n, T, H, W]`` → ``[n, T, H, W, 3]`` in [0, 255]."""
    f, a, p = tex["freq"], tex["amp"], tex["phase"]  # [n, K, 2], [n, K], [n, K]
    arg = f[..., 0, None, None, None] * x[:, None] + f[..., 1, None, None, None] * y[:, None]
    field = (
        a[..., None, None, None]
        * torch.cos(2 * math.pi * arg / tex["size"] + p[..., None, None, None])
    ).sum(1)
    std = torch.sqrt((a**2).sum(1) / 2)[:, None, None, None]  # field std over uniform phases
    u = 0.5 + 0.5 * torch.tanh(field / (1.2 * std))  # [n, T, H, W]
    c0, c1 = tex["c0"][:, None, None, None], tex["c1"][:, None, None, None]  # [n, 1, 1, 1, 3]
    return c0 + (c1 - c0) * u[..., None]


def _wrap(d: torch.Tensor, size: int) -> torch.Tensor:
    """Signed shortest displacement on a circle of length ``size``."""
    return torch.remainder(d + size / 2, size) - size / 2


def generate(
    task: MotionTask, n: int, seed: int, split: str = "train", device: str | torch.device = "cpu",
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``n`` clips of one split: uint8 ``[n, 3, T, H, W]`` and int64 labels ``[n]`` (balanced).

    Args:
        task: generator settings.
        n: number of clips.
        seed: dataset seed (each split draws from its own stream).
        split: ``"train"``, ``"probe_train"`` or ``"val"``.
        device: where the clips are made and kept.
        chunk: clips generated at once (bounds the temporary memory).
    """
    device = torch.device(device)
    videos, labels = [], []
    for start in range(0, n, chunk):
        g = torch.Generator(device=device).manual_seed(
            seed * 1_000_003 + SPLITS[split] * 1009 + start
        )
        idx = torch.arange(start, min(start + chunk, n), device=device)
        v, y = _clips(task, idx % task.num_classes, g, device)
        videos.append(v)
        labels.append(y)
    return torch.cat(videos), torch.cat(labels).cpu()


def _clips(
    task: MotionTask, label: torch.Tensor, g: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    m, T, S = len(label), task.frames, task.size
    scale = S / 64.0
    kw = {"generator": g, "device": device}

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, **kw)

    t = torch.arange(T, device=device, dtype=torch.float32)[None, :, None, None]  # [1, T, 1, 1]
    coords = torch.arange(S, device=device, dtype=torch.float32)
    X, Y = coords[None, None, None, :], coords[None, None, :, None]  # [1, 1, 1, W], [1, 1, H, 1]

    # camera: the background texture translates by cam·t
    cam_angle = uniform(0, 2 * math.pi, m)
    cam_speed = uniform(0, task.camera_speed * scale, m)
    cam = torch.stack([cam_speed * torch.cos(cam_angle), -cam_speed * torch.sin(cam_angle)], 1)
    bg = _texture(g, m, task.waves, S, device)
    frame = _paint(bg, X - cam[:, 0, None, None, None] * t, Y - cam[:, 1, None, None, None] * t)

    # actors (class direction, relative to the camera), then one distractor on top
    n_act = task.actors[1]
    angle = 2 * math.pi * label.float()[:, None] / task.num_classes + uniform(
        -task.jitter, task.jitter, m, 1
    )  # [m, 1]: one class direction per clip, shared by its actors
    speed = uniform(*task.actor_speed, m, n_act) * scale
    rel = torch.stack([speed * torch.cos(angle), -speed * torch.sin(angle)], -1)  # [m, A, 2]
    present = torch.ones(m, n_act, dtype=torch.bool, device=device)
    extra = task.actors[1] - task.actors[0]
    if extra:  # clips with fewer actors drop their last ones
        keep = torch.randint(task.actors[0], task.actors[1] + 1, (m, 1), **kw)
        present = torch.arange(n_act, device=device)[None] < keep
    d_angle = uniform(0, 2 * math.pi, m, 1)
    d_speed = uniform(*task.distractor_speed, m, 1) * scale
    distractor = torch.stack([d_speed * torch.cos(d_angle), -d_speed * torch.sin(d_angle)], -1)
    velocity = torch.cat([rel, distractor], 1) + cam[:, None]  # [m, A+1, 2] in the image
    present = torch.cat([present, torch.ones(m, 1, dtype=torch.bool, device=device)], 1)
    for k in range(n_act + 1):  # painter's order: later objects occlude earlier ones
        pos0 = uniform(0, S, m, 2)
        cx = pos0[:, 0, None, None, None] + velocity[:, k, 0, None, None, None] * t  # [m, T, 1, 1]
        cy = pos0[:, 1, None, None, None] + velocity[:, k, 1, None, None, None] * t
        dx, dy = _wrap(X - cx, S), _wrap(Y - cy, S)  # [m, T, H, W] displacement from the centre
        r = uniform(*task.radius, m)[:, None, None, None] * scale
        shape = torch.randint(0, 3, (m,), **kw)[:, None, None, None]
        inside = torch.where(
            shape == 0,
            dx**2 + dy**2 < r**2,  # disk
            torch.where(shape == 1, torch.maximum(dx.abs(), dy.abs()) < 0.85 * r, dx.abs() + dy.abs() < 1.2 * r),
        )  # fmt: skip
        inside &= present[:, k, None, None, None]
        tex = _texture(g, m, task.waves, S, device)
        colour = _paint(tex, dx, dy)  # the texture moves with the object
        frame = torch.where(inside[..., None], colour, frame)
    video = (frame + 0.5).clamp(0, 255).to(torch.uint8)  # [m, T, H, W, 3]
    return video.permute(0, 4, 1, 2, 3).contiguous(), label  # [m, 3, T, H, W]


def single_frame(video: torch.Tensor, index: int | None = None) -> torch.Tensor:
    """Every frame replaced by one (the middle one by default): ``[n, C, T, H, W]`` → same shape."""
    t = video.shape[2] // 2 if index is None else index
    return video[:, :, t : t + 1].expand_as(video).contiguous()


def shuffle_frames(video: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Frames of each clip in a random order (one permutation per clip, seeded)."""
    n, T = video.shape[0], video.shape[2]
    g = torch.Generator().manual_seed(seed)
    perm = torch.argsort(torch.rand(n, T, generator=g), dim=1).to(video.device)  # [n, T]
    index = perm[:, None, :, None, None].expand(-1, video.shape[1], -1, *video.shape[3:])
    return torch.gather(video, 2, index)
