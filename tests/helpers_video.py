"""Real encoded test videos (PyAV, H.264) and WebDataset tars, shared by the tests of every package.

``index_video`` encodes frames whose uniform grey level encodes the frame number
(``level = 8 + 4 * i``), so a test can read back *which* frames a sampler decoded
(``frame_numbers``) after compression, crops and resizes. ``textured_video`` gives frames with
spatial structure (for transform tests). ``write_tar`` writes samples the way ``salt-shards``
does (``<key>.mp4`` + ``<key>.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from salt.data.encode import encode_video

MAX_INDEXED_FRAMES = 60  # 8 + 4 * 59 = 244 < 255


def index_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 [T, H, W, 3]; frame i is uniformly grey at level 8 + 4 * i."""
    if num_frames > MAX_INDEXED_FRAMES:
        raise ValueError(f"at most {MAX_INDEXED_FRAMES} indexed frames")
    levels = (8 + 4 * np.arange(num_frames)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def index_video(num_frames: int, height: int = 48, width: int = 64, fps: float = 30.0) -> bytes:
    """H.264 mp4 of ``index_frames`` (odd sizes are fine: encoded as yuv444p)."""
    return encode_video(
        index_frames(num_frames, height, width), fps=fps, crf=18, preset="ultrafast"
    )


def frame_numbers(video: torch.Tensor) -> list[int]:
    """Frame numbers of a uint8 [C, T, H, W] clip made from ``index_video``."""
    levels = video.float().mean(dim=(0, 2, 3))  # [T]
    return [int(round((float(v) - 8) / 4)) for v in levels]


def textured_video(
    num_frames: int, height: int, width: int, seed: int = 0, fps: float = 30.0
) -> bytes:
    """H.264 mp4 of smooth random texture drifting right (spatial structure for transform tests)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))  # blocky texture
    frames = np.stack([np.roll(big, i, axis=1)[:height, :width] for i in range(num_frames)])
    return encode_video(np.ascontiguousarray(frames), fps=fps, crf=20, preset="ultrafast")


def write_tar(path: str | Path, samples: list[dict]) -> str:
    """Write raw samples (``{"__key__", "mp4": bytes, "json": dict | bytes, ...}``) to one tar."""
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sample = dict(sample)
            if isinstance(sample.get("json"), dict):
                sample["json"] = json.dumps(sample["json"]).encode()
            sink.write(sample)
    return str(path)


def video_sample(key: str, data: bytes, label: int | None = 0, ext: str = "mp4") -> dict:
    """A sample as ``salt-shards`` writes it (metadata reduced to the label)."""
    return {"__key__": key, ext: data, "json": {"label": label}}


def mpegts_video(num_frames: int = 12, height: int = 48, width: int = 64) -> bytes:
    """``index_frames`` as MPEG-TS: PyAV reads it from memory, decord's BytesIO reader cannot
    (exercises the per-sample decord -> PyAV fallback)."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for f in index_frames(num_frames, height, width):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


# Every kind of bad input, with what the pipeline must do with it (for a clip of 8 frames at step 2,
# i.e. a 15-frame window): "skipped_<reason>" or "padded" or "ok" (decoded as is).
BAD_INPUT_CASES = {
    "truncated": "skipped_undecodable",
    "randombytes": "skipped_undecodable",
    "zerolength": "skipped_undecodable",
    "textfile": "skipped_undecodable",
    "onlyjson": "skipped_missing_key",
    "labelnotint": "skipped_bad_meta",
    "jsonnotobject": "skipped_bad_meta",
    "oneframe": "padded",
    "fiveframes": "padded",
    "portrait": "ok",  # 48 px wide: decord 0.6 fails on it, PyAV fallback decodes it
    "oddsize": "ok",
    "mpegts": "ok",  # decoder_fallback when decord is installed
}


def bad_input_samples(label: int = 0) -> list[dict]:
    """One raw sample per ``BAD_INPUT_CASES`` entry (keys are the case names)."""
    good = index_video(20)
    return [
        video_sample("truncated", good[: len(good) // 2], label),
        video_sample("randombytes", np.random.default_rng(1).bytes(3000), label),
        video_sample("zerolength", b"", label),
        video_sample("textfile", b"not a video, just text\n" * 10, label),
        {"__key__": "onlyjson", "json": {"label": label}},
        {"__key__": "labelnotint", "mp4": good, "json": {"label": "cat"}},
        {"__key__": "jsonnotobject", "mp4": good, "json": b"[1, 2]"},
        video_sample("oneframe", index_video(1), label),
        video_sample("fiveframes", index_video(5), label),
        video_sample("portrait", index_video(20, 64, 48), label),
        video_sample("oddsize", index_video(20, 37, 53), label),
        video_sample("mpegts", mpegts_video(20), label, ext="mp4"),
    ]
