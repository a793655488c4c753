"""Decoded-video cache of the training stream (``decoded_cache_mb``): same clips, fewer decodes.

The cache only changes where frames come from, never which: a seeded stream of good videos must
yield the same batches with and without it, and with a budget too small to hold a video. With a
budget that holds the set, each video is decoded once however often it is drawn. Bad samples are
still skipped and counted; a damaged video that decodes is held with the frames it really has
(its window can then differ from an uncached draw, which trusts the container's frame count).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers_video import bad_input_samples, index_video, video_sample, write_tar

import salt.data.dataset as dataset
from salt.data import VideoDataModule

SMALL = {"frames_per_clip": 8, "frame_step": 2, "crop_size": 16, "num_workers": 0}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cache_shards")
    video = index_video(40, 32, 40)
    good = [video_sample(f"g{i}", video, i) for i in range(6)]
    write_tar(root / "good-000000.tar", good)
    write_tar(root / "mixed-000000.tar", good + bad_input_samples(label=7))
    return {k: str(root / f"{k}-000000.tar") for k in ("good", "mixed")}


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the stream's calls of the real ``decode_clip``."""
    calls: list[int] = []
    real = dataset.decode_clip

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset, "decode_clip", counted)
    return calls


def two_epochs(shards: str, cache_mb: float) -> tuple[VideoDataModule, list[dict]]:
    dm = VideoDataModule(
        shards, batch_size=4, epoch_length=5, seed=3, decoded_cache_mb=cache_mb, **SMALL
    )
    loader = dm.train_dataloader()
    out = [b for _ in range(2) for b in loader]  # 2 epochs x 5 batches x 4 clips
    return dm, out


def stacked(out: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([b["video"] for b in out]), torch.cat([b["label"] for b in out])


def test_cached_stream_yields_the_same_clips(shards) -> None:
    _, plain = two_epochs(shards["good"], 0)
    dm, cached = two_epochs(shards["good"], 64)
    (va, la), (vb, lb) = stacked(plain), stacked(cached)
    assert va.shape == (40, 3, 8, 16, 16)
    assert torch.equal(va, vb) and torch.equal(la, lb)
    assert len(dm._train_stream._cache) == 6


def test_each_video_is_decoded_once_with_a_budget_that_holds_the_set(shards, decodes) -> None:
    two_epochs(shards["good"], 64)
    assert len(decodes) == 6  # 40 clips drawn from 6 videos
    decodes.clear()
    two_epochs(shards["good"], 0)
    assert len(decodes) == 40


def test_bad_samples_are_still_skipped_and_counted(shards) -> None:
    _, plain = two_epochs(shards["mixed"], 0)
    dm, cached = two_epochs(shards["mixed"], 64)
    kinds = [{k for b in out for k in b["data_counts"] if k.startswith("skipped_")}
             for out in (plain, cached)]  # fmt: skip
    assert kinds[0] and kinds[1] == kinds[0]
    assert all(b["video"].shape[0] == 4 for b in cached)  # skips never shorten a batch
    assert 6 <= len(dm._train_stream._cache) < 6 + len(bad_input_samples(label=7))


def test_a_budget_smaller_than_a_video_holds_nothing_and_changes_nothing(shards) -> None:
    _, plain = two_epochs(shards["good"], 0)
    dm, tiny = two_epochs(shards["good"], 0.01)  # 10 KiB < one 40 x 32 x 40 x 3 video (150 KiB)
    cache = dm._train_stream._cache
    assert cache.full and len(cache) == 0 and cache.used == 0
    (va, la), (vb, lb) = stacked(plain), stacked(tiny)
    assert torch.equal(va, vb) and torch.equal(la, lb)


def test_negative_budget_is_an_error(shards) -> None:
    with pytest.raises(ValueError, match="decoded_cache_mb"):
        VideoDataModule(shards["good"], decoded_cache_mb=-1, **SMALL)


def test_batches_with_workers_hold_a_cache_per_worker(shards) -> None:
    dm = VideoDataModule(
        shards["good"], batch_size=4, epoch_length=4, seed=3, decoded_cache_mb=64,
        **{**SMALL, "num_workers": 2},
    )  # fmt: skip
    got = list(itertools.islice(dm.train_dataloader(), 4))
    assert [b["video"].shape[0] for b in got] == [4, 4, 4, 4]
