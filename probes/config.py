"""Probe protocol settings: one dataclass, read from a YAML file, overridden by CLI flags.

The YAML files in configs/probe/ (ssv2.yaml, k400.yaml, diving48.yaml, tiny.yaml) set a subset of
these fields; unknown keys are an error so a typo never silently falls back to a default. Defaults
follow V-JEPA 2's frozen evaluation (its attentive probe, 5 lr × 4 wd grid, 20 epochs, cosine,
train-time random-resized crop + RandAugment + random erasing, no flip); docs/probe.md lists
every place salt differs and why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from salt.errors import UsageError

MODES = ("auto", "online", "cached")
SCHEDULES = ("full", "halving")
LAYER_CONCAT = ("tokens", "channels")


@dataclass
class ProbeConfig:
    """Every setting of the frozen-backbone protocol (see configs/probe/*.yaml)."""

    # mode: "online" runs the frozen encoder on decoded clips every epoch (host memory flat in the
    # dataset size; the default on CUDA); "cached" encodes every clip once and keeps the features
    # in host memory (small sets, linear heads; the default on CPU)
    mode: str = "auto"
    # clips: S temporal segments of `frames_per_clip` frames at `frame_step`; V spatial views at test
    frames_per_clip: int = 16
    frame_step: int = 4
    crop_size: int = 224
    num_segments: int = 1
    num_views: int = 1
    # encoder features: None = the last block (final norm); a list = those blocks (0-based, each
    # final-normed), joined along the token axis (V-JEPA 2) or the channel axis
    feature_layers: list[int] | None = None
    layer_concat: str = "tokens"
    # train-time augmentation (online mode; salt.data.TrainAugment): one sampled view per clip
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_aspect: list[float] = field(default_factory=lambda: [0.75, 4 / 3])
    flip_prob: float = 0.0
    rand_augment: bool = True  # V-JEPA 2: rand-m7-n4 (4 ops at magnitude 7 of 10)
    rand_augment_ops: int = 4
    rand_augment_magnitude: int = 7
    random_erasing: float = 0.25  # probability of one erased box
    # data pipeline and encoder
    num_workers: int = 4
    decoder: str = "auto"
    compile_encoder: bool = False  # torch.compile the frozen encoder (online mode, CUDA)
    extract_batch_size: int = 8  # cached mode: videos per encoder batch (each brings S·V clips)
    feature_cache: str | None = None  # cached mode: directory; None = no on-disk cache
    max_feature_gb: float = 64.0  # cached mode: features live in host memory; stop clearly beyond
    # heads
    head_kinds: list[str] = field(default_factory=lambda: ["attentive", "linear"])
    probe_depth: int = 4  # 4 = V-JEPA 2 (3 self-attn + 1 cross-attn), 1 = V-JEPA 1
    probe_heads: int = 16
    mlp_ratio: float = 4.0
    lrs: list[float] = field(default_factory=lambda: [5e-3, 3e-3, 1e-3, 3e-4, 1e-4])
    wds: list[float] = field(default_factory=lambda: [0.01, 0.1, 0.4, 0.8])
    linear_lrs: list[float] | None = None  # None = same as lrs
    linear_wds: list[float] | None = None  # None = same as wds
    # head training
    epochs: int = 20
    batch_size: int = 32  # global training batch, split evenly over the ranks
    micro_batch: int | None = None  # clips per forward/backward on a rank (None = its whole batch)
    val_batch_size: int = 8  # videos per evaluation batch and rank (each brings S·V clips)
    head_chunk: int | None = None  # attentive heads per forward/backward (None = all)
    head_checkpoint: bool = False  # recompute head activations in backward (memory for time)
    warmup_epochs: float = 0.0
    heldout_fraction: float = 0.15
    retrain: bool = True  # retrain the chosen setting on all of train, score it on val too
    grid_schedule: str = "full"  # "halving": drop the worse half of the heads at halving_epochs
    halving_epochs: list[int] = field(default_factory=lambda: [2, 4, 6, 10])
    halving_keep: float = 0.5
    seed: int = 0
    progress_every_s: float = 60.0  # seconds between progress lines

    @property
    def protocol(self) -> dict[str, Any]:
        """The settings that determine cached features (the feature-cache key uses them)."""
        keys = ("frames_per_clip", "frame_step", "crop_size", "num_segments", "num_views",
                "feature_layers", "layer_concat")  # fmt: skip
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_keys(d: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(ProbeConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UsageError(f"{where}: unknown probe setting(s) {unknown}; known: {sorted(known)}")


def _check(cfg: ProbeConfig) -> None:
    bad = sorted(set(cfg.head_kinds) - {"attentive", "linear"})
    if bad:
        raise UsageError(f"unknown head kind(s) {bad}; expected 'attentive' and/or 'linear'")
    for name, allowed in (
        ("mode", MODES),
        ("grid_schedule", SCHEDULES),
        ("layer_concat", LAYER_CONCAT),
    ):
        if getattr(cfg, name) not in allowed:
            raise UsageError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    if cfg.num_views not in (1, 3):
        raise UsageError(f"num_views must be 1 or 3, got {cfg.num_views}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.val_batch_size < 1:
        raise UsageError("epochs, batch_size and val_batch_size must be >= 1")
    if not 0.0 < cfg.halving_keep < 1.0:
        raise UsageError(f"halving_keep must be in (0, 1), got {cfg.halving_keep}")
    if not 0.0 < cfg.heldout_fraction < 1.0:
        raise UsageError(f"heldout_fraction must be in (0, 1), got {cfg.heldout_fraction}")


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ProbeConfig:
    """Defaults, then the YAML file (if any), then `overrides` (entries that are None are ignored).

    Args:
        path: a YAML mapping of ProbeConfig fields.
        overrides: field values from the command line.
    """
    values: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise UsageError(f"probe config {path} not found")
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise UsageError(f"{path}: expected a YAML mapping of probe settings")
        _check_keys(loaded, str(path))
        values.update(loaded)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_keys(overrides, "overrides")
    values.update(overrides)
    cfg = ProbeConfig(**values)
    _check(cfg)
    return cfg
