"""Which frames make a clip: random window for training, K uniform segments for evaluation.

A clip is ``frames_per_clip`` frames taken every ``step`` frames, so it spans
``(frames_per_clip - 1) * step + 1`` source frames. ``step`` comes from ``frame_step`` or, when
``target_fps`` is given, from the video's own fps (``step = fps / target_fps``, fractional steps are
rounded per frame, never below 1).

Videos shorter than the span (V-JEPA convention): ``short_video="pad"`` keeps the frames there are
and repeats the last one; ``"skip"`` raises ``SkipSample("too_short")``. Both are counted upstream
(the returned ``padded`` flag / the skip reason).
"""

from __future__ import annotations

import math
import random

from .stats import SkipSample

SHORT_VIDEO = ("pad", "skip")


def clip_step(fps: float, frame_step: float, target_fps: float | None) -> float:
    """Source frames between two clip frames: ``frame_step``, or ``fps / target_fps``."""
    if target_fps is not None:
        if target_fps <= 0:
            raise ValueError(f"target_fps must be > 0, got {target_fps}")
        return max(1.0, fps / target_fps)
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    return float(frame_step)


def clip_span(frames_per_clip: int, step: float) -> int:
    """Number of source frames one clip covers (first to last, inclusive)."""
    return int(round((frames_per_clip - 1) * step)) + 1


def _window(
    start: int, frames_per_clip: int, step: float, num_frames: int
) -> tuple[list[int], bool]:
    """Indices of a window starting at ``start``; past-the-end indices repeat the last frame."""
    idx = [start + int(round(i * step)) for i in range(frames_per_clip)]
    padded = idx[-1] >= num_frames
    return [min(i, num_frames - 1) for i in idx], padded


def _check_short(num_frames: int, span: int, short_video: str) -> None:
    if short_video not in SHORT_VIDEO:
        raise ValueError(f"short_video must be one of {SHORT_VIDEO}, got {short_video!r}")
    if num_frames <= 0:
        raise SkipSample("zero_frames")
    if num_frames < span and short_video == "skip":
        raise SkipSample("too_short", f"{num_frames} frames < window of {span}")


def train_indices(
    num_frames: int,
    frames_per_clip: int,
    step: float,
    rng: random.Random,
    short_video: str = "pad",
) -> tuple[list[int], bool]:
    """A window at a uniformly random start. Returns (indices, padded)."""
    span = clip_span(frames_per_clip, step)
    _check_short(num_frames, span, short_video)
    start = rng.randint(0, max(0, num_frames - span))
    return _window(start, frames_per_clip, step, num_frames)


def segment_indices(
    num_frames: int,
    frames_per_clip: int,
    step: float,
    num_segments: int,
    short_video: str = "pad",
) -> tuple[list[list[int]], bool]:
    """``num_segments`` windows centred on K equal parts of the video (deterministic).

    Each window is centred on the centre of its segment and shifted to fit inside the video; when
    the video is shorter than a window every segment starts at frame 0 (and is padded).
    Returns (one index list per segment, padded).
    """
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    span = clip_span(frames_per_clip, step)
    _check_short(num_frames, span, short_video)
    seg_len = num_frames / num_segments
    out, padded = [], False
    for k in range(num_segments):
        centre = (k + 0.5) * seg_len
        start = int(math.floor(centre - span / 2))
        start = min(max(0, start), max(0, num_frames - span))
        idx, pad = _window(start, frames_per_clip, step, num_frames)
        out.append(idx)
        padded = padded or pad
    return out, padded


def train_segment_indices(
    num_frames: int,
    frames_per_clip: int,
    step: float,
    num_segments: int,
    rng: random.Random,
    short_video: str = "pad",
) -> tuple[list[list[int]], bool]:
    """One random window per segment (training view of an S-segment clip).

    The video is cut into ``num_segments`` equal parts; each window starts uniformly at random
    where it fits inside its part. When a part is shorter than a window, the windows are placed as
    ``segment_indices`` places them (centred, shifted to fit), as V-JEPA 2 does then.
    ``num_segments=1`` is ``train_indices``. Returns (one index list per segment, padded).
    """
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    span = clip_span(frames_per_clip, step)
    seg_len = num_frames / num_segments
    if seg_len < span:
        return segment_indices(num_frames, frames_per_clip, step, num_segments, short_video)
    _check_short(num_frames, span, short_video)
    out = []
    for k in range(num_segments):
        lo = int(math.ceil(k * seg_len))
        hi = int(math.floor((k + 1) * seg_len)) - span
        start = rng.randint(lo, max(lo, hi))
        out.append(_window(start, frames_per_clip, step, num_frames)[0])
    return out, False
