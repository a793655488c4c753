"""The frozen-backbone protocol end to end: features once → grid of heads → one validation score.

`evaluate_encoder` is what `salt-probe` runs for the checkpoint and, with `random_like`, for the
random-init floor: extract train and validation features (cached if asked), run the honest sweep
(head chosen on a held-out slice of train), then score the chosen head on validation once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from salt.probes.config import ProbeConfig
from salt.probes.features import FeatureSet, cached_extract, extract_features, feature_cache_key
from salt.probes.metrics import classification_metrics
from salt.probes.sweep import SweepResult, make_grid, run_sweep


@dataclass
class ProbeResult:
    """Validation metrics of the chosen head plus everything needed to audit the choice."""

    top1: float
    top5: float
    top5_k: int
    selected_head: str
    heldout: dict[str, dict[str, float]]  # every head: held-out top1 / loss, last train loss
    per_class: list[float]
    confusion: torch.Tensor  # [C, C] int64, rows = true class
    num_train: int
    num_val: int
    num_fit: int
    num_heldout: int
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> loader skip counts

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (the confusion matrix as nested lists)."""
        return {
            "top1": self.top1,
            "top5": self.top5,
            "top5_k": self.top5_k,
            "selected_head": self.selected_head,
            "heldout_top1": self.heldout[self.selected_head]["top1"],
            "grid": self.heldout,
            "per_class_top1": self.per_class,
            "confusion": self.confusion.tolist(),
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_fit": self.num_fit,
            "num_heldout": self.num_heldout,
            "skipped": self.skipped,
        }


def random_like(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """A freshly initialised encoder of the same architecture (same `.config`), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return type(encoder)(**json.loads(json.dumps(encoder.config)))


def make_loader(
    shards: str | Sequence[str], cfg: ProbeConfig, batch_size: int | None = None
) -> Any:
    """The contract's eval loader with this protocol's clip settings."""
    from salt.data import eval_loader

    return eval_loader(
        shards,
        frames_per_clip=cfg.frames_per_clip,
        frame_step=cfg.frame_step,
        crop_size=cfg.crop_size,
        num_segments=cfg.num_segments,
        num_views=cfg.num_views,
        batch_size=batch_size or cfg.extract_batch_size,
        num_workers=cfg.num_workers,
    )


def split_features(
    encoder: nn.Module,
    shards: str | Sequence[str],
    cfg: ProbeConfig,
    *,
    encoder_id: str | None,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str,
    desc: str,
    log: Callable[[str], None] = print,
) -> FeatureSet:
    """Features of one split, through the on-disk cache when `cfg.feature_cache` and an id are set."""

    def extract() -> FeatureSet:
        return extract_features(
            encoder, make_loader(shards, cfg), mean=mean, std=std, device=device, desc=desc,
            max_bytes=cfg.max_feature_gb * 2**30,
        )  # fmt: skip

    if cfg.feature_cache is None or encoder_id is None:
        return extract()
    key = feature_cache_key(encoder_id, shards, cfg.protocol)
    return cached_extract(cfg.feature_cache, key, extract, log)


def probe_features(
    train: FeatureSet,
    val_feats: torch.Tensor,
    cfg: ProbeConfig,
    num_classes: int,
    device: torch.device | str = "cpu",
) -> SweepResult:
    """Run the configured grid on train features; only validation *features* go in."""
    specs = make_grid(cfg.head_kinds, cfg.lrs, cfg.wds, cfg.linear_lrs, cfg.linear_wds)
    return run_sweep(
        train.feats, train.labels, val_feats, specs=specs, num_classes=num_classes,
        depth=cfg.probe_depth, num_heads=cfg.probe_heads, mlp_ratio=cfg.mlp_ratio,
        epochs=cfg.epochs, batch_size=cfg.batch_size, warmup_epochs=cfg.warmup_epochs,
        heldout_fraction=cfg.heldout_fraction, seed=cfg.seed, device=device,
    )  # fmt: skip


def score(sweep: SweepResult, train: FeatureSet, val: FeatureSet, num_classes: int) -> ProbeResult:
    """Validation metrics of the already chosen head: the one place validation labels are read."""
    m = classification_metrics(sweep.val_probs, val.labels, num_classes)
    return ProbeResult(
        top1=m["top1"], top5=m["top5"], top5_k=m["top5_k"], selected_head=sweep.selected,
        heldout=sweep.heldout, per_class=m["per_class"], confusion=m["confusion"],
        num_train=len(train), num_val=len(val), num_fit=sweep.num_fit,
        num_heldout=sweep.num_heldout, skipped={"train": train.skipped, "val": val.skipped},
    )  # fmt: skip


def evaluate_encoder(
    encoder: nn.Module,
    cfg: ProbeConfig,
    train_shards: str | Sequence[str],
    val_shards: str | Sequence[str],
    num_classes: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    encoder_id: str | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> ProbeResult:
    """Frozen features of both splits → honest sweep → validation scored once.

    Args:
        encoder: a `VideoViT`; frozen here (eval, no grad).
        cfg: the protocol.
        train_shards, val_shards: WebDataset shard specs with labels.
        num_classes: number of classes.
        mean, std: input normalisation from the checkpoint metadata.
        encoder_id: identity for the feature cache (None disables caching for this encoder).
        device: where features are extracted and heads trained.
        log: progress messages.
    """
    kw = dict(encoder_id=encoder_id, mean=mean, std=std, device=device, log=log)
    train = split_features(encoder, train_shards, cfg, desc="train features", **kw)
    val = split_features(encoder, val_shards, cfg, desc="val features", **kw)
    log(f"features: train {tuple(train.feats.shape)}, val {tuple(val.feats.shape)} [M, V, S·N, D]")
    sweep = probe_features(train, val.feats, cfg, num_classes, device)
    return score(sweep, train, val, num_classes)
