"""salt.probes: frozen-backbone evaluation of SALT encoders.

`load_encoder` (re-exported from `salt.encoder_io`) rebuilds an encoder from a checkpoint of either
stage or an exported `.safetensors`; features.py extracts multi-clip × multi-view tokens once;
heads.py has the attentive and linear probes; sweep.py trains a grid of heads on shared features
and selects one on a held-out slice of train (selection.py); metrics.py scores validation once;
protocol.py ties these together for `salt-probe` (cli.py); compare.py and runs_cli.py
(`salt-runs`) relate student training loss to probe accuracy across checkpoints; callback.py is a
live probe during training.
"""

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
