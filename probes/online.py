"""Online mode's token source: the frozen encoder runs on decoded clips every epoch.

Nothing is kept between batches, so host memory does not grow with the dataset (the cached mode's
feature store grows by ≈ 18 MiB per SSv2 video for ViT-L). Per rank:

- training batches come from `salt.data.probe_train_loader`: one augmented view per clip
  (`salt.data.TrainAugment`: V-JEPA 2's random-resized crop + RandAugment + random erasing, no
  flip by default), S segments each a random window of its part of the video, the same number of
  full batches on every rank, dealt per (seed, epoch) so a resumed epoch sees the same batches;
- evaluation batches come from `salt.data.eval_loader` (S segments × V views, every sample of the
  split exactly once across ranks);
- the held-out part of train is a stable hash of each sample key (`salt.data.in_split`), the same
  on every rank and rerun; selection trains on "fit", the retrain on "all".

The encoder is in eval mode without gradients (bf16 autocast on CUDA); its tokens of one batch
are computed once and shared by every head. Each rank's batch is `batch_size / world_size` clips.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from salt.data.stats import sum_counts
from salt.errors import UsageError

from .config import ProbeConfig
from .dist import Dist
from .features import compile_encoder, encode_clips, feature_dim


def check_splits(train: str | Sequence[str], val: str | Sequence[str], num_classes: int) -> None:
    """The checks that need no worker and no GPU: missing CSV, a pattern matching nothing, an
    empty CSV, a CSV label outside [0, num_classes) (UsageError, named)."""
    from salt.data import resolve_source

    for name, spec in (("--train", train), ("--val", val)):
        try:
            resolve_source(spec, num_classes=num_classes)
        except FileNotFoundError as err:
            raise UsageError(f"{name}: {err}") from err
        except UsageError as err:
            raise UsageError(f"{name}: {err}") from err


class OnlineSource:
    """Batches of frozen tokens computed on the fly, for `loop.Loop`.

    Args:
        encoder: the frozen `VideoViT` (moved to the rank's device, eval, no grad).
        cfg: the protocol.
        train, val: labelled splits (shard specs or CSV lists).
        num_classes: labels must lie in [0, num_classes).
        dist: this rank.
        mean, std: the encoder's input normalisation.
    """

    def __init__(
        self,
        encoder: nn.Module,
        cfg: ProbeConfig,
        train: str | Sequence[str],
        val: str | Sequence[str],
        num_classes: int,
        *,
        dist: Dist,
        mean: Sequence[float],
        std: Sequence[float],
    ):
        if cfg.batch_size % dist.world_size:
            raise UsageError(
                f"batch_size {cfg.batch_size} (global) is not divisible by {dist.world_size} ranks"
            )
        check_splits(train, val, num_classes)
        self.cfg, self.train, self.val, self.num_classes = cfg, train, val, num_classes
        self.dist, self.mean, self.std = dist, tuple(mean), tuple(std)
        self.rank_batch = cfg.batch_size // dist.world_size
        self.encoder = encoder.to(dist.device).eval().requires_grad_(False)
        self.embed_dim = feature_dim(encoder, cfg.feature_layers, cfg.layer_concat)
        self._encode = encode_clips
        if cfg.compile_encoder and dist.device.type == "cuda":
            compile_encoder(self.encoder)
        self._loaders: dict[bool, object] = {}
        self._counts: Counter = Counter()

    # ------------------------------------------------------------------ loaders
    def _train_loader(self, full: bool):
        if full not in self._loaders:
            from salt.data import TrainAugment, count_samples, probe_train_loader, resolve_source

            c, d = self.cfg, self.dist
            split = "all" if full else "fit"
            n = None
            if d.active:  # one rank counts (tar headers / CSV rows), the others are told
                n = d.gather(
                    count_samples(resolve_source(self.train), split, c.heldout_fraction, c.seed)
                    if d.is_main
                    else None
                )[0]
            aug = TrainAugment(
                crop_size=c.crop_size, scale=tuple(c.crop_scale), aspect=tuple(c.crop_aspect),
                flip_prob=c.flip_prob, randaugment=c.rand_augment,
                randaugment_ops=c.rand_augment_ops, randaugment_magnitude=c.rand_augment_magnitude,
                erase_prob=c.random_erasing, mean=self.mean, std=self.std,
            )  # fmt: skip
            self._loaders[full] = probe_train_loader(
                self.train, batch_size=self.rank_batch, frames_per_clip=c.frames_per_clip,
                frame_step=c.frame_step, num_segments=c.num_segments, augment=aug, split=split,
                heldout_fraction=c.heldout_fraction, heldout_seed=c.seed,
                num_classes=self.num_classes, num_samples=n, rank=d.rank, world_size=d.world_size,
                seed=c.seed, num_workers=c.num_workers, decoder=c.decoder,
                pin_memory=d.device.type == "cuda",
            )  # fmt: skip
        return self._loaders[full]

    def _eval_loader(self, split: str):
        from salt.data import eval_loader

        c, d = self.cfg, self.dist
        return eval_loader(
            self.val if split == "val" else self.train, frames_per_clip=c.frames_per_clip,
            frame_step=c.frame_step, crop_size=c.crop_size, num_segments=c.num_segments,
            num_views=c.num_views, batch_size=c.val_batch_size, num_workers=c.num_workers,
            decoder=c.decoder, rank=d.rank, world_size=d.world_size,
            split="all" if split == "val" else "heldout", heldout_fraction=c.heldout_fraction,
            heldout_seed=c.seed, num_classes=self.num_classes,
            pin_memory=d.device.type == "cuda",
        )  # fmt: skip

    @property
    def num_fit(self) -> int:
        """Samples of the fit part of train."""
        return int(self._train_loader(False).num_samples)

    # ------------------------------------------------------------------ batches
    def steps_per_epoch(self, full: bool) -> int:
        return int(self._train_loader(full).steps_per_epoch)

    def _tokens(self, video: torch.Tensor) -> torch.Tensor:
        # uint8 [b, S, V, C, T, H, W] -> [b, V, S·N, D]
        c = self.cfg
        chunk = None if c.micro_batch is None else c.micro_batch * c.num_segments
        return self._encode(self.encoder, video, mean=self.mean, std=self.std,
                            layers=c.feature_layers, concat=c.layer_concat, chunk=chunk)  # fmt: skip

    def train_batches(self, epoch: int, full: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = self._train_loader(full)
        loader.set_epoch(epoch)
        dev = self.dist.device
        for batch in loader:
            self._counts.update(batch.get("data_counts", {}))
            video = batch["video"].to(dev, non_blocking=True)  # [b, S, C, T, H, W] uint8
            x = self._tokens(video[:, :, None])[:, 0]  # [b, S·N, D]
            yield x, batch["label"].to(dev, non_blocking=True)

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        dev = self.dist.device
        for batch in self._eval_loader(split):
            self._counts.update(batch.get("data_counts", {}))
            video = batch["video"].to(dev, non_blocking=True)  # [b, S, V, C, T, H, W] uint8
            yield self._tokens(video), batch["label"], list(batch["key"])

    def take_counts(self) -> dict[str, int]:
        counts = sum_counts([self._counts])
        self._counts = Counter()
        return counts
