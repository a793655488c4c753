"""Probe protocol settings: one dataclass, read from a YAML file, overridden by CLI flags.

The YAML files in configs/probe/ (ssv2.yaml, k400.yaml, tiny.yaml) set a subset of these fields;
unknown keys are an error so a typo never silently falls back to a default. Defaults follow
SPEC.md "Evaluation" (V-JEPA 2's attentive probe and 5 lr × 4 wd grid, 20 epochs, cosine).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ProbeConfig:
    """Every setting of the frozen-backbone protocol (see configs/probe/*.yaml)."""

    # clips: S temporal segments × V spatial views of `frames_per_clip` frames at `frame_step`
    frames_per_clip: int = 16
    frame_step: int = 4
    crop_size: int = 224
    num_segments: int = 1
    num_views: int = 1
    # feature extraction
    extract_batch_size: int = 8  # videos per encoder batch (each brings S·V clips)
    num_workers: int = 4
    feature_cache: str | None = None  # directory; None = no on-disk cache
    max_feature_gb: float = 64.0  # features are kept in host memory: stop clearly beyond this
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
    batch_size: int = 32
    warmup_epochs: float = 0.0
    heldout_fraction: float = 0.15
    seed: int = 0

    @property
    def protocol(self) -> dict[str, Any]:
        """The settings that determine the features (the feature-cache key uses them)."""
        keys = ("frames_per_clip", "frame_step", "crop_size", "num_segments", "num_views")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_keys(d: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(ProbeConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown probe setting(s) {unknown}; known: {sorted(known)}")


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
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a YAML mapping of probe settings")
        _check_keys(loaded, str(path))
        values.update(loaded)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_keys(overrides, "overrides")
    values.update(overrides)
    cfg = ProbeConfig(**values)
    bad = sorted(set(cfg.head_kinds) - {"attentive", "linear"})
    if bad:
        raise ValueError(f"unknown head kind(s) {bad}; expected 'attentive' and/or 'linear'")
    return cfg
