"""Cached mode's token source: frozen features of every clip held in host memory (features.py).

For small sets and cheap heads: each clip is encoded once (S segments × V views), and every epoch
of every head reads the stored tokens instead of running the encoder again. Training uses one
view per clip, the centre one (there is no augmentation to sample: the features are fixed); the
held-out part of train and validation are scored on all V views with softmax averaging, as in
online mode. The held-out part is a seeded stratified split of train (selection.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .features import FeatureSet
from .selection import stratified_split


class CachedSource:
    """Batches of stored tokens for `loop.Loop` (one process).

    Args:
        train: training features [M, V, N, D] with labels.
        val: validation features (labels are only read by the loop's final scoring).
        batch_size: training samples per step.
        val_batch_size: samples per evaluation batch.
        heldout_fraction: share of each class held out of train for head selection.
        seed: seed of the split and of every epoch's order.
        device: where the batches go.
    """

    def __init__(
        self,
        train: FeatureSet,
        val: FeatureSet,
        *,
        batch_size: int,
        val_batch_size: int,
        heldout_fraction: float,
        seed: int,
        device: torch.device | str,
    ):
        self.train, self.val = train, val
        self.batch_size, self.val_batch_size, self.seed = batch_size, val_batch_size, seed
        self.device = torch.device(device)
        self.embed_dim = int(train.feats.shape[-1])
        self.fit_idx, self.held_idx = stratified_split(train.labels, heldout_fraction, seed)
        self.all_idx = torch.arange(len(train))
        V = train.feats.shape[1]
        self.train_view = V // 2  # the centre crop of 1 or 3 views
        self._counts: dict[str, int] = {}

    def steps_per_epoch(self, full: bool) -> int:
        return math.ceil(len(self.all_idx if full else self.fit_idx) / self.batch_size)

    def _x(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.to(self.device, non_blocking=True).float()

    def train_batches(self, epoch: int, full: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.all_idx if full else self.fit_idx
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = idx[torch.randperm(len(idx), generator=gen)]
        self._counts = dict(self.train.skipped)  # skipped once, at extraction
        for i in range(0, len(order), self.batch_size):
            rows = order[i : i + self.batch_size]
            x = self._x(self.train.feats[rows, self.train_view])  # [b, N, D]
            yield x, self.train.labels[rows].to(self.device)

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        fs = self.val if split == "val" else self.train
        rows = torch.arange(len(fs)) if split == "val" else self.held_idx
        keys = fs.keys or [str(i) for i in range(len(fs))]
        self._counts = dict(fs.skipped) if split == "val" else {}  # held-out: counted in train
        for i in range(0, len(rows), self.val_batch_size):
            r = rows[i : i + self.val_batch_size]
            yield self._x(fs.feats[r]), fs.labels[r], [keys[j] for j in r.tolist()]

    def take_counts(self) -> dict[str, int]:
        counts, self._counts = self._counts, {}
        return counts

    @property
    def num_fit(self) -> int:
        return len(self.fit_idx)

    @property
    def num_heldout(self) -> int:
        return len(self.held_idx)
