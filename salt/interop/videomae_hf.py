"""Import a ``transformers`` VideoMAE folder (``config.json`` with ``model_type: videomae``).

Layout matched (``VideoMAEModel``; ``VideoMAEForPreTraining`` and
``VideoMAEForVideoClassification`` nest it under ``videomae.``):

=====================================================================  ============================
``embeddings.patch_embeddings.projection.{weight,bias}``               ``patch_embed.*`` (Conv3d)
``encoder.layer.{i}.layernorm_before.*`` / ``layernorm_after.*``       ``blocks.{i}.norm1`` / ``norm2``
``encoder.layer.{i}.attention.attention.{query,key,value}.weight``     ``blocks.{i}.attn.qkv.weight``
``…attention.attention.q_bias`` / ``v_bias`` (no key bias)             ``blocks.{i}.attn.qkv.bias``
``encoder.layer.{i}.attention.output.dense.*``                         ``blocks.{i}.attn.proj.*``
``encoder.layer.{i}.intermediate.dense.*`` / ``output.dense.*``        ``blocks.{i}.mlp.fc1`` / ``fc2``
``layernorm.*`` (only with ``use_mean_pooling: false``)                ``norm.*``
=====================================================================  ============================

The q/v biases are stored as ``q_bias`` / ``v_bias`` (the layout of the Hub's VideoMAE files,
which ``transformers`` 5 renames to ``query.bias`` / ``value.bias`` in memory); both spellings are
read. Skipped on purpose (counted in the metadata): the pretraining decoder (``decoder.*``,
``encoder_to_decoder.*``, ``mask_token``) and the classification head (``fc_norm.*``, which
normalises the *mean-pooled* vector, and ``classifier.*``).

Conventions (read in ``transformers/models/videomae/modeling_videomae.py``): input
``[B, T, C, H, W]`` at exactly the config's image size; tokens in T×H×W order; a fixed sinusoid
table over the flattened token index added once (``pos_embed="sincos_1d"``, not a weight);
separate q/v biases and no k bias: salt's qkv bias with a zero k third (exact: see
``models.vit``); LayerNorm eps ``layer_norm_eps`` (the ``transformers`` default is 1e-12);
``use_mean_pooling: true`` means no final LayerNorm on the tokens (``final_norm=False``; the
classifier mean-pools them and applies ``fc_norm``), ``false`` means a final ``layernorm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from salt.models import VideoViT
from salt.models.pos_embed import sincos_embed_1d

from .common import (
    TOKEN_ORDER,
    SourceState,
    hf_folder_source,
    imported_metadata,
    require,
    square,
    strip_prefixes,
)
from .hf_folder import processor_mean_std, read_config, read_weights, weight_files

FORMAT = "transformers-videomae"
SKIP_GROUPS = ("decoder.", "encoder_to_decoder.", "mask_token", "fc_norm.", "classifier.")
TABLE_KEY = "embeddings.position_embeddings"
# transformers' VideoMAE processors default to IMAGENET_STANDARD_MEAN / STD.
PROCESSOR_DEFAULT = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def encoder_config(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """``VideoViT`` arguments of a ``VideoMAEConfig`` dict."""
    require(
        cfg.get("hidden_act", "gelu") == "gelu",
        f"{source}: hidden_act={cfg.get('hidden_act')!r}; salt's MLP is GELU (exact erf)",
    )
    size = cfg.get("image_size", 224)
    size = [size, size] if isinstance(size, int) else [int(s) for s in size]
    return {
        "img_size": size,
        "num_frames": int(cfg.get("num_frames", 16)),
        "patch_size": square(cfg.get("patch_size", 16), "patch_size", source),
        "tubelet_size": int(cfg.get("tubelet_size", 2)),
        "in_chans": int(cfg.get("num_channels", 3)),
        "embed_dim": int(cfg.get("hidden_size", 768)),
        "depth": int(cfg.get("num_hidden_layers", 12)),
        "num_heads": int(cfg.get("num_attention_heads", 12)),
        "mlp_hidden_dim": int(cfg.get("intermediate_size", 3072)),
        "pos_embed": "sincos_1d",
        "attn_backend": "sdpa",
        "act_checkpoint": False,
        "rope_pairing": "interleaved",
        "norm_eps": float(cfg.get("layer_norm_eps", 1e-12)),
        "final_norm": not bool(cfg.get("use_mean_pooling", True)),
    }


def _first_present(src: SourceState, *keys: str) -> str:
    """The first of ``keys`` the source has (else the first, so it is reported missing)."""
    return next((k for k in keys if src.has(k)), keys[0])


def map_weights(src: SourceState, depth: int, qv_bias: bool, final_norm: bool) -> dict:
    out: dict[str, torch.Tensor] = {}
    src.put(out, "patch_embed.weight", "embeddings.patch_embeddings.projection.weight")
    src.put(out, "patch_embed.bias", "embeddings.patch_embeddings.projection.bias")
    for i in range(depth):
        a, b = f"encoder.layer.{i}.", f"blocks.{i}."
        pairs = {
            "norm1": "layernorm_before",
            "norm2": "layernorm_after",
            "attn.proj": "attention.output.dense",
            "mlp.fc1": "intermediate.dense",
            "mlp.fc2": "output.dense",
        }
        for ours, theirs in pairs.items():
            src.put(out, f"{b}{ours}.weight", f"{a}{theirs}.weight")
            src.put(out, f"{b}{ours}.bias", f"{a}{theirs}.bias")
        att = f"{a}attention.attention."
        src.put(out, f"{b}attn.qkv.weight", f"{att}query.weight", f"{att}key.weight",
                f"{att}value.weight")  # fmt: skip
        w = out.get(f"{b}attn.qkv.weight")
        if w is None:
            continue
        dim = w.shape[1]
        zero = torch.zeros(dim, dtype=w.dtype)
        if qv_bias:  # saved as q_bias / v_bias (the Hub files), in memory query / value.bias
            qk = _first_present(src, f"{att}q_bias", f"{att}query.bias")
            vk = _first_present(src, f"{att}v_bias", f"{att}value.bias")
            q, v = src.take(qk), src.take(vk)
            src.origin[f"{b}attn.qkv.bias"] = f"{qk} + 0 + {vk}"
            if q is not None and v is not None:
                out[f"{b}attn.qkv.bias"] = torch.cat((q, zero, v))  # k third zero: exact
        else:
            out[f"{b}attn.qkv.bias"] = torch.zeros(3 * dim, dtype=w.dtype)
    if final_norm:
        src.put(out, "norm.weight", "layernorm.weight")
        src.put(out, "norm.bias", "layernorm.bias")
    return out


def check_table(state: dict[str, torch.Tensor], encoder: VideoViT, source: str) -> None:
    """A position table stored with the weights must be the fixed sinusoid salt computes."""
    table = state[TABLE_KEY].reshape(-1, encoder.embed_dim).float()
    ours = sincos_embed_1d(table.shape[0], encoder.embed_dim)
    require(
        table.shape == encoder.pos_table.shape and torch.allclose(table, ours, atol=1e-6),
        f"{source}: {TABLE_KEY} {tuple(state[TABLE_KEY].shape)} is not VideoMAE's fixed "
        f"sinusoid table for {encoder.pos_table.shape[0]} tokens (a learned table is not "
        "supported)",
    )


def import_folder(folder: Path) -> tuple[VideoViT, dict[str, Any]]:
    """The salt encoder and metadata of a ``transformers`` VideoMAE folder."""
    source = str(folder)
    cfg = read_config(folder)
    enc_cfg = encoder_config(cfg, source)
    files = weight_files(folder)
    state = strip_prefixes(read_weights(files), ["videomae."])
    has_table = TABLE_KEY in state
    src = SourceState(state, source, SKIP_GROUPS + ((TABLE_KEY,) if has_table else ()))
    qv_bias = bool(cfg.get("qv_bias", cfg.get("qkv_bias", True)))
    mapped = map_weights(src, enc_cfg["depth"], qv_bias, enc_cfg["final_norm"])
    encoder = VideoViT(**enc_cfg)
    src.finish(encoder, mapped)
    if has_table:
        check_table(state, encoder, source)
    norm = processor_mean_std(folder)
    mean, std, norm_from = norm or (
        *PROCESSOR_DEFAULT,
        "transformers VideoMAE processor default (IMAGENET_STANDARD 0.5/0.5); the folder has "
        "no processor config",
    )
    conventions = {
        "positions": "fixed 1-D sinusoid over the flattened T×H×W index of the nominal "
        "grid (sin even, cos odd channels), added once; clips of that grid or fewer frames",
        "token_order": TOKEN_ORDER + " (transformers input [B, T, C, H, W])",
        "qkv": "separate q/k/v rows stacked; q and v biases, k bias zero",
        "qv_bias": qv_bias,
        "layer_norm_eps": enc_cfg["norm_eps"],
        "final_norm": enc_cfg["final_norm"],
        "pooling": "mean over tokens (use_mean_pooling)"
        if not enc_cfg["final_norm"]
        else "none (final layernorm on the tokens)",
        "features": "last_hidden_state",
    }
    source_meta = hf_folder_source(
        FORMAT, folder, cfg, files, src, norm_from, "VideoMAEModel", conventions
    )
    return encoder.eval(), imported_metadata(encoder, mean, std, source_meta)
