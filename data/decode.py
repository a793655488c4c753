"""Decode the frames a clip needs from in-memory video bytes (decord, PyAV fallback).

Shards hold encoded bytes; a sample is decoded straight from memory (``io.BytesIO``), never via a
temporary file. Only the frames the sampler asks for are read: decord's ``get_batch`` seeks to the
nearest keyframe; the PyAV path decodes sequentially and stops after the last wanted frame.

Backends:
  ``"decord"``  decord only (fastest; Linux x86-64 wheels only).
  ``"pyav"``    PyAV only (works everywhere).
  ``"auto"``    decord when importable, and PyAV for any sample decord fails on. The fallback is
                reported (``DecodedClip.fallback``) so the stream can count it.

The frame choice is a callback ``choose(num_frames, fps) -> indices`` because the indices depend on
the video's length, which is only known after opening it. ``choose`` may raise ``SkipSample``
(e.g. too short with ``short_video="skip"``); that propagates unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import av
import numpy as np

from salt.data.stats import SkipSample

try:  # decord ships wheels for Linux x86-64 only; PyAV covers everything else.
    import decord

    decord.bridge.set_bridge("native")
    HAVE_DECORD = True
except ImportError:  # pragma: no cover - depends on the platform
    decord = None
    HAVE_DECORD = False

BACKENDS = ("auto", "decord", "pyav")
DEFAULT_FPS = 30.0

Chooser = Callable[[int, float], Sequence[int]]


@dataclass
class DecodedClip:
    """Frames of one clip: ``frames`` uint8 [n, H, W, 3] in the order of ``indices``."""

    frames: np.ndarray
    indices: list[int]
    num_frames: int
    fps: float
    backend: str
    fallback: bool = False


def resolve_backend(backend: str) -> str:
    """Check a backend name; ``"decord"`` without decord installed is a clear error."""
    if backend not in BACKENDS:
        raise ValueError(f"decoder must be one of {BACKENDS}, got {backend!r}")
    if backend == "decord" and not HAVE_DECORD:
        raise ImportError("decoder='decord' but decord is not installed; use 'auto' or 'pyav'")
    return backend


def _gather(unique_idx: np.ndarray, frames: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    """Frames for ``indices`` (any order, may repeat) from frames decoded at sorted ``unique_idx``.

    Distinct indices are not enough to skip the gather: the windows of several evaluation segments
    can overlap without sharing a frame (``[0, 40, 4, 44, ...]``), and their sorted union is not
    the requested order. Only a strictly increasing request is already in order.
    """
    wanted = np.asarray(indices)
    if len(unique_idx) == len(wanted) and np.array_equal(unique_idx, wanted):
        return frames  # strictly increasing request: decoded order is requested order, no copy
    return frames[np.searchsorted(unique_idx, wanted)]


def _decode_decord(data: bytes, choose: Chooser, threads: int) -> DecodedClip:
    vr = decord.VideoReader(io.BytesIO(data), num_threads=threads)
    n = len(vr)
    if n <= 0:
        raise SkipSample("zero_frames")
    fps = float(vr.get_avg_fps()) or DEFAULT_FPS
    indices = [int(i) for i in choose(n, fps)]
    unique = np.unique(indices)
    frames = vr.get_batch(unique.tolist()).asnumpy()  # [u, H, W, 3]
    if frames.ndim != 4 or frames.shape[0] != len(unique) or frames.shape[-1] != 3:
        raise ValueError(f"decord returned frames of shape {frames.shape}")  # -> PyAV fallback
    return DecodedClip(_gather(unique, frames, indices), indices, n, fps, "decord")


def _frame_count(stream: av.video.stream.VideoStream, fps: float) -> int | None:
    """Frame count from the container header, or estimated from its duration, or None."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    if stream.duration and stream.time_base:
        return max(1, int(round(float(stream.duration * stream.time_base) * fps)))
    return None


def _decode_pyav(data: bytes, choose: Chooser, threads: int) -> DecodedClip:
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise SkipSample("zero_frames", "no video stream")
        stream = container.streams.video[0]
        stream.thread_count = threads
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else DEFAULT_FPS
        n = _frame_count(stream, fps)
        if n is None:  # no header count: decode everything once, then choose
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            return _choose_from_all(frames, choose, fps)
        indices = [int(i) for i in choose(n, fps)]
        wanted = set(indices)
        last = max(indices)
        got: dict[int, np.ndarray] = {}
        count = 0
        for i, frame in enumerate(container.decode(stream)):
            count = i + 1
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    if len(got) == len(wanted):
        unique = np.array(sorted(got))
        return DecodedClip(
            _gather(unique, np.stack([got[i] for i in unique]), indices), indices, n, fps, "pyav"
        )
    # The header promised more frames than the stream holds: decode again with the true count.
    if count == 0:
        raise SkipSample("zero_frames")
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_count = threads
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return _choose_from_all(frames, choose, fps)


def _choose_from_all(frames: list[np.ndarray], choose: Chooser, fps: float) -> DecodedClip:
    if not frames:
        raise SkipSample("zero_frames")
    indices = [int(i) for i in choose(len(frames), fps)]
    return DecodedClip(np.stack([frames[i] for i in indices]), indices, len(frames), fps, "pyav")


def decode_clip(
    data: bytes, choose: Chooser, backend: str = "auto", threads: int = 1
) -> DecodedClip:
    """Decode the frames ``choose(num_frames, fps)`` selects from encoded video ``data``.

    Args:
        data: the encoded file's bytes (mp4, webm, ...).
        choose: maps (num_frames, fps) to the frame indices wanted (repeats allowed).
        backend: "auto" | "decord" | "pyav" (see the module docstring).
        threads: decoder threads per call; 1 in DataLoader workers (the workers are the parallelism).

    Raises:
        SkipSample: ``undecodable`` / ``zero_frames`` / whatever ``choose`` raises.
    """
    backend = resolve_backend(backend)
    if not data:
        raise SkipSample("undecodable", "zero-length file")
    fallback = False
    if backend in ("auto", "decord") and HAVE_DECORD:
        try:
            return _decode_decord(data, choose, threads)
        except SkipSample as skip:
            if skip.reason != "zero_frames" or backend == "decord":
                raise
        except Exception as err:  # decord raises RuntimeError/DECORDError on bad input
            if backend == "decord":
                raise SkipSample("undecodable", f"decord: {err}") from err
        fallback = True
    try:
        clip = _decode_pyav(data, choose, threads)
    except SkipSample:
        raise
    except Exception as err:  # av.error.* on corrupt/unsupported input
        raise SkipSample("undecodable", f"pyav: {err}") from err
    clip.fallback = fallback
    return clip
