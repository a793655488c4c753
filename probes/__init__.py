"""salt.probes: frozen-backbone evaluation of SALT encoders.

`load_encoder` (re-exported from `salt.encoder_io`) rebuilds an encoder from a checkpoint of either
stage or an exported `.safetensors`; features.py extracts multi-clip × multi-view tokens once;
heads.py has the attentive and linear probes; sweep.py trains a grid of heads on shared features
and selects one on a held-out slice of train (selection.py); metrics.py scores validation once;
protocol.py ties these together for `salt-probe` (cli.py); compare.py and runs_cli.py
(`salt-runs`) relate student training loss to probe accuracy across checkpoints; callback.py is a
live probe during training.

Every name below is imported on first use (PEP 562), so the CLIs' ``--help`` and the MLflow-only
tools (``salt-runs``) do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from salt.encoder_io import load_encoder
    from salt.probes.config import ProbeConfig, load_config
    from salt.probes.features import FeatureSet, encode_clips, extract_features
    from salt.probes.heads import AttentiveProbe, CrossAttentionBlock, LinearProbe, build_head
    from salt.probes.protocol import ProbeResult, evaluate_encoder, random_like
    from salt.probes.selection import select_head, stratified_split
    from salt.probes.sweep import (
        HeadGrid,
        HeadSpec,
        SweepResult,
        make_grid,
        predict,
        run_sweep,
        train_grid,
    )

_HOME = {
    "load_encoder": "salt.encoder_io",
    **dict.fromkeys(("ProbeConfig", "load_config"), "salt.probes.config"),
    **dict.fromkeys(("FeatureSet", "encode_clips", "extract_features"), "salt.probes.features"),
    **dict.fromkeys(
        ("AttentiveProbe", "CrossAttentionBlock", "LinearProbe", "build_head"), "salt.probes.heads"
    ),
    **dict.fromkeys(("ProbeResult", "evaluate_encoder", "random_like"), "salt.probes.protocol"),
    **dict.fromkeys(("select_head", "stratified_split"), "salt.probes.selection"),
    **dict.fromkeys(
        ("HeadGrid", "HeadSpec", "SweepResult", "make_grid", "predict", "run_sweep", "train_grid"),
        "salt.probes.sweep",
    ),
}

__all__ = [
    "AttentiveProbe",
    "CrossAttentionBlock",
    "FeatureSet",
    "HeadGrid",
    "HeadSpec",
    "LinearProbe",
    "ProbeConfig",
    "ProbeResult",
    "SweepResult",
    "build_head",
    "encode_clips",
    "evaluate_encoder",
    "extract_features",
    "load_config",
    "load_encoder",
    "make_grid",
    "predict",
    "random_like",
    "run_sweep",
    "select_head",
    "stratified_split",
    "train_grid",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'salt.probes' has no attribute {name!r}")
