"""Files that lie or hang: a header that over-reports frames, decodes past their limit, dead loaders."""

from __future__ import annotations

import io
import threading
import time

import av
import numpy as np
import pytest
from helpers_video import index_frames, video_sample, write_tar

from salt.data import eval_loader
from salt.data.decode import HAVE_DECORD, busy_helpers, decode_clip
from salt.data.encode import encode_video
from salt.data.stats import SkipSample, sum_counts

BACKENDS = ["pyav"] + (["decord"] if HAVE_DECORD else [])
CLIP = {"frames_per_clip": 8, "frame_step": 2, "crop_size": 16, "batch_size": 2}


def levels(frames: np.ndarray) -> list[int]:
    return [int(round((float(f.mean()) - 8) / 4)) for f in frames]


@pytest.fixture(scope="module")
def overreported() -> bytes:
    """An mp4 whose sample table lists 60 frames of which only the first 45 decode: the payload of
    packets 45.. is zeroed (what a damaged tail looks like), the header is left as it was."""
    data = bytearray(encode_video(index_frames(60), crf=18, preset="ultrafast", gop=10))
    with av.open(io.BytesIO(bytes(data))) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    for pos, size in packets[45:]:
        data[pos : pos + size] = bytes(size)
    return bytes(data)


@pytest.fixture(scope="module")
def slow_video() -> bytes:
    """90 frames of 1280x720 texture in one GOP: a window in the middle decodes ~50 HD frames
    first (over a second on one core): a genuinely slow input, not a stub."""
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (47, 82, 3), dtype=np.uint8)
    big = np.kron(tile, np.ones((16, 16, 1), dtype=np.uint8))[:720, :1280]
    frames = np.stack([np.roll(big, 4 * i, axis=1) for i in range(90)])
    return encode_video(np.ascontiguousarray(frames), crf=30, preset="ultrafast", gop=90)


@pytest.mark.parametrize("backend", ["pyav", "auto"])
def test_header_count_is_capped_by_the_true_count(overreported: bytes, backend: str) -> None:
    seen = []

    def choose(n: int, fps: float) -> list[int]:
        seen.append(n)
        return [0, n // 2, n - 1]

    with pytest.raises(SkipSample, match="undecodable"):  # the header's 60: frame 59 is not there
        decode_clip(overreported, choose, backend=backend)
    clip = decode_clip(overreported, choose, backend=backend, num_frames=45)  # shard metadata
    assert seen[-1] == 45 and levels(clip.frames) == [0, 22, 44]
    # a metadata count above the header's changes nothing: the smaller one wins
    assert decode_clip(index_video_bytes(), choose, backend=backend, num_frames=99).num_frames == 20


@pytest.mark.skipif(not HAVE_DECORD, reason="decord not installed")
def test_decord_is_never_asked_past_the_true_count(overreported: bytes) -> None:
    # decord's threaded decoder may still read ahead into the damaged packets and fail (then
    # "auto" falls back to PyAV, above); what the cap guarantees is the indices it is given
    seen = []
    try:
        decode_clip(overreported, lambda n, fps: seen.append(n) or [n - 1], "decord", num_frames=45)
    except SkipSample as skip:
        assert skip.reason == "undecodable"
    assert seen == [45]


def wait_for_abandoned_decodes(limit: float = 60.0) -> None:
    deadline = time.time() + limit
    while busy_helpers() and time.time() < deadline:
        time.sleep(0.05)


def index_video_bytes() -> bytes:
    return encode_video(index_frames(20), crf=18, preset="ultrafast")


def test_streams_use_the_count_stored_with_the_sample(overreported: bytes, tmp_path) -> None:
    spec = write_tar(
        tmp_path / "lie.tar",
        [
            {"__key__": "told", "mp4": overreported, "json": {"label": 0, "num_frames": 45}},
            {"__key__": "untold", "mp4": overreported, "json": {"label": 0}},
        ],
    )
    keys, counts = [], []
    for batch in eval_loader(spec, **CLIP, num_segments=2, num_workers=0):
        keys += batch["key"]
        counts.append(batch["data_counts"])
    assert keys == ["told"]
    assert sum_counts(counts).get("skipped_undecodable") == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_decode_past_its_limit_is_a_skip_and_the_next_call_works(
    slow_video: bytes, backend: str
) -> None:
    every = lambda n, fps: list(range(n))  # noqa: E731
    alive_before = threading.active_count()
    start = time.perf_counter()
    with pytest.raises(SkipSample) as info:
        decode_clip(slow_video, every, backend=backend, timeout=0.1)
    assert info.value.reason == "decode_timeout"
    assert time.perf_counter() - start < 1.0  # it gave up, it did not wait for the decode
    # a fresh helper serves the next call while the abandoned one may still be decoding
    clip = decode_clip(index_video_bytes(), lambda n, fps: [3, 1], backend=backend, timeout=30)
    assert levels(clip.frames) == [3, 1]
    wait_for_abandoned_decodes()  # the abandoned decode ends on its own and its thread with it
    assert busy_helpers() == 0 and threading.active_count() <= alive_before + 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_counts_decode_timeouts_in_workers(slow_video, tmp_path, num_workers) -> None:
    wait_for_abandoned_decodes()  # of earlier tests (else the workers come from a forkserver)
    small = index_video_bytes()
    spec = write_tar(
        tmp_path / "slow.tar",
        [video_sample("slow0", slow_video), video_sample("ok", small), video_sample("slow1", slow_video)],
    )  # fmt: skip
    keys, counts = [], []
    # 0.02 s: far below the slow window's decode on any core (≈ 50 HD frames before it: 0.19 s
    # with PyAV on this box, 1.7 s with decord); "ok" may time out too on a loaded box (below)
    loader = eval_loader(spec, **CLIP, num_workers=num_workers, decode_timeout=0.02)
    for batch in loader:
        keys += batch["key"]
        counts.append(batch["data_counts"])
    total = sum_counts([*counts, loader.orphan_counts or {}])  # orphan: no batch carried them
    assert "slow0" not in keys and "slow1" not in keys
    assert total["skipped_decode_timeout"] >= 2
    assert len(keys) + total["skipped_decode_timeout"] == 3  # a loaded box may time "ok" out too


def test_a_stuck_worker_is_an_error_naming_the_loader(slow_video, tmp_path) -> None:
    spec = write_tar(tmp_path / "stuck.tar", [video_sample(f"s{i}", slow_video) for i in range(4)])
    loader = eval_loader(
        spec, **{**CLIP, "batch_size": 4}, num_workers=1, decode_timeout=None, timeout=0.05
    )  # the worker's first batch decodes ~200 HD frames (0.2 s or more on any core, plus its
    # start-up): longer than the loader waits (0.5 s was not, on a quiet 2-core box)
    with pytest.raises(RuntimeError, match=r"eval loader over .*stuck.tar.*within 0.05 s after 0"):
        list(loader)


@pytest.mark.slow  # forkserver workers import torch afresh: ~20 s on a loaded 2-core box
def test_workers_are_not_forked_while_an_abandoned_decode_runs(slow_video, tmp_path) -> None:
    spec = write_tar(
        tmp_path / "ok.tar", [video_sample(f"k{i}", index_video_bytes()) for i in range(4)]
    )
    with pytest.raises(SkipSample):  # leaves a helper thread inside the decoder for a while
        decode_clip(slow_video, lambda n, fps: list(range(n)), timeout=0.05)
    assert busy_helpers() >= 1
    loader = eval_loader(spec, **CLIP, num_workers=2)
    keys = [k for batch in loader for k in batch["key"]]
    assert sorted(keys) == ["k0", "k1", "k2", "k3"]
    assert loader.multiprocessing_context is not None  # forkserver: children start clean
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
