"""Train-time augmentation of the frozen-backbone probe (V-JEPA 2's recipe), on uint8 clips.

V-JEPA 2's frozen video classification trains its heads on one sampled view per clip with
(``evals/video_classification_frozen``): random-resized crop, scale U(0.08, 1.0), aspect
log-U(3/4, 4/3); **no** horizontal flip (its loader passes ``random_horizontal_flip=False``: SSv2's
labels name directions); RandAugment ``rand-m7-n4-mstd0.5-inc1`` (4 ops at magnitude 7 of 10);
random erasing with probability 0.25, one box of 2-33 % of the area, aspect 0.3-3.3, filled with
per-pixel N(0, 1) noise in normalised space. Each temporal segment of a clip is augmented on its
own draw; every frame of a segment gets the same crop, ops and box.

Here (``TrainAugment``, every part switchable):
* crop/flip: ``salt.data.transforms`` (the crop is a slice, one antialiased resize per segment).
* RandAugment: torchvision's ``v2.RandAugment`` (4 ops, magnitude 7 of 10 via 11 magnitude
  bins, bilinear, grey fill 128). Given a [T, C, H, W] tensor it draws one op sequence for all
  T frames, which is exactly "identical on every frame". Its op list is torchvision's (Identity
  in, timm's Invert/SolarizeAdd out) and its magnitude has no per-op noise (``mstd``).
  V-JEPA 2 applies it to the full decoded frame before cropping; by default we apply it after
  the crop, to crop_size² pixels (about 3x less CPU for 256-px shards, the ops are the same);
  ``randaugment_full_frame=True`` restores V-JEPA 2's order.
* erasing: the box from torchvision's ``v2.RandomErasing`` (its ``make_params``); the fill is
  drawn here, per pixel and frame, as ``mean + std * N(0, 1)`` in uint8 (clamped to 0-255),
  which is V-JEPA 2's normalised-space noise for a uint8 clip: torchvision's own ``"random"``
  fill draws float normals that a uint8 tensor cannot hold.

torchvision draws from torch's global generator; a clip's draws run on this stream's own
generator state (swapped in and out, a few microseconds), so streams are reproducible from their
seed and the caller's global RNG is left untouched.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2

from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    frames_to_tensor,
    random_resized_crop_params,
    resize,
)


@dataclass
class TrainAugment:
    """Settings of the probe's train-time augmentation (defaults: V-JEPA 2's frozen eval).

    Args:
        crop_size: output side (224 or 256).
        scale: random-resized-crop area range.
        aspect: random-resized-crop aspect (w/h) range, sampled log-uniformly.
        flip_prob: horizontal flip probability (0: V-JEPA 2's frozen eval does not flip).
        randaugment: apply RandAugment.
        randaugment_ops: ops per segment.
        randaugment_magnitude: magnitude out of 10.
        randaugment_full_frame: RandAugment before the crop on the full frame (V-JEPA 2's order,
            slower) instead of after it.
        erase_prob: random-erasing probability (0 = off).
        mean: per-channel mean in [0, 1] of the model's normalisation (erasing noise).
        std: per-channel std in [0, 1] of the model's normalisation (erasing noise).
    """

    crop_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    aspect: tuple[float, float] = (0.75, 4 / 3)
    flip_prob: float = 0.0
    randaugment: bool = True
    randaugment_ops: int = 4
    randaugment_magnitude: int = 7
    randaugment_full_frame: bool = False
    erase_prob: float = 0.25
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {self.crop_size}")
        if not 0 <= self.randaugment_magnitude <= 10:
            raise ValueError(
                f"randaugment_magnitude is out of 10, got {self.randaugment_magnitude}"
            )
        if not (0.0 <= self.erase_prob <= 1.0 and 0.0 <= self.flip_prob <= 1.0):
            raise ValueError("erase_prob and flip_prob must be in [0, 1]")


class TorchRng:
    """A private torch CPU generator state for torchvision's global-RNG draws."""

    def __init__(self, seed: int) -> None:
        g = torch.Generator()
        g.manual_seed(seed)
        self.state = g.get_state()

    @contextmanager
    def active(self) -> Iterator[None]:
        saved = torch.random.get_rng_state()
        torch.random.set_rng_state(self.state)
        try:
            yield
        finally:
            self.state = torch.random.get_rng_state()
            torch.random.set_rng_state(saved)


class SegmentAugmenter:
    """Augments the segments of training clips; one per stream (holds the torch RNG state)."""

    def __init__(self, aug: TrainAugment, seed: int) -> None:
        self.aug, self.torch_rng = aug, TorchRng(seed)
        self.randaugment = (
            v2.RandAugment(
                num_ops=aug.randaugment_ops,
                magnitude=aug.randaugment_magnitude,
                num_magnitude_bins=11,  # magnitude m of 10, as timm's "m7"
                interpolation=v2.InterpolationMode.BILINEAR,  # tensors: no bicubic rotate/affine
                fill=128,
            )
            if aug.randaugment
            else None
        )
        self.eraser = v2.RandomErasing(p=1.0, scale=(0.02, 1 / 3), ratio=(0.3, 1 / 0.3), value=0)
        self._mean = torch.tensor(aug.mean).view(1, 3, 1, 1) * 255.0  # [1, 3, 1, 1]
        self._std = torch.tensor(aug.std).view(1, 3, 1, 1) * 255.0

    def __call__(self, frames: np.ndarray, num_segments: int, rng: random.Random) -> torch.Tensor:
        """uint8 [S*T, H, W, 3] (segments back to back) -> uint8 [S, C, T, crop, crop]."""
        clip = frames_to_tensor(frames)  # [S*T, 3, H, W]
        t = clip.shape[0] // num_segments
        segs = [self.segment(clip[k * t : (k + 1) * t], rng) for k in range(num_segments)]
        return torch.stack(segs)  # [S, 3, T, crop, crop]

    def segment(self, clip: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """uint8 [T, 3, H, W] -> uint8 [3, T, crop, crop], one draw for every frame."""
        aug = self.aug
        needs_torch = self.randaugment is not None or aug.erase_prob > 0
        with self.torch_rng.active() if needs_torch else _nothing():
            if self.randaugment is not None and aug.randaugment_full_frame:
                clip = self.randaugment(clip)
            top, left, h, w = random_resized_crop_params(
                clip.shape[-2], clip.shape[-1], aug.scale, aug.aspect, rng
            )
            clip = resize(clip[:, :, top : top + h, left : left + w], (aug.crop_size,) * 2)
            if aug.flip_prob > 0 and rng.random() < aug.flip_prob:
                clip = clip.flip(-1)
            if self.randaugment is not None and not aug.randaugment_full_frame:
                clip = self.randaugment(clip)  # [T, 3, crop, crop]
            if aug.erase_prob > 0 and rng.random() < aug.erase_prob:
                clip = self.erase(clip)
        return clip.permute(1, 0, 2, 3).contiguous()  # [3, T, crop, crop]

    def erase(self, clip: torch.Tensor) -> torch.Tensor:
        """One box (same on every frame) filled with per-pixel normalised-space noise."""
        p = self.eraser.make_params([clip])
        if p["v"] is None:  # no box fitted in torchvision's 10 tries
            return clip
        i, j, h, w = p["i"], p["j"], p["h"], p["w"]
        noise = torch.randn(clip.shape[0], 3, h, w) * self._std + self._mean  # [T, 3, h, w]
        clip = clip.clone()
        clip[:, :, i : i + h, j : j + w] = noise.round_().clamp_(0, 255).to(torch.uint8)
        return clip


@contextmanager
def _nothing() -> Iterator[None]:
    yield
