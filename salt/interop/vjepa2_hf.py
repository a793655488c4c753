"""Import a ``transformers`` V-JEPA 2 folder (``config.json`` with ``model_type: vjepa2``).

Layout matched (``VJEPA2Model``; ``VJEPA2ForVideoClassification`` nests it under ``vjepa2.``):

=============================================================  ===============================
``encoder.embeddings.patch_embeddings.proj.{weight,bias}``     ``patch_embed.*`` (Conv3d)
``encoder.layer.{i}.norm1.*`` / ``norm2.*``                    ``blocks.{i}.norm1.*`` / ``norm2.*``
``encoder.layer.{i}.attention.{query,key,value}.*``            ``blocks.{i}.attn.qkv.*`` (q;k;v rows)
``encoder.layer.{i}.attention.proj.*``                         ``blocks.{i}.attn.proj.*``
``encoder.layer.{i}.mlp.fc1.*`` / ``fc2.*``                    ``blocks.{i}.mlp.fc1.*`` / ``fc2.*``
``encoder.layernorm.*``                                        ``norm.*``
=============================================================  ===============================

Skipped on purpose (counted in the metadata): ``predictor.*`` (the JEPA predictor), and in the
classification model ``pooler.*`` and ``classifier.*``.

Conventions (read in ``transformers/models/vjepa2/modeling_vjepa2.py``): input
``[B, T, C, H, W]`` (salt: ``[B, C, T, H, W]``); tokens in T×H×W order (Conv3d then
``flatten(2)``); pre-norm blocks, GELU MLP of ``int(hidden_size · mlp_ratio)``, LayerNorm eps
``layer_norm_eps`` everywhere, a final ``layernorm``; 3D RoPE on q and k with the head dim split
into three chunks of ``2·((head_dim // 3) // 2)`` for t, h, w (remainder unrotated, last), base
10000 and the *tiled* frequency layout (``rope_pairing="tiled"``). ``transformers`` derives h and
w from ``crop_size // patch_size`` rather than the clip, so its features equal salt's (true
(t, h, w) from the clip's grid) for clips of the config's crop size; V-JEPA 2's own code uses
the clip's grid, like salt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from salt.models import VideoViT

from .common import (
    TOKEN_ORDER,
    SourceState,
    hf_folder_source,
    imported_metadata,
    require,
    square,
    strip_prefixes,
    zeros_like_rows,
)
from .hf_folder import processor_mean_std, read_config, read_weights, weight_files

FORMAT = "transformers-vjepa2"
SKIP_GROUPS = ("predictor.", "pooler.", "classifier.")


def encoder_config(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """``VideoViT`` arguments of a ``VJEPA2Config`` dict."""
    require(
        cfg.get("hidden_act", "gelu") == "gelu",
        f"{source}: hidden_act={cfg.get('hidden_act')!r}; salt's MLP is GELU (exact erf)",
    )
    hidden = int(cfg.get("hidden_size", 1024))
    crop = int(cfg.get("crop_size", 256))
    return {
        "img_size": [crop, crop],
        "num_frames": int(cfg.get("frames_per_clip", 64)),
        "patch_size": square(cfg.get("patch_size", 16), "patch_size", source),
        "tubelet_size": int(cfg.get("tubelet_size", 2)),
        "in_chans": int(cfg.get("in_chans", 3)),
        "embed_dim": hidden,
        "depth": int(cfg.get("num_hidden_layers", 24)),
        "num_heads": int(cfg.get("num_attention_heads", 16)),
        "mlp_hidden_dim": int(hidden * float(cfg.get("mlp_ratio", 4.0))),
        "pos_embed": "rope",
        "attn_backend": "sdpa",
        "act_checkpoint": False,
        "rope_pairing": "tiled",
        "norm_eps": float(cfg.get("layer_norm_eps", 1e-6)),
        "final_norm": True,
    }


def map_weights(src: SourceState, depth: int, qkv_bias: bool) -> dict[str, Any]:
    """salt state dict from the ``VJEPA2Model`` keys (see module docstring)."""
    out: dict[str, Any] = {}
    src.put(out, "patch_embed.weight", "encoder.embeddings.patch_embeddings.proj.weight")
    src.put(out, "patch_embed.bias", "encoder.embeddings.patch_embeddings.proj.bias")
    for i in range(depth):
        a, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            src.put(out, f"{b}{name}.weight", f"{a}{name}.weight")
            src.put(out, f"{b}{name}.bias", f"{a}{name}.bias")
        qkv = [f"{a}attention.{p}" for p in ("query", "key", "value")]
        src.put(out, f"{b}attn.qkv.weight", *(f"{p}.weight" for p in qkv))
        if qkv_bias:
            src.put(out, f"{b}attn.qkv.bias", *(f"{p}.bias" for p in qkv))
        elif f"{b}attn.qkv.weight" in out:  # no biases: salt's qkv bias is zero (exact)
            out[f"{b}attn.qkv.bias"] = zeros_like_rows(out[f"{b}attn.qkv.weight"])
        src.put(out, f"{b}attn.proj.weight", f"{a}attention.proj.weight")
        src.put(out, f"{b}attn.proj.bias", f"{a}attention.proj.bias")
    src.put(out, "norm.weight", "encoder.layernorm.weight")
    src.put(out, "norm.bias", "encoder.layernorm.bias")
    return out


def import_folder(folder: Path) -> tuple[VideoViT, dict[str, Any]]:
    """The salt encoder and metadata of a ``transformers`` V-JEPA 2 folder."""
    source = str(folder)
    cfg = read_config(folder)
    enc_cfg = encoder_config(cfg, source)
    files = weight_files(folder)
    state = strip_prefixes(read_weights(files), ["vjepa2."])
    src = SourceState(state, source, SKIP_GROUPS)
    mapped = map_weights(src, enc_cfg["depth"], bool(cfg.get("qkv_bias", True)))
    encoder = VideoViT(**enc_cfg)
    src.finish(encoder, mapped)
    norm = processor_mean_std(folder)
    mean, std, norm_from = norm or (
        list(IMAGENET_MEAN),
        list(IMAGENET_STD),
        "transformers VJEPA2VideoProcessor default (ImageNet); the folder has no processor config",
    )
    conventions = {
        "rope_pairing": "tiled",
        "rope_axes": "head dim split t, h, w into 2·((head_dim // 3) // 2) channels each, "
        "remainder unrotated; base 10000",
        "positions": "3D RoPE from the clip's grid (transformers: from crop_size)",
        "token_order": TOKEN_ORDER + " (transformers input [B, T, C, H, W])",
        "qkv": "separate query/key/value rows stacked into one qkv projection",
        "qkv_bias": bool(cfg.get("qkv_bias", True)),
        "layer_norm_eps": enc_cfg["norm_eps"],
        "final_norm": True,
        "features": "last_hidden_state (after encoder.layernorm)",
    }
    source_meta = hf_folder_source(
        FORMAT, folder, cfg, files, src, norm_from, "VJEPA2Model", conventions
    )
    return encoder.eval(), imported_metadata(encoder, mean, std, source_meta)
