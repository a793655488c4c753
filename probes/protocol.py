"""The frozen-backbone protocol end to end, in either mode: tokens → grid → held-out choice →
validation once → retrain on all of train → validation once more.

`evaluate_encoder` is what `salt-probe` runs for the checkpoint and, with `random_like`, for the
random-init floor. `mode="online"` (online.py) runs the frozen encoder on decoded, augmented clips
every epoch, so host memory does not grow with the dataset; `mode="cached"` (sources.py) encodes
every clip once and keeps the tokens in memory. Both hand their batches to the same loop
(loop.py), so the grid, selection and reporting are one code path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from salt.errors import UsageError

from .config import ProbeConfig
from .dist import Dist
from .features import FeatureSet, cached_extract, extract_features, feature_cache_key
from .grid import make_grid
from .loop import Loop
from .metrics import classification_metrics
from .sources import CachedSource
from .state import StateStore


@dataclass
class ProbeResult:
    """Validation metrics of the reported head plus everything needed to audit the choice.

    `top1`/`top5`/`per_class`/`confusion` are the retrained head's when `retrained`, else the
    chosen head's as trained on the fit part of train (`fit_head` always holds the latter).
    """

    top1: float
    top5: float
    top5_k: int
    selected_head: str
    heldout: dict[str, dict[str, float]]  # every head: held-out top1 / loss, train loss, epochs
    per_class: list[float]
    confusion: torch.Tensor  # [C, C] int64, rows = true class
    num_train: int
    num_val: int
    num_fit: int
    num_heldout: int
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> pipeline counts
    fit_head: dict[str, Any] = field(default_factory=dict)  # top1/top5 of the chosen fit head
    retrained: bool = False
    mode: str = "cached"
    rungs: list[dict] = field(default_factory=list)  # successive-halving record
    history: list[dict] = field(default_factory=list)  # per epoch: heads, clips, seconds

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (the confusion matrix as nested lists)."""
        return {
            "top1": self.top1,
            "top5": self.top5,
            "top5_k": self.top5_k,
            "selected_head": self.selected_head,
            "heldout_top1": self.heldout[self.selected_head]["top1"],
            "fit_head_top1": self.fit_head.get("top1"),
            "fit_head_top5": self.fit_head.get("top5"),
            "retrained": self.retrained,
            "mode": self.mode,
            "grid": self.heldout,
            "rungs": [{"epoch": r["epoch"], "kept": r["kept"]} for r in self.rungs],
            "per_class_top1": self.per_class,
            "confusion": self.confusion.tolist(),
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_fit": self.num_fit,
            "num_heldout": self.num_heldout,
            "skipped": self.skipped,
            "history": self.history,
        }


def random_like(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """A freshly initialised encoder of the same architecture (same `.config`), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return type(encoder)(**json.loads(json.dumps(encoder.config)))


def resolve_mode(cfg: ProbeConfig, device: torch.device) -> str:
    """ "auto" → online on CUDA, cached on CPU."""
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if device.type == "cuda" else "cached"


def make_loader(
    shards: str | Sequence[str], cfg: ProbeConfig, batch_size: int | None = None
) -> Any:
    """The contract's eval loader with this protocol's clip settings (cached extraction)."""
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
        decoder=cfg.decoder,
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
            max_bytes=cfg.max_feature_gb * 2**30, layers=cfg.feature_layers,
            concat=cfg.layer_concat, log=log,
        )  # fmt: skip

    if cfg.feature_cache is None or encoder_id is None:
        return extract()
    key = feature_cache_key(encoder_id, shards, cfg.protocol)
    return cached_extract(cfg.feature_cache, key, extract, log)


def _result(st: dict, mode: str, num_train: int, num_fit: int) -> ProbeResult:
    final = st["retrained"] if st.get("retrained") else st["fit_head"]
    return ProbeResult(
        top1=final["top1"], top5=final["top5"], top5_k=final["top5_k"],
        selected_head=st["selected"], heldout=st["grid_scores"], per_class=final["per_class"],
        confusion=torch.as_tensor(final["confusion"]), num_train=num_train,
        num_val=st["num_val"], num_fit=num_fit, num_heldout=st["num_heldout"],
        skipped=st["counts"],
        fit_head={k: st["fit_head"][k] for k in ("top1", "top5", "top5_k")},
        retrained=bool(st.get("retrained")), mode=mode, rungs=st["rungs"], history=st["history"],
    )  # fmt: skip


def _cached_source(encoder, cfg, train_shards, val_shards, kw, device) -> tuple[CachedSource, int]:
    train = split_features(encoder, train_shards, cfg, desc="train features", **kw)
    val = split_features(encoder, val_shards, cfg, desc="val features", **kw)
    kw["log"](
        f"features: train {tuple(train.feats.shape)}, val {tuple(val.feats.shape)} [M, V, S·N, D]"
    )
    src = CachedSource(
        train, val, batch_size=cfg.batch_size, val_batch_size=cfg.val_batch_size,
        heldout_fraction=cfg.heldout_fraction, seed=cfg.seed, device=device,
    )  # fmt: skip
    return src, len(train)


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
    dist: Dist | None = None,
    store: StateStore | None = None,
    on_epoch: Callable[[str, int, dict], None] | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> ProbeResult:
    """Run the protocol (see the module docstring) and return the validation result.

    Args:
        encoder: a `VideoViT`; frozen here (eval, no grad).
        cfg: the protocol.
        train_shards, val_shards: labelled splits (WebDataset shard specs or CSV files).
        num_classes: number of classes.
        mean, std: input normalisation from the checkpoint metadata.
        encoder_id: identity for the cached-mode feature cache (None disables it).
        device: where the encoder and heads run (ignored when `dist` is given: its device).
        log: progress messages.
        dist: this process's rank (several ranks: online mode only).
        store: resumable state (None: not resumable).
        on_epoch, on_step: see `loop.Loop`.
    """
    dist = dist or Dist(device=torch.device(device))
    mode = resolve_mode(cfg, dist.device)
    specs = make_grid(cfg.head_kinds, cfg.lrs, cfg.wds, cfg.linear_lrs, cfg.linear_wds)
    encoder.requires_grad_(False)
    if mode == "cached":
        if dist.active:
            raise UsageError("--mode cached runs in one process; use --mode online on several GPUs")
        kw = dict(encoder_id=encoder_id, mean=mean, std=std, device=dist.device, log=log)
        source, num_train = _cached_source(encoder, cfg, train_shards, val_shards, kw, dist.device)
    else:
        from .online import OnlineSource

        source = OnlineSource(
            encoder, cfg, train_shards, val_shards, num_classes, dist=dist, mean=mean, std=std
        )
        num_train = -1  # the fit part + the held-out part, known after the run
    loop = Loop(source, cfg, specs, num_classes, dist=dist, store=store, log=log,
                on_epoch=on_epoch, on_step=on_step)  # fmt: skip
    st = loop.run()
    num_fit = source.num_fit
    if mode == "online":
        num_train = num_fit + st["num_heldout"]
    return _result(st, mode, num_train, num_fit)


@dataclass
class SweepResult:
    """A cached-mode sweep without validation labels: the choice and the chosen head's probs."""

    selected: str
    heldout: dict[str, dict[str, float]]
    val_probs: torch.Tensor  # [M_val, C], softmax averaged over views
    num_fit: int = 0
    num_heldout: int = 0


def probe_features(
    train: FeatureSet,
    val_feats: torch.Tensor,
    cfg: ProbeConfig,
    num_classes: int,
    device: torch.device | str = "cpu",
) -> SweepResult:
    """The grid on train features (no retrain); only validation *features* go in."""
    specs = make_grid(cfg.head_kinds, cfg.lrs, cfg.wds, cfg.linear_lrs, cfg.linear_wds)
    val = FeatureSet(val_feats, torch.full((len(val_feats),), -1, dtype=torch.int64))
    src = CachedSource(
        train, val, batch_size=cfg.batch_size, val_batch_size=cfg.val_batch_size,
        heldout_fraction=cfg.heldout_fraction, seed=cfg.seed, device=device,
    )  # fmt: skip
    no_retrain = ProbeConfig(**{**cfg.to_dict(), "retrain": False})
    st = Loop(src, no_retrain, specs, num_classes, dist=Dist(device=torch.device(device)),
              log=lambda m: None, score_val=False).run()  # fmt: skip
    return SweepResult(
        st["selected"], st["grid_scores"], st["fit_head"]["probs"], src.num_fit, src.num_heldout
    )


def score(sweep: SweepResult, train: FeatureSet, val: FeatureSet, num_classes: int) -> ProbeResult:
    """Validation metrics of a `probe_features` choice: the one place its labels are read."""
    m = classification_metrics(sweep.val_probs, val.labels, num_classes)
    return ProbeResult(
        top1=m["top1"], top5=m["top5"], top5_k=m["top5_k"], selected_head=sweep.selected,
        heldout=sweep.heldout, per_class=m["per_class"], confusion=m["confusion"],
        num_train=len(train), num_val=len(val), num_fit=sweep.num_fit,
        num_heldout=sweep.num_heldout, skipped={"train": train.skipped, "val": val.skipped},
        fit_head={k: m[k] for k in ("top1", "top5", "top5_k")},
    )  # fmt: skip
