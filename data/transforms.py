"""Clip transforms on uint8 tensors, identical across the frames of a clip, plus ``normalize``.

Training (V-JEPA's recipe, docs/method.md): random-resized crop, scale U(0.3, 1.0) of the frame area, aspect
log-U(0.75, 1.35), resized to ``crop_size``; horizontal flip with probability 0.5.
Evaluation: short-side resize, then a center crop (1 view) or 3 crops along the long side.

Speed: the crop is a view (slicing), and the whole clip is resized in ONE
``F.interpolate(..., antialias=True)`` call on the [T, C, h, w] stack. Decoders give [T, H, W, 3]
arrays; ``permute`` to [T, 3, H, W] keeps that channels-last memory layout, which is the layout of
torch's fast uint8 antialiased bilinear kernel, so nothing is converted to float in the worker.
Floats appear only in ``normalize``, which the LightningModule runs on the device (1 byte per value
crosses the host->device link instead of 4).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] array -> uint8 [T, 3, H, W] tensor view (channels-last memory)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: random.Random,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering ``scale`` of the area with aspect ``ratio`` (w/h).

    Ten tries as in torchvision's RandomResizedCrop; if none fits, the largest centred crop whose
    aspect is clamped to ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [T, C, h, w] -> uint8 [T, C, *size], bilinear, antialiased when shrinking."""
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    shrink = size[0] < clip.shape[-2] or size[1] < clip.shape[-1]
    return F.interpolate(clip, size=size, mode="bilinear", antialias=shrink, align_corners=False)


def train_transform(
    frames: np.ndarray,
    crop_size: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (0.75, 1.35),
    flip_prob: float = 0.5,
) -> torch.Tensor:
    """uint8 [T, H, W, 3] frames -> uint8 [C, T, crop, crop] clip (random-resized crop + flip)."""
    clip = frames_to_tensor(frames)  # [T, 3, H, W]
    top, left, h, w = random_resized_crop_params(clip.shape[-2], clip.shape[-1], scale, ratio, rng)
    flip = flip_prob > 0 and rng.random() < flip_prob
    clip = resize(clip[:, :, top : top + h, left : left + w], (crop_size, crop_size))
    if flip:
        clip = clip.flip(-1)  # [T, 3, crop, crop]
    return clip.permute(1, 0, 2, 3).contiguous()  # [3, T, crop, crop]


def resize_short_side(clip: torch.Tensor, short_side: int) -> torch.Tensor:
    """uint8 [T, C, H, W] -> [T, C, H', W'] with min(H', W') = short_side, aspect kept."""
    h, w = clip.shape[-2:]
    if h <= w:
        size = (short_side, max(short_side, int(round(w * short_side / h))))
    else:
        size = (max(short_side, int(round(h * short_side / w))), short_side)
    return resize(clip, size)


def spatial_views(clip: torch.Tensor, crop_size: int, num_views: int) -> list[torch.Tensor]:
    """Center crop (``num_views=1``) or 3 crops along the long side (start, centre, end)."""
    h, w = clip.shape[-2:]
    if num_views == 1:
        tops, lefts = [(h - crop_size) // 2], [(w - crop_size) // 2]
    elif num_views == 3:
        if w >= h:
            tops = [(h - crop_size) // 2] * 3
            lefts = [0, (w - crop_size) // 2, w - crop_size]
        else:
            tops = [0, (h - crop_size) // 2, h - crop_size]
            lefts = [(w - crop_size) // 2] * 3
    else:
        raise ValueError(f"num_views must be 1 or 3, got {num_views}")
    return [
        clip[..., t : t + crop_size, lf : lf + crop_size] for t, lf in zip(tops, lefts, strict=True)
    ]


def eval_short_side(crop_size: int, num_views: int) -> int:
    """Default eval resize: 256/224 of the crop for a center crop, the crop itself for 3 crops."""
    return int(round(crop_size * 256 / 224)) if num_views == 1 else crop_size


def eval_transform(
    frames: np.ndarray,
    crop_size: int,
    num_segments: int = 1,
    num_views: int = 1,
    short_side: int | None = None,
) -> torch.Tensor:
    """uint8 [S*T, H, W, 3] frames (segments back to back) -> uint8 [S, V, C, T, crop, crop]."""
    clip = frames_to_tensor(frames)  # [S*T, 3, H, W]
    clip = resize_short_side(clip, short_side or eval_short_side(crop_size, num_views))
    views = torch.stack(spatial_views(clip, crop_size, num_views))  # [V, S*T, 3, crop, crop]
    v, st, c, hh, ww = views.shape
    views = views.reshape(v, num_segments, st // num_segments, c, hh, ww)  # [V, S, T, 3, h, w]
    return views.permute(1, 0, 3, 2, 4, 5).contiguous()  # [S, V, 3, T, h, w]


def normalize(
    video: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 [..., C, T, H, W] -> float32 (x / 255 - mean) / std, mean/std per channel in [0, 1].

    Works for train batches [B, C, T, H, W] and eval batches [B, S, V, C, T, H, W]; runs on the
    tensor's device (call it on the GPU after the uint8 copy).
    """
    if video.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 video, got {video.dtype}")
    c = video.shape[-4]
    m = torch.as_tensor(mean, dtype=torch.float32, device=video.device).view(c, 1, 1, 1) * 255.0
    s = torch.as_tensor(std, dtype=torch.float32, device=video.device).view(c, 1, 1, 1) * 255.0
    return (video.float() - m) / s
