"""Import a V-JEPA 2 torch-hub checkpoint ``.pt`` (``vitl.pt``, ``vith.pt``, ``vitg.pt``, ...).

The file is a ``torch.save`` dict; the encoder weights sit under ``encoder`` or
``target_encoder`` (the EMA copy V-JEPA 2's evaluations load: ``--key``, default
``target_encoder``), with the ``module.`` (DDP) and ``backbone.`` prefixes its own loaders strip.
The rest of the file (predictor, optimizer, epoch, ...) is not read into memory (the file is
memory-mapped). Layout of ``src/models/vision_transformer.py`` (key names only):

=============================================  =================================
``patch_embed.proj.{weight,bias}``             ``patch_embed.*`` (Conv3d)
``blocks.{i}.norm1.*`` / ``norm2.*``           same
``blocks.{i}.attn.qkv.*`` / ``attn.proj.*``    same (fused q;k;v rows, like salt)
``blocks.{i}.mlp.fc1.*`` / ``fc2.*``           same (GELU)
``norm.*``                                     ``norm.*``
=============================================  =================================

The file carries no config, so the architecture comes from the shapes: width and tubelet × patch
from the Conv3d weight, depth from the block count, MLP width from ``fc1``. The head count does
not show in any shape; it comes from V-JEPA 2's sizes by width (``HEADS_BY_WIDTH``: ViT-L 1024 →
16, ViT-H 1280 → 16, ViT-g 1408 → 22 as ``vit_giant_xformers``, the hub's giant) unless
``num_heads`` is given. Conventions: pre-norm, LayerNorm eps 1e-6, final ``norm``, 3D RoPE with
the *tiled* tables from the clip's grid (``rope_pairing="tiled"``), ImageNet mean/std. A
``pos_embed`` key means a model that *adds* a position table (V-JEPA 1 style, not RoPE): an error,
unless ``ignore_pos_embed`` says the encoder is known to run RoPE and the table is unused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from salt.errors import UsageError
from salt.models import VideoViT

from .common import (
    TOKEN_ORDER,
    SourceState,
    imported_metadata,
    listing,
    require,
    strip_prefixes,
    zeros_like_rows,
)

FORMAT = "vjepa2-torch-hub"
KEYS = ("target_encoder", "encoder")
PREFIXES = ("module.", "backbone.")
# embed_dim → heads of V-JEPA 2's vision_transformer sizes (the hub's giant is vit_giant_xformers).
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 22, 1664: 26}
NAME_BY_WIDTH = {1024: "vit_large", 1280: "vit_huge", 1408: "vit_giant_xformers"}
NOMINAL = {"img_size": [256, 256], "num_frames": 64}  # V-JEPA 2 pretraining's final clips


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, read weights-only and memory-mapped."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise UsageError(f"{path}: cannot read as a torch checkpoint: {e}") from e
    if not isinstance(ckpt, dict):
        raise UsageError(f"{path}: a torch checkpoint but not a dict (got {type(ckpt).__name__})")
    return ckpt


def is_vjepa2_checkpoint(ckpt: dict[str, Any]) -> bool:
    return any(isinstance(ckpt.get(k), dict) for k in KEYS)


def infer_config(state: dict[str, torch.Tensor], source: str, num_heads: int | None) -> dict:
    """``VideoViT`` arguments from the shapes of a V-JEPA 2 encoder state dict."""
    w = state.get("patch_embed.proj.weight")
    require(w is not None, f"{source}: no patch_embed.proj.weight: not a V-JEPA 2 encoder")
    require(
        w.dim() == 5 and w.shape[-1] == w.shape[-2],
        f"{source}: patch_embed.proj.weight {tuple(w.shape)} is not a video (Conv3d) tubelet "
        "embedding with square patches",
    )
    dim, in_chans, tubelet, patch = w.shape[0], w.shape[1], w.shape[2], w.shape[3]
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    require(bool(blocks), f"{source}: no blocks.N.* keys")
    depth = max(blocks) + 1
    require(blocks == set(range(depth)), f"{source}: block indices are not 0..{depth - 1}")
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    require(fc1 is not None, f"{source}: no blocks.0.mlp.fc1.weight")
    heads = num_heads or HEADS_BY_WIDTH.get(dim)
    if heads is None:
        raise UsageError(
            f"{source}: width {dim} is none of V-JEPA 2's sizes {sorted(HEADS_BY_WIDTH)}; the "
            "head count does not show in the weights: pass --num-heads"
        )
    return {
        **NOMINAL,
        "patch_size": int(patch),
        "tubelet_size": int(tubelet),
        "in_chans": int(in_chans),
        "embed_dim": int(dim),
        "depth": depth,
        "num_heads": int(heads),
        "mlp_hidden_dim": int(fc1.shape[0]),
        "pos_embed": "rope",
        "attn_backend": "sdpa",
        "act_checkpoint": False,
        "rope_pairing": "tiled",
        "norm_eps": 1e-6,
        "final_norm": True,
    }


def map_weights(src: SourceState, depth: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    src.put(out, "patch_embed.weight", "patch_embed.proj.weight")
    src.put(out, "patch_embed.bias", "patch_embed.proj.bias")
    for i in range(depth):
        b = f"blocks.{i}."
        for name in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2"):
            src.put(out, f"{b}{name}.weight", f"{b}{name}.weight")
            src.put(out, f"{b}{name}.bias", f"{b}{name}.bias")
        src.put(out, f"{b}attn.qkv.weight", f"{b}attn.qkv.weight")
        if src.has(f"{b}attn.qkv.bias"):
            src.put(out, f"{b}attn.qkv.bias", f"{b}attn.qkv.bias")
        elif f"{b}attn.qkv.weight" in out:  # qkv_bias=False: a zero bias is the same map
            out[f"{b}attn.qkv.bias"] = zeros_like_rows(out[f"{b}attn.qkv.weight"])
    src.put(out, "norm.weight", "norm.weight")
    src.put(out, "norm.bias", "norm.bias")
    return out


def import_checkpoint(
    path: Path,
    key: str = "target_encoder",
    num_heads: int | None = None,
    ignore_pos_embed: bool = False,
) -> tuple[VideoViT, dict[str, Any]]:
    """The salt encoder and metadata of a V-JEPA 2 torch-hub checkpoint.

    Args:
        path: the ``.pt`` file.
        key: which state dict: ``target_encoder`` (default, as V-JEPA 2 evaluates) or ``encoder``.
        num_heads: attention heads, when the width is not one of V-JEPA 2's sizes.
        ignore_pos_embed: drop a ``pos_embed`` table (only for an encoder known to run RoPE).
    """
    from salt.encoder_io import file_sha256

    source = str(path)
    ckpt = load_checkpoint(path)
    dicts = sorted(k for k, v in ckpt.items() if isinstance(v, dict))
    if not isinstance(ckpt.get(key), dict):
        raise UsageError(
            f"{source}: no state dict under key {key!r}; the file has {listing(dicts)} "
            f"(choose one with --key)"
        )
    state = strip_prefixes(ckpt[key], PREFIXES)
    skip: tuple[str, ...] = ()
    if "pos_embed" in state:
        if not ignore_pos_embed:
            raise UsageError(
                f"{source}: {key} has a 'pos_embed' table {tuple(state['pos_embed'].shape)}: "
                "that encoder adds absolute positions (V-JEPA 1 style), while V-JEPA 2 runs 3D "
                "RoPE and has none; salt imports the RoPE encoders. If you know this encoder "
                "runs RoPE and the table is unused, pass --ignore-pos-embed"
            )
        skip = ("pos_embed",)
    enc_cfg = infer_config(state, source, num_heads)
    src = SourceState(state, source, skip)
    mapped = map_weights(src, enc_cfg["depth"])
    encoder = VideoViT(**enc_cfg)
    src.finish(encoder, mapped)
    dim = enc_cfg["embed_dim"]
    source_meta = {
        "format": FORMAT,
        "path": str(path.resolve()),
        "architecture": f"V-JEPA 2 VisionTransformer ({NAME_BY_WIDTH.get(dim, f'width {dim}')}, "
        f"{enc_cfg['num_heads']} heads{'' if num_heads is None else ', --num-heads'})",
        "key": key,
        "keys_in_file": dicts,
        "weights_sha256": {path.name: file_sha256(path)},
        "skipped": src.skipped(),
        "mean_std_from": "V-JEPA 2's evaluation transforms (ImageNet)",
        "nominal_size": "img_size/num_frames are V-JEPA 2 pretraining's 256² × 64 (the file "
        "does not record them; RoPE runs any clip size)",
        "conventions": {
            "rope_pairing": "tiled",
            "rope_axes": "head dim split t, h, w into 2·((head_dim // 3) // 2) channels each, "
            "remainder unrotated; base 10000",
            "positions": "3D RoPE from the clip's grid",
            "token_order": TOKEN_ORDER,
            "prefixes_removed": list(PREFIXES),
            "layer_norm_eps": 1e-6,
            "final_norm": True,
            "features": "VisionTransformer.forward output (after norm)",
        },
    }
    meta = imported_metadata(encoder, list(IMAGENET_MEAN), list(IMAGENET_STD), source_meta)
    return encoder.eval(), meta
