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
"""

from salt.encoder_io import load_encoder
from salt.probes.config import ProbeConfig, load_config
from salt.probes.features import FeatureSet, encode_clips, extract_features
from salt.probes.grid import HeadSpec, ProbeGrid, make_grid
from salt.probes.heads import AttentiveProbe, CrossAttentionBlock, LinearProbe, build_head
from salt.probes.protocol import (
    ProbeResult,
    SweepResult,
    evaluate_encoder,
    probe_features,
    random_like,
)
from salt.probes.selection import select_head, stratified_split

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
