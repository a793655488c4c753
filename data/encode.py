"""Encode frames to H.264 mp4 bytes in memory with PyAV (libx264).

Used by the shard writer (``--resize`` re-encodes), the synthetic dataset, the throughput benchmark
and the tests (which need *real* encoded video, not arrays). yuv420p is the format every decoder
handles; it needs even sizes, so odd-sized frames are encoded as yuv444p instead of being cropped.
``gop`` sets the keyframe interval: short GOPs make random-window reads cheaper (the decoder seeks to
the previous keyframe) at a small cost in size.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np


def fps_fraction(fps: float) -> Fraction:
    """A rational frame rate PyAV accepts (29.97 -> 30000/1001)."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def pix_fmt_for(width: int, height: int) -> str:
    """yuv420p for even sizes (universal), yuv444p when a side is odd (4:2:0 cannot hold it)."""
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


# libx264's macroblock-tree rate control gives different bitstreams for the same frames in
# different processes (the PyAV 18.1 wheel's libx264, one thread, 5 fresh processes: 5 different
# encodings of the same 64 clips, decoded pixels up to 10 levels apart; with it off, or with
# x264's assembly off, all 5 identical). Off costs a little quality per bit; data that has to be
# reproducible from a seed (the synthetic shards) passes this.
REPRODUCIBLE = "no-mbtree=1"


class H264Writer:
    """Incremental encoder: ``add(frame)`` RGB uint8 [H, W, 3] or ``av.VideoFrame``; ``finish()``."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: float = 30.0,
        crf: int = 23,
        preset: str = "veryfast",
        gop: int | None = None,
        x264_params: str | None = None,
    ) -> None:
        self._buf = io.BytesIO()
        self._container = av.open(self._buf, "w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fps_fraction(fps))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = pix_fmt_for(width, height)
        options = {"crf": str(crf), "preset": preset}
        if x264_params:
            options["x264-params"] = x264_params  # e.g. REPRODUCIBLE
        self._stream.options = options
        if gop is not None:
            self._stream.codec_context.gop_size = gop
        self._stream.codec_context.thread_count = 1
        self.num_frames = 0

    def add(self, frame: np.ndarray | av.VideoFrame) -> None:
        if isinstance(frame, np.ndarray):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        elif frame.width != self._stream.width or frame.height != self._stream.height:
            frame = frame.reformat(width=self._stream.width, height=self._stream.height)
        frame.pts = None  # let the encoder number frames at the stream rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.num_frames += 1

    def finish(self) -> bytes:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        return self._buf.getvalue()


def encode_video(
    frames: np.ndarray,
    fps: float = 30.0,
    crf: int = 23,
    preset: str = "veryfast",
    gop: int | None = None,
    x264_params: str | None = None,
) -> bytes:
    """uint8 [T, H, W, 3] RGB frames -> H.264 mp4 bytes (``x264_params``: libx264's own options,
    ``key=value:key=value``; ``REPRODUCIBLE`` makes the bytes a function of the frames)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(
            f"expected non-empty uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}"
        )
    writer = H264Writer(
        frames.shape[2], frames.shape[1], fps=fps, crf=crf, preset=preset, gop=gop,
        x264_params=x264_params,
    )  # fmt: skip
    for frame in frames:
        writer.add(frame)
    return writer.finish()
