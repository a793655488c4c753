"""The study's one probe protocol and health signals, on clips held in memory.

Every encoder — pixel teacher, SALT students, the EMA baseline's *target* encoder, random init —
is evaluated the same way, with salt's probe library (what ``salt-probe`` runs after its loader):
frozen features of the probe-train and validation clips (``salt.probes.extract_features``), then
for each head kind separately the honest sweep (``salt.probes.protocol.probe_features``: a grid of
heads trained on a fit slice of probe-train, one chosen on its held-out slice) and validation
scored once (``score``). Linear and attentive results are both reported; ``heldout_top1`` (the
better kind's held-out score) is what the EMA grid selects on. Validation labels choose nothing.

Health, from the same validation features: RankMe and per-channel std of the tokens and of the
mean-pooled clip features, and ``std_ratio`` = token std / token RMS, which falls towards 0 when an
encoder's output stops depending on its input (collapse).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from salt.health import feature_std, rankme
from salt.probes import ProbeConfig, extract_features
from salt.probes.features import FeatureSet
from salt.probes.protocol import probe_features, score


@dataclass
class ProbeData:
    """Labelled clips of the probe: uint8 ``[M, 3, T, H, W]`` (any device), int64 labels (CPU)."""

    train_video: torch.Tensor
    train_labels: torch.Tensor
    val_video: torch.Tensor
    val_labels: torch.Tensor

    def transformed(self, fn: Any) -> ProbeData:
        """The same clips through ``fn`` (a control such as ``motion.single_frame``)."""
        return ProbeData(
            fn(self.train_video), self.train_labels, fn(self.val_video), self.val_labels
        )


def default_protocol(**overrides: Any) -> ProbeConfig:
    """The study's protocol: 1-block attentive probe (V-JEPA 1's) and linear, small grid."""
    cfg = {
        "num_segments": 1, "num_views": 1, "probe_depth": 1, "probe_heads": 4,
        "head_kinds": ["attentive", "linear"], "lrs": [3e-3, 1e-3], "wds": [0.01, 0.1],
        "linear_lrs": [0.3, 0.1, 0.03], "linear_wds": [0.01, 0.1], "epochs": 20,
        "batch_size": 128, "warmup_epochs": 0.0, "heldout_fraction": 0.15, "seed": 0,
        "extract_batch_size": 128,
    }  # fmt: skip
    return ProbeConfig(**{**cfg, **overrides})


def _batches(video: torch.Tensor, labels: torch.Tensor, batch_size: int):
    for i in range(0, len(video), batch_size):
        v = video[i : i + batch_size, None, None]  # [b, S=1, V=1, 3, T, H, W]
        yield {"video": v, "label": labels[i : i + batch_size]}


def features(
    encoder: torch.nn.Module, video: torch.Tensor, labels: torch.Tensor, *, mean, std,
    device: torch.device, batch_size: int,
) -> FeatureSet:  # fmt: skip
    """Frozen features ``[M, 1, N, D]`` (fp16), kept on ``device`` for the heads."""
    fs = extract_features(
        encoder, _batches(video, labels, batch_size), mean=mean, std=std, device=device,
        desc="features",
    )  # fmt: skip
    return FeatureSet(fs.feats.to(device), fs.labels)


@torch.no_grad()
def health(feats: torch.Tensor) -> dict[str, float]:
    """RankMe / std of tokens ``feats [M, 1, N, D]`` and of their mean over tokens."""
    tokens = feats.flatten(0, 2).float()  # [M·N, D]
    pooled = feats.float().mean(dim=2).flatten(0, 1)  # [M, D]
    rms = tokens.square().mean().sqrt().clamp_min(1e-12)
    std = feature_std(tokens)
    return {
        "rankme_tokens": float(rankme(tokens)),
        "rankme_pooled": float(rankme(pooled)),
        "std_tokens": float(std),
        "std_pooled": float(feature_std(pooled)),
        "std_ratio": float(std / rms),
    }


def probe(
    encoder: torch.nn.Module,
    data: ProbeData,
    cfg: ProbeConfig,
    num_classes: int,
    *,
    mean,
    std,
    device: torch.device,
) -> dict[str, Any]:
    """Both head kinds on one encoder: ``{kind: {top1, heldout_top1, selected_head}, "health",
    "heldout_top1"}``."""
    kw = {"mean": mean, "std": std, "device": device, "batch_size": cfg.extract_batch_size}
    train = features(encoder, data.train_video, data.train_labels, **kw)
    val = features(encoder, data.val_video, data.val_labels, **kw)
    out: dict[str, Any] = {}
    for kind in cfg.head_kinds:
        sweep = probe_features(
            train, val.feats, dataclasses.replace(cfg, head_kinds=[kind]), num_classes, device
        )
        res = score(sweep, train, val, num_classes)
        out[kind] = {
            "top1": res.top1,
            "heldout_top1": res.heldout[res.selected_head]["top1"],
            "selected_head": res.selected_head,
        }
    out["heldout_top1"] = max(out[k]["heldout_top1"] for k in cfg.head_kinds)
    out["health"] = health(val.feats)
    return out
