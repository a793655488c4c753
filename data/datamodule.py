"""``VideoDataModule`` (LightningDataModule over WebDataset video shards) and ``eval_loader``.

Configured by LightningCLI as ``--data.*``. Train batches are
``{"video": uint8 [B, C, T, H, W], "label": int64 [B], "masks": [(ctx, tgt), ...]}``: the training
LightningModule calls ``set_mask_fn(fn)`` in its ``setup()``; the collate in each worker attaches
``fn(B)``. If ``fn`` has ``.reseed(seed)`` (``salt.masks.MultiMaskCollator`` does) every worker of
every rank gets a distinct, deterministic mask stream seeded from (seed, resume count, epoch, rank,
worker). Normalisation happens on the device: ``salt.data.transforms.normalize``.

Skipped samples and events (see ``salt.data.stats``) arrive inside each batch as ``data_counts``;
``on_before_batch_transfer`` removes them from the batch, adds them to running totals
(``data_stats()``) and logs the totals to the trainer's loggers as ``data/<name>`` (train) and
``data/val_<name>`` (validation): at the first count of each kind, then at most once per
``log_every_n_steps`` steps while they change, and once more at the end of the fit. A
LightningModule that overrides ``on_before_batch_transfer`` itself would be bypassed by Lightning
(the DataModule's hook wins).

Resume (Lightning stores ``state_dict()`` in every checkpoint and calls ``load_state_dict`` before
building the dataloaders). Restored exactly:
  ``seed``             the run's data seed (the checkpoint's wins over the config's; a warning says so)
  ``resume_count``     incremented on every load: the shard draws, shuffle and mask streams after a
                       resume are re-seeded from it, so a requeued job continues with a *fresh*,
                       deterministic order instead of replaying the first shards of the run
  ``batches_seen``     train batches consumed so far (bookkeeping, logged)
  ``batches_in_epoch`` consumed in the interrupted epoch: the first epoch after the resume yields
                       only the rest, so epoch boundaries stay where Lightning expects them
  ``counts``           running totals of skips and events
Not restored: the exact sample position and shuffle buffer (a resampled stream has no position
worth replaying; the fresh draw is statistically the same stream) and batches prefetched but not
consumed when the checkpoint was written.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import pytorch_lightning as pl
import torch

from salt.errors import UsageError

from .dataset import ClipConfig, EvalClipStream, TrainClipStream
from .decode import DEFAULT_DECODE_TIMEOUT
from .loader import DEFAULT_LOADER_TIMEOUT, SaltDataLoader, make_loader
from .sources import Split, check_split, count_samples, countable, resolve_source
from .stats import sum_counts


def eval_loader(
    shards: str | list[str],
    *,
    frames_per_clip: int = 16,
    frame_step: int = 4,
    crop_size: int = 224,
    num_segments: int = 1,
    num_views: int = 1,
    batch_size: int = 8,
    num_workers: int = 4,
    decoder: str = "auto",
    rank: int = 0,
    world_size: int = 1,
    target_fps: float | None = None,
    short_video: str = "pad",
    short_side: int | None = None,
    require_label: bool = True,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
    split: Split = "all",
    heldout_fraction: float = 0.15,
    heldout_seed: int = 0,
    num_classes: int | None = None,
    decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT,
    timeout: float | None = DEFAULT_LOADER_TIMEOUT,
    allow_pipe: bool = False,
) -> SaltDataLoader:
    """Every sample of ``shards`` exactly once across ranks x workers, in a fixed order.

    Yields ``{"video": uint8 [B, S, V, C, T, H, W], "label": int64 [B], "key": list[str],
    "data_counts": dict}`` with S temporal segments x V spatial views (1 = center, 3 = three crops).
    Ranks may receive different numbers of batches. ``shards`` is a spec or a list of specs
    forming one evaluation set: shard patterns and/or ``.csv`` lists of videos
    (``salt.data.sources``). ``split`` keeps the "fit" or "heldout" part of a training set
    (by key, ``heldout_fraction`` / ``heldout_seed``), "all" keeps everything. With ``num_classes``
    a label outside ``[0, num_classes)`` raises ``UsageError`` naming the sample. A sample whose
    decode takes longer than ``decode_timeout`` s is skipped and counted (``decode_timeout``); no
    batch from the workers for ``timeout`` s is an error naming this loader. ``pipe:`` shard URLs
    (shell commands) need ``allow_pipe=True``.

    Raises:
        UsageError: (before any worker starts) a missing CSV, a pattern that matches nothing, an
            empty CSV or split, a CSV label out of range.
    """
    check_split(split, heldout_fraction)
    source = resolve_source(shards, num_classes=num_classes, allow_pipe=allow_pipe)
    empty = split != "all" and countable(source)
    if empty and count_samples(source, split, heldout_fraction, heldout_seed) == 0:
        raise UsageError(f"split {split!r} of {source.name} holds no sample")
    cfg = ClipConfig(
        frames_per_clip=frames_per_clip,
        frame_step=frame_step,
        target_fps=target_fps,
        crop_size=crop_size,
        short_video=short_video,
        decoder=decoder,
        num_segments=num_segments,
        num_views=num_views,
        eval_short_side=short_side,
        decode_timeout=decode_timeout,
    )
    stream = EvalClipStream(
        source, cfg, batch_size, rank, world_size, require_label,
        split=split, heldout_fraction=heldout_fraction, heldout_seed=heldout_seed,
        num_classes=num_classes,
    )  # fmt: skip
    loader = make_loader(stream, num_workers, pin_memory, prefetch_factor, timeout)
    loader.lookahead = True  # trailing skips reach the caller inside the last batch
    return loader


class VideoDataModule(pl.LightningDataModule):
    """Streams clips from WebDataset shards of encoded video (see the module docstring).

    Args:
        train_shards: one spec per dataset (a str is one dataset): a shard pattern (``a::b``,
            braces, globs) or a ``.csv`` list of videos (``path,label`` or ``path label``).
        val_shards: evaluation specs (one set; shards and/or CSVs), or None for no validation.
        frames_per_clip: frames T of a clip.
        frame_step: source frames between clip frames (ignored when ``target_fps`` is set).
        crop_size: output side of the square clip.
        batch_size: clips per batch and rank.
        num_workers: DataLoader worker processes per rank (each decodes whole clips).
        epoch_length: train batches per epoch and rank (the stream itself is endless).
        shuffle_buffer: raw samples (encoded bytes) held per worker for shuffling; 0/1 = off.
        train_weights: sampling weight per training dataset; None = equal.
        short_video: "pad" (repeat the last frame) or "skip" videos shorter than the window.
        decoder: "auto" (decord, PyAV fallback per sample), "decord" or "pyav".
        seed: data seed (shard draws, shuffle, crops, mask streams).
        target_fps: if set, the step is the video's fps / target_fps instead of ``frame_step``.
        crop_scale: random-resized-crop area range.
        crop_aspect: random-resized-crop aspect (w/h) range.
        flip_prob: horizontal flip probability (0 for direction-sensitive labels).
        val_batch_size: eval batch size (default ``batch_size``).
        val_num_segments: temporal segments S of eval clips.
        val_num_views: spatial views V of eval clips (1 or 3).
        val_num_workers: eval workers (default ``num_workers``).
        pin_memory: pin batches when CUDA is available.
        prefetch_factor: batches prefetched per worker.
        decode_timeout: seconds one sample's decode may take before it is skipped and counted
            (``skipped_decode_timeout``); None = no limit.
        loader_timeout: seconds without any batch from the workers before the fit stops with an
            error naming the loader (a dead or stuck worker); 0 = wait forever.
        allow_pipe_urls: accept ``pipe:`` shard URLs, which run shell commands.
        decoded_cache_mb: MiB of whole decoded training videos each worker keeps in memory and
            reuses (``salt.data.decoded_cache``); 0 = decode every draw. For training sets that
            fit (the demo's 512 clips of 32 × 64² frames hold 192 MiB).
    """

    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | list[str] | None = None,
        frames_per_clip: int = 16,
        frame_step: int = 4,
        crop_size: int = 224,
        batch_size: int = 8,
        num_workers: int = 4,
        epoch_length: int = 1000,
        shuffle_buffer: int = 64,
        train_weights: list[float] | None = None,
        short_video: Literal["pad", "skip"] = "pad",
        decoder: Literal["auto", "decord", "pyav"] = "auto",
        seed: int = 0,
        target_fps: float | None = None,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_aspect: tuple[float, float] = (0.75, 1.35),
        flip_prob: float = 0.5,
        val_batch_size: int | None = None,
        val_num_segments: int = 1,
        val_num_views: int = 1,
        val_num_workers: int | None = None,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
        decode_timeout: float | None = DEFAULT_DECODE_TIMEOUT,
        loader_timeout: float = DEFAULT_LOADER_TIMEOUT,
        allow_pipe_urls: bool = False,
        decoded_cache_mb: float = 0.0,
    ) -> None:
        super().__init__()
        if decoded_cache_mb < 0:
            raise UsageError(f"decoded_cache_mb must be >= 0, got {decoded_cache_mb}")
        self.train_specs = [train_shards] if isinstance(train_shards, str) else list(train_shards)
        if train_weights is not None and len(train_weights) != len(self.train_specs):
            raise ValueError(
                f"{len(train_weights)} train_weights for {len(self.train_specs)} datasets"
            )
        if train_weights is not None and (min(train_weights) < 0 or sum(train_weights) <= 0):
            raise ValueError(f"train_weights must be >= 0 with a positive sum, got {train_weights}")
        if epoch_length < 1 or batch_size < 1:
            raise ValueError("epoch_length and batch_size must be >= 1")
        self.val_shards = val_shards
        self.train_weights = list(train_weights) if train_weights else [1.0] * len(self.train_specs)
        self.cfg = ClipConfig(
            frames_per_clip=frames_per_clip,
            frame_step=frame_step,
            target_fps=target_fps,
            crop_size=crop_size,
            short_video=short_video,
            decoder=decoder,
            scale=tuple(crop_scale),
            ratio=tuple(crop_aspect),
            flip_prob=flip_prob,
            decode_timeout=decode_timeout,
            decoded_cache_mb=decoded_cache_mb,
        )
        self.loader_timeout, self.allow_pipe_urls = loader_timeout, allow_pipe_urls
        self.batch_size, self.num_workers, self.epoch_length = batch_size, num_workers, epoch_length
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.val_batch_size = val_batch_size or batch_size
        self.val_num_segments, self.val_num_views = val_num_segments, val_num_views
        self.val_num_workers = num_workers if val_num_workers is None else val_num_workers
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.mask_fn: Callable[[int], list] | None = None
        self.resume_count, self.batches_seen, self.batches_in_epoch = 0, 0, 0
        self._epochs_started = 0
        self._resume_offset = 0  # batches of the interrupted epoch consumed before the resume
        self._counts: dict[str, int] = {}
        self._val_counts: dict[str, int] = {}
        self._logged: tuple[int, dict[str, float]] | None = None  # (step, totals) last logged
        self._train_stream: TrainClipStream | None = None

    # ----------------------------------------------------------------- masks
    def set_mask_fn(self, fn: Callable[[int], list] | None) -> None:
        """The stage's mask function ``fn(B) -> [(ctx, tgt), ...]``, called in the train collate."""
        self.mask_fn = fn
        if self._train_stream is not None:
            self._train_stream.mask_fn = fn

    # ----------------------------------------------------------------- placement
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    # ----------------------------------------------------------------- loaders
    def train_dataloader(self) -> SaltDataLoader:
        datasets = [resolve_source(s, allow_pipe=self.allow_pipe_urls) for s in self.train_specs]
        stream = TrainClipStream(
            datasets,
            self.train_weights,
            self.cfg,
            self.batch_size,
            self.epoch_length,
            self.shuffle_buffer,
            self.seed,
            self.mask_fn,
        )
        stream.rank, stream.resume_count = self._rank_world()[0], self.resume_count
        self._train_stream = stream
        loader = make_loader(
            stream, self.num_workers, self.pin_memory, self.prefetch_factor, self.loader_timeout
        )
        loader.on_iter = self._start_epoch
        return loader

    def _start_epoch(self) -> None:
        """Before each train epoch: new epoch seed; after a resume, only the epoch's remainder."""
        stream = self._train_stream
        stream.epoch = self._epochs_started
        self._epochs_started += 1
        stream.epoch_length = self.epoch_length - self._resume_offset
        self.batches_in_epoch, self._resume_offset = self._resume_offset, 0

    def val_dataloader(self) -> SaltDataLoader | list:
        if self.val_shards is None:
            return []
        rank, world = self._rank_world()
        return eval_loader(
            self.val_shards,
            frames_per_clip=self.cfg.frames_per_clip,
            frame_step=self.cfg.frame_step,
            crop_size=self.cfg.crop_size,
            num_segments=self.val_num_segments,
            num_views=self.val_num_views,
            batch_size=self.val_batch_size,
            num_workers=self.val_num_workers,
            decoder=self.cfg.decoder,
            rank=rank,
            world_size=world,
            target_fps=self.cfg.target_fps,
            short_video=self.cfg.short_video,
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_factor,
            decode_timeout=self.cfg.decode_timeout,
            timeout=self.loader_timeout,
            allow_pipe=self.allow_pipe_urls,
        )

    # ----------------------------------------------------------------- counts
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, dict) or "data_counts" not in batch:
            return batch
        counts = batch.pop("data_counts")
        trainer = self.trainer
        training = trainer is None or trainer.training
        if training:
            self._counts = sum_counts([self._counts, counts])
            if trainer is not None:
                self.batches_seen += 1
                self.batches_in_epoch += 1
        else:
            self._val_counts = sum_counts([self._val_counts, counts])
        if counts and trainer is not None:
            self._log_stats(final=False)
        return batch

    def _log_stats(self, final: bool) -> None:
        """Log the totals when a new kind of count appears, when ``log_every_n_steps`` steps passed
        since the last write, or at the end (``final``): a dataset with a short video in every
        batch would otherwise cost one synchronous logger write (an MLflow sqlite commit) per step."""
        trainer = self.trainer
        stats, step = self.data_stats(), trainer.global_step
        if self._logged is not None:
            last_step, last = self._logged
            if stats == last:
                return
            every = max(1, trainer.log_every_n_steps or 1)
            if not final and stats.keys() <= last.keys() and step - last_step < every:
                return
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=step)
        self._logged = (step, stats)

    def teardown(self, stage: str) -> None:
        if self.trainer is not None and self._logged is not None:
            # the totals since the last write (Lightning closes the loggers after this hook)
            self._log_stats(final=True)

    def data_stats(self) -> dict[str, float]:
        """Running totals on this rank: ``data/<name>`` (train) and ``data/val_<name>``."""
        stats = {f"data/{k}": float(v) for k, v in sorted(self._counts.items())}
        stats.update({f"data/val_{k}": float(v) for k, v in sorted(self._val_counts.items())})
        return stats

    # ----------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "resume_count": self.resume_count,
            "batches_seen": self.batches_seen,
            "batches_in_epoch": self.batches_in_epoch,
            "epoch_length": self.epoch_length,
            "counts": dict(self._counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            warnings.warn(
                f"data seed {self.seed} replaced by the checkpoint's {state['seed']} (resume)",
                stacklevel=2,
            )
        self.seed = int(state["seed"])
        self.resume_count = int(state["resume_count"]) + 1
        self.batches_seen = int(state["batches_seen"])
        self.batches_in_epoch = int(state["batches_in_epoch"]) % self.epoch_length
        self._resume_offset = self.batches_in_epoch
        self._counts = dict(state.get("counts", {}))
