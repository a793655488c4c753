"""Clip transforms: one crop/flip for all frames, ranges as configured, eval views, normalize."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from salt.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    normalize,
    random_resized_crop_params,
    train_transform,
)


def ramp_frames(t: int, h: int, w: int) -> np.ndarray:
    """Every frame identical: red = column ramp, green = row ramp (a crop's position is readable)."""
    frame = np.zeros((h, w, 3), np.uint8)
    frame[..., 0] = np.linspace(0, 255, w)[None, :]
    frame[..., 1] = np.linspace(0, 255, h)[:, None]
    return np.repeat(frame[None], t, axis=0)


def test_crop_params_respect_scale_and_aspect() -> None:
    rng = random.Random(0)
    for _ in range(500):
        top, left, h, w = random_resized_crop_params(256, 340, (0.3, 1.0), (0.75, 1.35), rng)
        assert top >= 0 and top + h <= 256 and left >= 0 and left + w <= 340
        assert 0.3 * 0.95 <= h * w / (256 * 340) <= 1.0
        assert 0.75 * 0.95 <= w / h <= 1.35 * 1.05


def test_crop_fallback_on_impossible_aspect() -> None:
    top, left, h, w = random_resized_crop_params(
        10, 200, (0.9, 1.0), (0.75, 1.35), random.Random(0)
    )
    assert (h, w) == (10, 14) and top == 0 and left == (200 - 14) // 2  # aspect clamped to 1.35


def test_train_transform_same_crop_and_flip_for_every_frame() -> None:
    frames = ramp_frames(8, 96, 128)
    frames[3] = 255 - frames[3]  # one frame differs: it must still get the same geometry
    seen_flip = seen_plain = False
    for seed in range(20):
        clip = train_transform(frames, 32, random.Random(seed))
        assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.uint8 and clip.is_contiguous()
        ref = clip[:, 0].float()
        for t in (1, 2, 4, 7):
            assert torch.equal(clip[:, t], clip[:, 0])
        assert torch.allclose(255 - clip[:, 3].float(), ref, atol=2)
        red = ref[0].mean(dim=0)  # column ramp after crop (+ flip)
        if red[0] > red[-1]:
            seen_flip = True
        else:
            seen_plain = True
    assert seen_flip and seen_plain


def test_train_transform_is_deterministic_given_the_rng() -> None:
    frames = ramp_frames(4, 64, 80)
    a = train_transform(frames, 24, random.Random(5))
    b = train_transform(frames, 24, random.Random(5))
    c = train_transform(frames, 24, random.Random(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_prob_zero_never_flips() -> None:
    frames = ramp_frames(2, 64, 64)
    for seed in range(20):
        red = (
            train_transform(frames, 16, random.Random(seed), flip_prob=0.0)[0, 0]
            .float()
            .mean(dim=0)
        )
        assert red[0] <= red[-1]


@pytest.mark.parametrize("h,w", [(96, 128), (128, 96), (45, 61)])  # landscape, portrait, odd
def test_eval_views_shapes_and_positions(h: int, w: int) -> None:
    frames = ramp_frames(2 * 4, h, w)  # 2 segments x 4 frames
    one = eval_transform(frames, 32, num_segments=2, num_views=1)
    three = eval_transform(frames, 32, num_segments=2, num_views=3)
    assert one.shape == (2, 1, 3, 4, 32, 32) and three.shape == (2, 3, 3, 4, 32, 32)
    axis = 0 if w >= h else 1  # the long side: red (columns) or green (rows)
    pos = [float(three[0, v, axis].float().mean()) for v in range(3)]
    assert pos[0] < pos[1] < pos[2]  # start, centre, end of the long side
    centre = float(one[0, 0, axis].float().mean())
    assert math.isclose(centre, pos[1], abs_tol=12)


def test_normalize_matches_definition_for_train_and_eval_shapes() -> None:
    video = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    out = normalize(video)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    assert out.dtype == torch.float32
    assert torch.allclose(out, (video.float() / 255 - mean) / std, atol=1e-5)
    eval_video = torch.randint(0, 256, (2, 2, 3, 3, 4, 8, 8), dtype=torch.uint8)  # [B,S,V,C,T,H,W]
    assert torch.allclose(normalize(eval_video)[1, 0, 2], normalize(eval_video[1, 0, 2]), atol=1e-6)
    with pytest.raises(TypeError):
        normalize(video.float())
