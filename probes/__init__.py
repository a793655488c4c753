"""salt.probes: frozen-backbone evaluation of SALT encoders.

`load_encoder` (re-exported from `salt.encoder_io`) rebuilds an encoder from a checkpoint of either
stage or an exported `.safetensors`. The probe protocol (protocol.py, `salt-probe` in cli.py):
tokens come from the frozen encoder every epoch (online.py) or from features extracted once
(features.py, sources.py); one loop (loop.py) trains the lr × wd grid of heads (heads.py, held as
stacked parameters in stacked.py with the per-head AdamW of optim.py, grid.py), optionally
halving it, chooses a head on a held-out slice of train (selection.py), scores validation once
(metrics.py), retrains the chosen setting on all of train and scores it once more; ranks
(dist.py), resumable state (state.py) and MLflow runs (tracking.py) around it. compare.py and
runs_cli.py (`salt-runs`) relate student training loss to probe accuracy across checkpoints;
callback.py is a live probe during training.

Every name below is imported on first use (PEP 562), so the CLIs' ``--help`` and the MLflow-only
tools (``salt-runs``) do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from salt.encoder_io import load_encoder

    from .config import ProbeConfig, load_config
    from .features import FeatureSet, encode_clips, extract_features
    from .grid import HeadSpec, ProbeGrid, make_grid
    from .heads import AttentiveProbe, CrossAttentionBlock, LinearProbe, build_head
    from .protocol import (
        ProbeResult,
        SweepResult,
        evaluate_encoder,
        probe_features,
        random_like,
    )
    from .selection import select_head, stratified_split

_HOME = {
    "load_encoder": "salt.encoder_io",
    **dict.fromkeys(("ProbeConfig", "load_config"), "salt.probes.config"),
    **dict.fromkeys(("FeatureSet", "encode_clips", "extract_features"), "salt.probes.features"),
    **dict.fromkeys(("HeadSpec", "ProbeGrid", "make_grid"), "salt.probes.grid"),
    **dict.fromkeys(
        ("AttentiveProbe", "CrossAttentionBlock", "LinearProbe", "build_head"), "salt.probes.heads"
    ),
    **dict.fromkeys(
        ("ProbeResult", "SweepResult", "evaluate_encoder", "probe_features", "random_like"),
        "salt.probes.protocol",
    ),
    **dict.fromkeys(("select_head", "stratified_split"), "salt.probes.selection"),
}

__all__ = [
    "AttentiveProbe",
    "CrossAttentionBlock",
    "FeatureSet",
    "HeadSpec",
    "LinearProbe",
    "ProbeConfig",
    "ProbeGrid",
    "ProbeResult",
    "SweepResult",
    "build_head",
    "encode_clips",
    "evaluate_encoder",
    "extract_features",
    "load_config",
    "load_encoder",
    "make_grid",
    "probe_features",
    "random_like",
    "select_head",
    "stratified_split",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'salt.probes' has no attribute {name!r}")
