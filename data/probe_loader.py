"""Training loader of the online probe: one augmented view per clip, equal batches on every rank.

``probe_train_loader`` yields ``{"video": uint8 [B, S, C, T, H, W], "label": int64 [B],
"key": list[str], "data_counts": dict}``: S segments, each a random window of its part of the
video (``sampling.train_segment_indices``), each augmented on its own draw (``augment``).

Epochs and ranks (DDP needs every rank to run the same number of steps):
  ``steps_per_epoch = ceil(N / (world_size * batch_size))`` with N the samples of the chosen
  split, counted without decoding (``sources.count_samples``: CSV rows, tar headers) or given as
  ``num_samples``. Every rank yields exactly that many full batches per epoch. The set is dealt
  to ranks, then to each rank's workers, afresh per (seed, epoch): shards by shard when there
  are at least as many shards as takers (each shard is read by one rank), else by sample index
  (``i % takers``); CSV rows always by row. A part is read in a shuffled order (shard order plus a
  shuffle buffer of raw samples; rows permuted) and cycled, reshuffled, until its quota is full,
  so a rank with a smaller part repeats some of its samples and one with a larger part leaves
  some for later epochs (the deal changes every epoch). A part that turns out to hold nothing
  (a set smaller than ranks x workers) reads the whole set instead.
  ``loader.set_epoch(e)`` before iterating; the stream is a function of (seed, epoch, rank,
  world size, workers), so a probe resumed at epoch e sees the batches it would have seen.

Splits: ``split="fit" | "heldout" | "all"`` keeps the samples whose key falls in that part of
the set (``sources.in_split``: a stable hash of the key against ``heldout_fraction``), the same
selector as ``eval_loader``'s, so a head can be chosen on a held-out slice of *train* without
keeping features.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from salt.errors import UsageError

from .augment import SegmentAugmenter, TrainAugment
from .dataset import (
    MAX_SKIPS_IN_A_ROW,
    ClipConfig,
    derive_seed,
    sample_where,
    shard_handler,
    shuffle_samples,
    worker_slot,
)
from .decode import DEFAULT_DECODE_TIMEOUT, decode_clip
from .loader import DEFAULT_LOADER_TIMEOUT, ERROR_KEY, SaltDataLoader, loader_kwargs
from .samples import parse_sample
from .sampling import clip_step, train_segment_indices
from .sources import (
    Split,
    VideoSource,
    check_label,
    check_split,
    count_samples,
    in_split,
    resolve_source,
    row_samples,
)
from .stats import SkipSample, skip_key


class _Part:
    """What one worker reads: shards (kept samples ``i % mod[0] == mod[1]``) and CSV rows."""

    def __init__(self, shards: list[str], mod: tuple[int, int] | None, rows: list) -> None:
        self.shards, self.mod, self.rows = shards, mod, rows

    def empty(self) -> bool:
        return not self.shards and not self.rows


def _deal(items: list, takers: int, index: int, seed: int) -> list:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[index::takers]]


class ProbeTrainStream(IterableDataset):
    """Equal-length training epochs of augmented S-segment clips (see the module docstring)."""

    def __init__(
        self,
        source: VideoSource,
        cfg: ClipConfig,
        aug: TrainAugment,
        batch_size: int,
        steps_per_epoch: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        split: Split = "all",
        heldout_fraction: float = 0.15,
        heldout_seed: int = 0,
        num_classes: int | None = None,
        shuffle_buffer: int = 64,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.source, self.cfg, self.aug = source, cfg, aug
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.split, self.heldout_fraction, self.heldout_seed = split, heldout_fraction, heldout_seed
        self.num_classes, self.shuffle_buffer = num_classes, shuffle_buffer
        self.epoch = 0
        self.num_samples: int | None = None  # of the split, when the loader counted it

    def __len__(self) -> int:
        return self.steps_per_epoch

    def describe(self) -> str:
        return (
            f"probe train loader over {self.source.name} "
            f"(rank {self.rank}/{self.world_size}, epoch {self.epoch})"
        )

    # ------------------------------------------------------------------ who reads what
    def part(self, worker: int, num_workers: int) -> _Part:
        """This (rank, worker)'s share of the set in this epoch."""
        src, world, rank = self.source, self.world_size, self.rank
        deal_seed = derive_seed(self.seed, self.epoch, 7)  # the same on every rank
        if len(src.shards) >= world:
            shards, mod = _deal(src.shards, world, rank, deal_seed), None
            if len(shards) >= num_workers:
                shards = shards[worker::num_workers]
            else:
                mod = (num_workers, worker)
        else:  # few shards: every taker reads them all and keeps its samples by index
            shards, mod = list(src.shards), (world * num_workers, rank + world * worker)
        rows = _deal(src.rows, world, rank, deal_seed)[worker::num_workers]
        return _Part(shards, mod, rows)

    def _raw_pass(self, part: _Part, rng: random.Random, counts: Counter) -> Iterator[dict]:
        """One pass over a part, in a fresh random order, only the samples of the split."""
        split, frac, hseed = self.split, self.heldout_fraction, self.heldout_seed
        if part.shards:
            shards = list(part.shards)
            if part.mod is None:
                rng.shuffle(shards)  # with index filtering the order must stay fixed
            samples = wds.tarfile_samples(
                [{"url": u} for u in shards], handler=shard_handler(counts)
            )
            if part.mod is not None:
                mod, keep = part.mod
                samples = (s for i, s in enumerate(samples) if i % mod == keep)
            samples = (s for s in samples if in_split(s["__key__"], split, frac, hseed))
            if self.shuffle_buffer > 1:
                samples = shuffle_samples(samples, self.shuffle_buffer, rng)
            yield from samples
        rows = [r for r in part.rows if in_split(r.key, split, frac, hseed)]
        rng.shuffle(rows)
        yield from row_samples(rows, counts)

    def _raw(self, part: _Part, rng: random.Random, counts: Counter) -> Iterator[dict]:
        """Endless raw samples: passes over the part; the whole set if the part holds none."""
        whole = _Part(self.source.shards, None, self.source.rows)
        while True:
            got = 0
            for sample in self._raw_pass(part, rng, counts):
                got += 1
                yield sample
            if got:
                continue
            if part is whole:
                raise RuntimeError(f"{self.describe()}: no readable sample: {dict(counts)}")
            part = whole

    # ------------------------------------------------------------------ clips
    def _clip(self, sample: dict, rng: random.Random, augment: SegmentAugmenter, counts: Counter):
        cfg = self.cfg
        data, label, num_frames = parse_sample(sample, require_label=True)
        check_label(label, self.num_classes, sample_where(sample))

        def choose(n: int, fps: float) -> list[int]:
            step = clip_step(fps, cfg.frame_step, cfg.target_fps)
            segs, padded = train_segment_indices(
                n, cfg.frames_per_clip, step, cfg.num_segments, rng, cfg.short_video
            )
            counts["padded"] += int(padded)
            return [i for seg in segs for i in seg]

        clip = decode_clip(
            data, choose, cfg.decoder, cfg.decoder_threads, num_frames, cfg.decode_timeout
        )
        counts["decoder_fallback"] += int(clip.fallback)
        return augment(clip.frames, cfg.num_segments, rng), label  # [S, C, T, crop, crop]

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_slot()
        seed = derive_seed(self.seed, self.epoch, self.rank, worker, num_workers)
        rng = random.Random(seed)
        augment = SegmentAugmenter(self.aug, derive_seed(seed, 1) % 2**63)
        steps = self.steps_per_epoch
        quota = steps // num_workers + int(worker < steps % num_workers)
        counts: Counter = Counter()
        raw = self._raw(self.part(worker, num_workers), rng, counts)
        skips_in_a_row = 0
        for _ in range(quota):
            videos, labels, keys = [], [], []
            while len(videos) < self.batch_size:
                sample = next(raw)
                try:
                    video, label = self._clip(sample, rng, augment, counts)
                except SkipSample as skip:
                    counts[skip_key(skip.reason)] += 1
                    skips_in_a_row += 1
                    if skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
                        raise RuntimeError(
                            f"{self.describe()}: {skips_in_a_row} bad samples in a row: "
                            f"{dict(counts)}"
                        ) from skip
                    continue
                except UsageError as err:  # the main process raises it (salt.data.loader)
                    yield {ERROR_KEY: str(err)}
                    return
                skips_in_a_row = 0
                videos.append(video)
                labels.append(label)
                keys.append(sample["__key__"])
            yield {
                "video": torch.stack(videos),  # [B, S, C, T, H, W] uint8
                "label": torch.tensor(labels, dtype=torch.int64),  # [B]
                "key": keys,
                "data_counts": {k: v for k, v in counts.items() if v},
            }
            counts.clear()


class ProbeTrainLoader(SaltDataLoader):
    """``SaltDataLoader`` of a ``ProbeTrainStream``: ``set_epoch``, ``steps_per_epoch``, ``len``."""

    dataset: ProbeTrainStream

    @property
    def steps_per_epoch(self) -> int:
        return self.dataset.steps_per_epoch

    @property
    def num_samples(self) -> int:
        """Samples of the split this loader's epochs are sized by."""
        return self.dataset.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose deal, order and augmentation the next iteration yields."""
        self.dataset.epoch = int(epoch)


def probe_train_loader(
    source: str | list[str],
    *,
    batch_size: int,
    frames_per_clip: int = 16,
    frame_step: int = 4,
    num_segments: int = 1,
    augment: TrainAugment | None = None,
    split: Split = "all",
    heldout_fraction: float = 0.15,
    heldout_seed: int = 0,
    num_classes: int | None = None,
    num_samples: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 4,
    decoder: str = "auto",
    target_fps: float | None = None,
    short_video: str = "pad",
    shuffle_buffer: int = 64,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    timeout: float | None = DEFAULT_LOADER_TIMEOUT,
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT,
    allow_pipe: bool = False,
) -> ProbeTrainLoader:
    """The online probe's training loader (see the module docstring).

    Args:
        source: shard patterns and/or ``.csv`` video lists forming the training set.
        batch_size: clips per batch and rank (every batch is full).
        frames_per_clip: frames T per segment.
        frame_step: source frames between clip frames (ignored with ``target_fps``).
        num_segments: temporal segments S per clip, one random window each.
        augment: crop size and augmentation (``TrainAugment()``: V-JEPA 2's frozen-eval recipe).
        split: "fit", "heldout" or "all" of the set, by key (``heldout_fraction``, ``heldout_seed``).
        num_classes: labels must lie in ``[0, num_classes)`` (a ``UsageError`` names the sample).
        num_samples: samples of the split, if known (skips counting, e.g. broadcast from rank 0).
        rank: this process's rank.
        world_size: number of ranks.
        seed: the probe's data seed.
        num_workers: DataLoader workers per rank (part of the stream's identity).
        decoder: "auto", "decord" or "pyav".
        target_fps: if set, the frame step is the video's fps / target_fps.
        short_video: "pad" or "skip" videos shorter than a window.
        shuffle_buffer: raw samples buffered per worker to shuffle within shards.
        pin_memory: pin batches when CUDA is available.
        prefetch_factor: batches prefetched per worker.
        timeout: seconds without a batch from the workers before a named error (0 = none).
        decode_timeout: seconds one decode may take before the sample is skipped and counted.
        allow_pipe: accept ``pipe:`` shard URLs (they run shell commands).

    Raises:
        UsageError: (before any worker starts) missing CSV, a pattern matching nothing, an empty
            split, a CSV label out of range, remote shards without ``num_samples``.
    """
    check_split(split, heldout_fraction)
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    src = resolve_source(source, num_classes=num_classes, allow_pipe=allow_pipe)
    n = (
        count_samples(src, split, heldout_fraction, heldout_seed)
        if num_samples is None
        else num_samples
    )
    if n <= 0:
        raise UsageError(f"split {split!r} of {src.name} holds no sample")
    aug = augment or TrainAugment()
    cfg = ClipConfig(
        frames_per_clip=frames_per_clip,
        frame_step=frame_step,
        target_fps=target_fps,
        crop_size=aug.crop_size,
        short_video=short_video,
        decoder=decoder,
        num_segments=num_segments,
        decode_timeout=decode_timeout,
    )
    steps = math.ceil(n / (world_size * batch_size))
    stream = ProbeTrainStream(
        src, cfg, replace(aug), batch_size, steps, rank=rank, world_size=world_size, seed=seed,
        split=split, heldout_fraction=heldout_fraction, heldout_seed=heldout_seed,
        num_classes=num_classes, shuffle_buffer=shuffle_buffer,
    )  # fmt: skip
    stream.num_samples = n
    return ProbeTrainLoader(
        stream, **loader_kwargs(num_workers, pin_memory, prefetch_factor, timeout)
    )
