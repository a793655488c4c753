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

Two guards against files that lie or hang:
  * The frame count. Containers carry a frame count (mp4: the sample table) that can claim more
    frames than decode (a damaged tail); asking for those frames makes decord fail, and on some
    files spin forever. ``salt-shards`` stores the count it actually decoded in each sample's
    JSON; when given (``num_frames``) the smaller of the two is used, so the indices never reach
    past the frames that exist.
  * ``timeout``: decord's ``get_batch`` is one C call, and a Python signal (``SIGALRM``) cannot
    interrupt it: the handler only runs once the call returns, i.e. never for a spinning decode.
    So a decode with a time limit runs on a helper daemon thread of the calling process (decord
    calls through ctypes and PyAV through Cython ``nogil``, both release the GIL, so waiting on
    the thread is cheap and exact). If no result arrives in time the call raises
    ``SkipSample("decode_timeout")`` and the helper is abandoned - a thread cannot be killed; it
    ends whenever its C call returns, and its ``choose`` callback is disarmed so a late result
    changes nothing - and the next call starts a fresh helper. A subprocess could be killed, but
    would copy every decoded clip between processes on the hot path; stuck decodes are rare, so a
    per-process cap (``MAX_STUCK_DECODES`` helpers still running) turns a file set that keeps
    hanging the decoder into an error instead of a worker that slowly loses its cores.
"""

from __future__ import annotations

import io
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from .stats import SkipSample

try:  # decord ships wheels for Linux x86-64 only; PyAV covers everything else.
    import decord

    decord.bridge.set_bridge("native")
    HAVE_DECORD = True
except ImportError:  # pragma: no cover - depends on the platform
    decord = None
    HAVE_DECORD = False

BACKENDS = ("auto", "decord", "pyav")
DEFAULT_FPS = 30.0
DEFAULT_DECODE_TIMEOUT = 120.0  # s per sample; generous: a long 1080p video decodes in a few s
MAX_STUCK_DECODES = 8  # abandoned helpers still running in one process -> RuntimeError

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


def _cap(header: int | None, true_count: int | None) -> int | None:
    """The frame count to trust: the smaller of the header's and the metadata's."""
    if header is None or header <= 0:
        return true_count
    return header if true_count is None else min(header, true_count)


def _decode_decord(
    data: bytes, choose: Chooser, threads: int, true_count: int | None
) -> DecodedClip:
    vr = decord.VideoReader(io.BytesIO(data), num_threads=threads)
    n = _cap(len(vr), true_count) or 0
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


def _decode_pyav(data: bytes, choose: Chooser, threads: int, true_count: int | None) -> DecodedClip:
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise SkipSample("zero_frames", "no video stream")
        stream = container.streams.video[0]
        stream.thread_count = threads
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else DEFAULT_FPS
        n = _cap(_frame_count(stream, fps), true_count)
        if n is None:  # no count anywhere: decode everything once, then choose
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
    data: bytes,
    choose: Chooser,
    backend: str = "auto",
    threads: int = 1,
    num_frames: int | None = None,
    timeout: float | None = None,
) -> DecodedClip:
    """Decode the frames ``choose(num_frames, fps)`` selects from encoded video ``data``.

    Args:
        data: the encoded file's bytes (mp4, webm, ...).
        choose: maps (num_frames, fps) to the frame indices wanted (repeats allowed).
        backend: "auto" | "decord" | "pyav" (see the module docstring).
        threads: decoder threads per call; 1 in DataLoader workers (the workers are the parallelism).
        num_frames: the video's true frame count if known (shard metadata); caps the header's.
        timeout: seconds before the call gives up (``SkipSample("decode_timeout")``); None = no
            limit (decodes inline, no helper thread).

    Raises:
        SkipSample: ``undecodable`` / ``zero_frames`` / ``decode_timeout`` / whatever ``choose``
            raises.
    """
    backend = resolve_backend(backend)
    if not data:
        raise SkipSample("undecodable", "zero-length file")
    if not timeout:
        return _decode(data, choose, backend, threads, num_frames)
    return _call_with_timeout(
        lambda guarded: _decode(data, guarded(choose), backend, threads, num_frames), timeout
    )


def _decode(
    data: bytes, choose: Chooser, backend: str, threads: int, num_frames: int | None
) -> DecodedClip:
    fallback = False
    if backend in ("auto", "decord") and HAVE_DECORD:
        try:
            return _decode_decord(data, choose, threads, num_frames)
        except SkipSample as skip:
            if skip.reason != "zero_frames" or backend == "decord":
                raise
        except Exception as err:  # decord raises RuntimeError/DECORDError on bad input
            if backend == "decord":
                raise SkipSample("undecodable", f"decord: {err}") from err
        fallback = True
    try:
        clip = _decode_pyav(data, choose, threads, num_frames)
    except SkipSample:
        raise
    except Exception as err:  # av.error.* on corrupt/unsupported input
        raise SkipSample("undecodable", f"pyav: {err}") from err
    clip.fallback = fallback
    return clip


# ---------------------------------------------------------------------- time limit


class _Abandoned(Exception):
    """Raised inside an abandoned decode when it reaches its ``choose`` callback."""


class _Job:
    def __init__(self, fn: Callable[[Callable[[Chooser], Chooser]], Any]) -> None:
        self.fn, self.done, self.abandoned = fn, threading.Event(), False
        self.result: Any = None
        self.error: BaseException | None = None

    def guard(self, choose: Chooser) -> Chooser:
        def guarded(n: int, fps: float) -> Sequence[int]:
            if self.abandoned:  # a late decode must not touch the caller's rng or counts
                raise _Abandoned
            return choose(n, fps)

        return guarded

    def run(self) -> None:
        try:
            self.result = self.fn(self.guard)
        except BaseException as err:  # handed to the waiting caller
            self.error = err
        finally:
            self.done.set()


class _Helper:
    """One daemon thread that runs decode jobs in order."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._loop, name="salt-decode", daemon=True)
        self.thread.start()

    def retire(self) -> None:
        """The thread ends once its current job returns (None is its stop signal)."""
        self.jobs.put(None)

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            job.run()


_helper: _Helper | None = None
_stuck: list[_Helper] = []


def busy_helpers() -> int:
    """Abandoned decode threads of this process that are still inside a decoder call.

    Forking while one runs copies a process whose decoder state (FFmpeg/decord mutexes) another
    thread holds: ``salt.data.loader`` starts workers without fork then.
    """
    return sum(h.thread.is_alive() for h in _stuck if h.pid == os.getpid())


def _call_with_timeout(fn: Callable[[Callable[[Chooser], Chooser]], Any], timeout: float) -> Any:
    """Run ``fn(guard)`` on this process's helper thread; give up after ``timeout`` seconds."""
    global _helper
    if _helper is None or _helper.pid != os.getpid():  # none yet, or inherited through fork
        _helper = _Helper()
    job = _Job(fn)
    _helper.jobs.put(job)
    if not job.done.wait(timeout):
        job.abandoned = True
        _helper.retire()
        _stuck.append(_helper)
        _helper = None
        _stuck[:] = [h for h in _stuck if h.thread.is_alive()]
        if len(_stuck) >= MAX_STUCK_DECODES:
            raise RuntimeError(
                f"{len(_stuck)} video decodes are still running past their {timeout:g} s limit "
                "in this process; these videos hang the decoder (find them with "
                "salt-shards inspect --decode) or the limit (decode_timeout) is too small"
            )
        raise SkipSample("decode_timeout", f"no frames within {timeout:g} s")
    if job.error is not None:
        raise job.error
    return job.result
