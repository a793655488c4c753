"""Source models for the interop tests: small random-weight ``transformers`` V-JEPA 2 and VideoMAE
models saved with ``save_pretrained``, and V-JEPA 2 torch-hub checkpoints in its published key
layout (``module.backbone.`` + ``patch_embed.proj`` / ``blocks.N.attn.qkv`` / ``norm``), built from
a ``transformers`` model by key names. Nothing is downloaded.

Sizes: 32² frames, 8-pixel patches, 8 frames, tubelet 2 (grid 4×4×4, 64 tokens). V-JEPA 2 is 96
wide with 4 heads by default (head dim 24: three RoPE chunks of 8, nothing left); tests also use 80
(head dim 20: 3×6 rotated + 2 unrotated), so both RoPE layouts are covered. VideoMAE is 80 wide.
Both are wider than ``vit_test`` (64), so a teacher's width differs from the student's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SIZE, PATCH, FRAMES = 32, 8, 8


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours − ref| / max |ref| (the features' scale)."""
    ours, ref = ours.detach(), ref.detach()
    return float((ours - ref).abs().max() / ref.abs().max())


def clip(b: int = 2, t: int = FRAMES, h: int = SIZE, w: int = SIZE, seed: int = 0) -> torch.Tensor:
    """A float clip ``[B, C, T, H, W]`` (salt's layout)."""
    return torch.randn(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed))


def vjepa2_config(**overrides: Any):
    from transformers import VJEPA2Config

    kwargs = dict(
        patch_size=PATCH, crop_size=SIZE, frames_per_clip=FRAMES, tubelet_size=2, hidden_size=96,
        num_attention_heads=4, num_hidden_layers=2, mlp_ratio=2.0, pred_hidden_size=32,
        pred_num_attention_heads=2, pred_num_hidden_layers=1, num_pooler_layers=1,
        attn_implementation="eager",
    )  # fmt: skip
    return VJEPA2Config(**{**kwargs, **overrides})


def vjepa2_model(seed: int = 0, cls: str = "VJEPA2Model", **overrides: Any):
    """A random-weight V-JEPA 2 model in eval mode (biases randomised too, so a dropped or
    misplaced bias shows)."""
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls)(vjepa2_config(**overrides)).eval()
    randomize_(model)
    return model


def videomae_config(**overrides: Any):
    from transformers import VideoMAEConfig

    kwargs = dict(
        image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=2, hidden_size=80,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=160,
        decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=64, attn_implementation="eager",
    )  # fmt: skip
    return VideoMAEConfig(**{**kwargs, **overrides})


def videomae_model(seed: int = 0, cls: str = "VideoMAEModel", **overrides: Any):
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls)(videomae_config(**overrides)).eval()
    randomize_(model)
    return model


def randomize_(model: torch.nn.Module) -> None:
    """Non-trivial LayerNorm and bias values (inits are ones / zeros, which hide mistakes), and
    q/k weights 8× the init so attention is far from uniform and positions change features."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            if name.endswith(("query.weight", "key.weight")):
                p.mul_(8.0)


def save(model: Any, folder: Path) -> Path:
    model.save_pretrained(str(folder))
    return folder


@torch.no_grad()
def vjepa2_tokens(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``transformers`` V-JEPA 2 encoder output and per-block outputs for a salt-layout clip."""
    model = getattr(model, "vjepa2", model)
    out = model(
        pixel_values_videos=x.permute(0, 2, 1, 3, 4), skip_predictor=True, output_hidden_states=True
    )
    return out.last_hidden_state, list(out.hidden_states[1:])


@torch.no_grad()
def videomae_tokens(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model = getattr(model, "videomae", model)
    out = model(pixel_values=x.permute(0, 2, 1, 3, 4), output_hidden_states=True)
    return out.last_hidden_state, list(out.hidden_states[1:])


def hub_state(model: Any, prefix: str = "module.backbone.") -> dict[str, torch.Tensor]:
    """A ``transformers`` V-JEPA 2 encoder's weights in the torch-hub checkpoint layout (the key
    names of V-JEPA 2's ``vision_transformer.py``; q, k, v fused into ``attn.qkv`` rows)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {
        "patch_embed.proj.weight": sd["encoder.embeddings.patch_embeddings.proj.weight"],
        "patch_embed.proj.bias": sd["encoder.embeddings.patch_embeddings.proj.bias"],
        "norm.weight": sd["encoder.layernorm.weight"],
        "norm.bias": sd["encoder.layernorm.bias"],
    }
    for i in range(model.config.num_hidden_layers):
        a, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            for p in ("weight", "bias"):
                out[f"{b}{name}.{p}"] = sd[f"{a}{name}.{p}"]
        for p in ("weight", "bias"):
            out[f"{b}attn.qkv.{p}"] = torch.cat(
                [sd[f"{a}attention.{n}.{p}"] for n in ("query", "key", "value")]
            )
            out[f"{b}attn.proj.{p}"] = sd[f"{a}attention.proj.{p}"]
    return {prefix + k: v for k, v in out.items()}


def hub_checkpoint(path: Path, target: Any, online: Any, **extra: Any) -> Path:
    """A V-JEPA 2 pretraining-style checkpoint: ``encoder`` (online) and ``target_encoder``
    (EMA) state dicts with the DDP/backbone prefixes, a predictor and bookkeeping entries."""
    ckpt = {
        "encoder": hub_state(online),
        "target_encoder": hub_state(target),
        "predictor": {"module.backbone.predictor_embed.weight": torch.randn(4, 4)},
        "epoch": 3,
        "loss": 0.5,
        **extra,
    }
    torch.save(ckpt, path)
    return path
