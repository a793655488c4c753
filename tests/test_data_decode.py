"""Decoding real H.264 bytes (decord and PyAV) and choosing frames: windows, segments, short videos."""

from __future__ import annotations

import random

import numpy as np
import pytest
from helpers_video import index_video, mpegts_video

from salt.data.decode import HAVE_DECORD, decode_clip
from salt.data.sampling import clip_span, clip_step, segment_indices, train_indices
from salt.data.stats import SkipSample

BACKENDS = ["pyav"] + (["decord"] if HAVE_DECORD else [])


def levels(frames: np.ndarray) -> list[int]:
    """Frame numbers of decoded ``index_video`` frames [n, H, W, 3]."""
    return [int(round((float(f.mean()) - 8) / 4)) for f in frames]


@pytest.fixture(scope="module")
def video40() -> bytes:
    return index_video(40)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decodes_exactly_the_requested_frames(video40: bytes, backend: str) -> None:
    wanted = [3, 7, 11, 11, 39]  # repeats allowed (padding)
    clip = decode_clip(video40, lambda n, fps: wanted, backend=backend)
    assert clip.num_frames == 40 and clip.fps == pytest.approx(30.0)
    assert clip.frames.shape == (5, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert levels(clip.frames) == wanted
    assert not clip.fallback


@pytest.mark.skipif(not HAVE_DECORD, reason="decord not installed")
def test_backends_agree_on_pixels(video40: bytes) -> None:
    a = decode_clip(video40, lambda n, fps: [0, 20], backend="decord").frames.astype(int)
    b = decode_clip(video40, lambda n, fps: [0, 20], backend="pyav").frames.astype(int)
    assert np.abs(a - b).max() <= 3


@pytest.mark.skipif(not HAVE_DECORD, reason="fallback needs decord to fail first")
def test_auto_falls_back_to_pyav_and_reports_it() -> None:
    data = mpegts_video()
    with pytest.raises(SkipSample):
        decode_clip(data, lambda n, fps: [0], backend="decord")
    clip = decode_clip(data, lambda n, fps: [0, 5], backend="auto")
    assert clip.fallback and clip.backend == "pyav"
    assert levels(clip.frames) == [0, 5]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name,data",
    [
        ("random bytes", np.random.default_rng(0).bytes(4000)),
        ("zero-length", b""),
        ("text named .mp4", b"this is not a video\n" * 20),
    ],
)
def test_garbage_is_undecodable(name: str, data: bytes, backend: str) -> None:
    with pytest.raises(SkipSample) as info:
        decode_clip(data, lambda n, fps: [0], backend=backend)
    assert info.value.reason == "undecodable", name


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_mp4_is_undecodable(video40: bytes, backend: str) -> None:
    with pytest.raises(SkipSample) as info:
        decode_clip(video40[: len(video40) // 2], lambda n, fps: [0], backend=backend)
    assert info.value.reason == "undecodable"


def test_unknown_backend_is_a_clear_error(video40: bytes) -> None:
    with pytest.raises(ValueError, match="decoder must be one of"):
        decode_clip(video40, lambda n, fps: [0], backend="ffmpeg")


# ------------------------------------------------------------------ sampling


def test_train_window_is_inside_and_evenly_stepped() -> None:
    rng = random.Random(0)
    starts = set()
    for _ in range(200):
        idx, padded = train_indices(100, 16, 4, rng)
        assert not padded and len(idx) == 16
        assert all(b - a == 4 for a, b in zip(idx, idx[1:], strict=False))
        assert idx[0] >= 0 and idx[-1] <= 99
        starts.add(idx[0])
    assert min(starts) == 0 and max(starts) == 100 - clip_span(16, 4)  # both ends reachable


def test_short_video_padded_with_last_frame_or_skipped() -> None:
    idx, padded = train_indices(10, 8, 2, random.Random(0))
    assert padded and idx == [0, 2, 4, 6, 8, 9, 9, 9]
    with pytest.raises(SkipSample) as info:
        train_indices(10, 8, 2, random.Random(0), short_video="skip")
    assert info.value.reason == "too_short"
    with pytest.raises(SkipSample) as info:
        train_indices(0, 8, 2, random.Random(0))
    assert info.value.reason == "zero_frames"


def test_one_frame_video_pads_to_a_full_clip() -> None:
    clip = decode_clip(index_video(1), lambda n, fps: train_indices(n, 8, 4, random.Random(0))[0])
    assert clip.frames.shape[0] == 8 and levels(clip.frames) == [0] * 8


def test_segments_are_uniform_and_ordered() -> None:
    segs, padded = segment_indices(300, 16, 4, num_segments=3)
    assert not padded and len(segs) == 3
    centres = [(s[0] + s[-1]) / 2 for s in segs]
    assert centres == pytest.approx([50, 150, 250], abs=1)
    assert segs[0][0] >= 0 and segs[-1][-1] <= 299
    segs, padded = segment_indices(20, 16, 4, num_segments=2)
    assert padded and segs[0] == segs[1] and segs[0][0] == 0 and segs[0][-1] == 19


def test_target_fps_sets_the_step() -> None:
    assert clip_step(60.0, 4, target_fps=15.0) == 4.0
    assert clip_step(30.0, 4, target_fps=None) == 4.0
    assert clip_step(10.0, 4, target_fps=30.0) == 1.0  # never below 1
    idx, _ = train_indices(200, 4, clip_step(25.0, 4, 10.0), random.Random(1))
    assert [b - a for a, b in zip(idx, idx[1:], strict=False)] == [2, 3, 3]  # step 2.5, rounded


# ------------------------------------------------------------------ frame order


@pytest.fixture(scope="module")
def video60() -> bytes:
    return index_video(60)  # frame k is grey level 8 + 4k: read back by rounding


@pytest.mark.parametrize("backend", BACKENDS)
def test_interleaved_windows_come_back_in_requested_order(video60: bytes, backend: str) -> None:
    # two windows of stride 4 that overlap in time without sharing a frame, interleaved
    wanted = [0, 40, 4, 44, 8, 48, 12, 52, 16, 56]
    clip = decode_clip(video60, lambda n, fps: wanted, backend=backend)
    assert levels(clip.frames) == wanted
    backwards = [59, 30, 1, 29, 2]  # any order, not only window interleavings
    assert (
        levels(decode_clip(video60, lambda n, fps: backwards, backend=backend).frames) == backwards
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_overlapping_eval_segments_keep_their_frames(backend: str) -> None:
    # 40 frames, 2 segments of 8 frames at step 4 (span 29): windows [0..28] and [11..39] overlap
    # without a common frame, so the decoded union must be split back per segment
    segs, padded = segment_indices(40, 8, 4, num_segments=2)
    assert not padded and not set(segs[0]) & set(segs[1]) and segs[1][0] < segs[0][-1]
    flat = [i for seg in segs for i in seg]
    clip = decode_clip(index_video(40), lambda n, fps: flat, backend=backend)
    assert levels(clip.frames[:8]) == segs[0] and levels(clip.frames[8:]) == segs[1]
