"""Streaming clip datasets over WebDataset tar shards: training (resampled) and evaluation (exact).

Both are ``IterableDataset``s that batch *inside* the worker, so the train collate (stack + the
stage's masks) runs in the worker and every batch can carry the worker's exact ``data_counts``
(skips and events since its previous batch, see ``salt.data.stats``).

Training stream, per (rank, worker), seeded from (seed, resume count, epoch, rank, worker):
  shards drawn with replacement per dataset (a CSV dataset: its rows in reshuffled passes) ->
  weighted mix of datasets -> shuffle buffer of raw samples (bytes, cheap; not needed when every
  dataset is a CSV) -> parse -> decode the window's frames (or take them from the worker's decoded
  videos, ``decoded_cache_mb``) -> crop/flip -> batch of B.
  Each rank yields exactly ``epoch_length`` batches per epoch (split across its workers).
  We build this from webdataset's tar reader instead of ``wds.WebDataset(resampled=True)`` because
  the latter seeds its shard sampler from time and pid: the stream could not be reproduced from a
  seed nor re-seeded on resume. Every (rank, worker) draws its own shards, so no node splitter is
  needed (and none can raise under DDP).

Evaluation stream: not resampled, no shuffle; every sample exactly once across ranks x workers.
Shards are dealt to the slots ``rank * num_workers + worker``; if there are fewer shards than slots,
every slot reads all shards and keeps sample ``i`` when ``i % slots == slot``. CSV rows are dealt
to the slots the same way (``rows[slot::slots]``), no file is opened by a slot that skips it.

Sources are ``salt.data.sources.VideoSource``s (shard URLs and/or CSV rows); a CSV row arrives as
a raw sample with the same keys as a shard sample, so everything after the reader is shared.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from salt.errors import UsageError

from .decode import DEFAULT_DECODE_TIMEOUT, decode_clip
from .decoded_cache import DecodedCache
from .loader import COUNTS_KEY, ERROR_KEY
from .samples import parse_sample
from .sampling import clip_step, segment_indices, train_indices
from .sources import CsvRow, Split, VideoSource, check_label, in_split, row_samples
from .stats import SkipSample, skip_key
from .transforms import eval_transform, train_transform

MAX_SKIPS_IN_A_ROW = 1000  # a dataset that is all bad is an error, not an endless loop
MAX_EMPTY_SHARDS_IN_A_ROW = 200


@dataclass
class ClipConfig:
    """How one sample becomes a clip (shared by train and eval streams)."""

    frames_per_clip: int = 16
    frame_step: int = 4
    target_fps: float | None = None
    crop_size: int = 224
    short_video: str = "pad"
    decoder: str = "auto"
    decoder_threads: int = 1
    scale: tuple[float, float] = (0.3, 1.0)
    ratio: tuple[float, float] = (0.75, 1.35)
    flip_prob: float = 0.5
    num_segments: int = 1
    num_views: int = 1
    eval_short_side: int | None = None
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT
    decoded_cache_mb: float = 0.0  # training only: per-worker budget of whole decoded videos


def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (no Python ``hash`` randomisation)."""
    return int(
        np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0]
        >> 1
    )


def worker_slot() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker, (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def shard_handler(counts: Counter) -> Callable[[Exception], bool]:
    def handler(exn: Exception) -> bool:
        counts[skip_key("bad_shard")] += 1
        return True  # continue with the next file/shard

    return handler


def _resampled_samples(source: VideoSource, rng: random.Random, counts: Counter) -> Iterator[dict]:
    """Endless raw samples: shards drawn with replacement, or CSV rows in reshuffled passes."""
    if source.rows:
        yield from _resampled_rows(source.rows, rng, counts, source.name)
        return
    urls, handler, empty = source.shards, shard_handler(counts), 0
    while True:
        url = urls[rng.randrange(len(urls))]
        got = 0
        for sample in wds.tarfile_samples([{"url": url}], handler=handler):
            got += 1
            yield sample
        empty = 0 if got else empty + 1
        if empty >= MAX_EMPTY_SHARDS_IN_A_ROW:
            raise RuntimeError(f"{empty} shards in a row held no readable sample (last: {url})")


def _resampled_rows(
    rows: list[CsvRow], rng: random.Random, counts: Counter, name: str
) -> Iterator[dict]:
    """Endless raw samples of CSV rows: each pass is a fresh permutation (every row once)."""
    order = list(range(len(rows)))
    while True:
        rng.shuffle(order)
        got = 0
        for sample in row_samples([rows[i] for i in order], counts):
            got += 1
            yield sample
        if not got:
            raise RuntimeError(f"no file of {name} could be read: {dict(counts)}")


def _mix(sources: list[Iterator[dict]], weights: list[float], rng: random.Random) -> Iterator[dict]:
    while True:
        yield next(sources[rng.choices(range(len(sources)), weights)[0]])


def shuffle_samples(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    buf: list[dict] = []
    for sample in samples:
        if len(buf) < size:
            buf.append(sample)
            continue
        i = rng.randrange(size)
        buf[i], sample = sample, buf[i]
        yield sample
    rng.shuffle(buf)
    yield from buf


def _train_clip(
    sample: dict,
    cfg: ClipConfig,
    rng: random.Random,
    counts: Counter,
    cache: DecodedCache | None = None,
) -> tuple[torch.Tensor, int]:
    data, label, num_frames = parse_sample(sample)
    padded = False

    def choose(n: int, fps: float) -> list[int]:
        nonlocal padded
        step = clip_step(fps, cfg.frame_step, cfg.target_fps)
        idx, padded = train_indices(n, cfg.frames_per_clip, step, rng, cfg.short_video)
        return idx

    held = None  # (all frames [n, H, W, 3], fps) of a video the cache holds or is taking in
    if cache is not None:
        key = (str(sample.get("__url__", "")), str(sample.get("__key__", "")))
        held = cache.get(key)
        if held is None and not cache.full:
            whole = decode_clip(
                data, lambda n, fps: range(n), cfg.decoder, cfg.decoder_threads, num_frames,
                cfg.decode_timeout,
            )  # fmt: skip
            counts["decoder_fallback"] += int(whole.fallback)
            held = (whole.frames, whole.fps)  # used for this draw even if it does not fit
            cache.put(key, *held)
    if held is not None:
        all_frames, fps = held
        frames = all_frames[choose(len(all_frames), fps)]  # [T, H, W, 3]
    else:
        clip = decode_clip(
            data, choose, cfg.decoder, cfg.decoder_threads, num_frames, cfg.decode_timeout
        )
        counts["decoder_fallback"] += int(clip.fallback)
        frames = clip.frames
    counts["padded"] += int(padded)
    video = train_transform(frames, cfg.crop_size, rng, cfg.scale, cfg.ratio, cfg.flip_prob)
    return video, label  # [C, T, crop, crop] uint8


class TrainClipStream(IterableDataset):
    """Endless-per-epoch training batches ``{"video", "label", "masks", "data_counts"}``.

    The DataModule sets ``rank``, ``resume_count`` and bumps ``epoch`` before each epoch; the mask
    function is called in the worker and reseeded per (seed, resume, epoch, rank, worker).
    """

    def __init__(
        self,
        datasets: list[VideoSource],
        weights: list[float],
        cfg: ClipConfig,
        batch_size: int,
        epoch_length: int,
        shuffle_buffer: int,
        seed: int,
        mask_fn: Callable[[int], list] | None = None,
    ) -> None:
        super().__init__()
        if len(datasets) != len(weights) or not datasets:
            raise ValueError("need one source per dataset and one weight per dataset")
        for d in datasets:
            if d.rows and d.shards:
                raise UsageError(
                    f"training dataset {d.name!r} mixes a CSV with shards; give them as separate "
                    "datasets (a list of specs) with train_weights"
                )
        self.datasets, self.weights, self.cfg = datasets, weights, cfg
        self.batch_size, self.epoch_length = batch_size, epoch_length
        self.shuffle_buffer, self.seed, self.mask_fn = shuffle_buffer, seed, mask_fn
        self.rank, self.resume_count, self.epoch = 0, 0, 0
        self._local_iters = 0  # persistent workers iterate the same copy several times
        self._cache: DecodedCache | None = None  # this process's (worker's) decoded videos

    def stream_seed(self, worker: int) -> int:
        return derive_seed(
            self.seed, self.resume_count, self.epoch, self._local_iters, self.rank, worker
        )

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_slot()
        seed = self.stream_seed(worker)
        self._local_iters += 1
        rng = random.Random(seed)
        if self.mask_fn is not None and hasattr(self.mask_fn, "reseed"):
            self.mask_fn.reseed(derive_seed(seed, 1) % 2**31)
        num_batches = self.epoch_length // num_workers + int(
            worker < self.epoch_length % num_workers
        )
        if self.cfg.decoded_cache_mb > 0 and self._cache is None:
            self._cache = DecodedCache(self.cfg.decoded_cache_mb)
        counts: Counter = Counter()
        sources = [
            _resampled_samples(source, random.Random(derive_seed(seed, 2, i)), counts)
            for i, source in enumerate(self.datasets)
        ]
        raw = sources[0] if len(sources) == 1 else _mix(sources, self.weights, rng)
        if self.shuffle_buffer > 1 and any(d.shards for d in self.datasets):
            raw = shuffle_samples(raw, self.shuffle_buffer, rng)  # CSV rows come permuted already
        clips, labels, skips_in_a_row = [], [], 0
        for _ in range(num_batches):
            while len(clips) < self.batch_size:
                sample = next(raw)
                try:
                    clip, label = _train_clip(sample, self.cfg, rng, counts, self._cache)
                except SkipSample as skip:
                    counts[skip_key(skip.reason)] += 1
                    skips_in_a_row += 1
                    if skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
                        raise RuntimeError(
                            f"{skips_in_a_row} bad samples in a row: {dict(counts)}"
                        ) from skip
                    continue
                skips_in_a_row = 0
                clips.append(clip)
                labels.append(label)
            yield self.collate(clips, labels, counts)
            clips, labels = [], []
            counts.clear()

    def collate(self, clips: list[torch.Tensor], labels: list[int], counts: Counter) -> dict:
        batch = {
            "video": torch.stack(clips),  # [B, C, T, H, W] uint8
            "label": torch.tensor(labels, dtype=torch.int64),  # [B]
            "data_counts": {k: v for k, v in counts.items() if v},
        }
        if self.mask_fn is not None:
            batch["masks"] = self.mask_fn(len(clips))  # [(ctx [B, nc], tgt [B, nt]), ...]
        return batch


class EvalClipStream(IterableDataset):
    """Evaluation batches ``{"video": uint8 [B,S,V,C,T,H,W], "label", "key", "data_counts"}``.

    ``split`` keeps only the samples of that part of a training set (``salt.data.sources.in_split``);
    with ``num_classes`` a label outside ``[0, num_classes)`` ends the stream with a usage error.
    """

    def __init__(
        self,
        source: VideoSource,
        cfg: ClipConfig,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        require_label: bool = True,
        split: Split = "all",
        heldout_fraction: float = 0.15,
        heldout_seed: int = 0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not source.shards and not source.rows:
            raise ValueError("eval stream needs at least one shard or CSV row")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.source, self.cfg, self.batch_size = source, cfg, batch_size
        self.rank, self.world_size, self.require_label = rank, world_size, require_label
        self.split, self.heldout_fraction, self.heldout_seed = split, heldout_fraction, heldout_seed
        self.num_classes = num_classes

    def describe(self) -> str:
        return f"eval loader over {self.source.name} (rank {self.rank}/{self.world_size})"

    def _my_samples(self, counts: Counter) -> Iterator[dict]:
        worker, num_workers = worker_slot()
        slots, slot = self.world_size * num_workers, self.rank * num_workers + worker
        handler, urls = shard_handler(counts), self.source.shards
        if len(urls) >= slots:
            yield from wds.tarfile_samples([{"url": u} for u in urls[slot::slots]], handler=handler)
        elif urls:
            samples = wds.tarfile_samples([{"url": u} for u in urls], handler=handler)
            for i, sample in enumerate(samples):
                if i % slots == slot:
                    yield sample
        yield from row_samples(self.source.rows[slot::slots], counts)

    def _clip(self, sample: dict, counts: Counter) -> tuple[torch.Tensor, int]:
        cfg = self.cfg
        data, label, num_frames = parse_sample(sample, require_label=self.require_label)
        check_label(label if label >= 0 else None, self.num_classes, sample_where(sample))
        padded = False

        def choose(n: int, fps: float) -> list[int]:
            nonlocal padded
            step = clip_step(fps, cfg.frame_step, cfg.target_fps)
            segs, padded = segment_indices(
                n, cfg.frames_per_clip, step, cfg.num_segments, cfg.short_video
            )
            return [i for seg in segs for i in seg]

        clip = decode_clip(
            data, choose, cfg.decoder, cfg.decoder_threads, num_frames, cfg.decode_timeout
        )
        counts["padded"] += int(padded)
        counts["decoder_fallback"] += int(clip.fallback)
        video = eval_transform(
            clip.frames, cfg.crop_size, cfg.num_segments, cfg.num_views, cfg.eval_short_side
        )
        return video, label  # [S, V, C, T, crop, crop] uint8

    def __iter__(self) -> Iterator[dict]:
        counts: Counter = Counter()
        videos, labels, keys = [], [], []
        split, frac, hseed = self.split, self.heldout_fraction, self.heldout_seed
        for sample in self._my_samples(counts):
            if not in_split(sample["__key__"], split, frac, hseed):
                continue
            try:
                video, label = self._clip(sample, counts)
            except SkipSample as skip:
                counts[skip_key(skip.reason)] += 1
                continue
            except UsageError as err:  # the main process raises it (salt.data.loader)
                yield {ERROR_KEY: str(err)}
                return
            videos.append(video)
            labels.append(label)
            keys.append(sample["__key__"])
            if len(videos) == self.batch_size:
                yield self._batch(videos, labels, keys, counts)
                videos, labels, keys = [], [], []
        if videos:
            yield self._batch(videos, labels, keys, counts)
        elif any(counts.values()):  # skips after the last batch: folded in by the loader
            yield {COUNTS_KEY: {k: v for k, v in counts.items() if v}}

    @staticmethod
    def _batch(videos: list, labels: list, keys: list, counts: Counter) -> dict:
        batch = {
            "video": torch.stack(videos),  # [B, S, V, C, T, H, W] uint8
            "label": torch.tensor(labels, dtype=torch.int64),  # [B]
            "key": list(keys),
            "data_counts": {k: v for k, v in counts.items() if v},
        }
        counts.clear()
        return batch


def sample_where(sample: dict) -> str:
    """Where a sample came from, for error messages: its shard or file, and its key."""
    return f"{sample.get('__url__', '?')}: sample {sample.get('__key__')!r}"
