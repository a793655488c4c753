"""Stage-1 pixel decoder and the pixel-target helpers (docs/method.md, stage 1).

``PixelDecoder`` is the JEPA ``Predictor`` with ``out_dim = tubelet·patch²·in_chans`` (1536 for
2×16×16×3): it predicts the raw pixels of every masked tubelet. ``patchify_pixels`` cuts a clip
into those tubelets in the encoder's T×H×W token order (values inside a tubelet ordered
(frame, row, column, channel)), and ``norm_pix`` normalises each tubelet by its own mean/std —
the "norm-pix" target.
"""

from __future__ import annotations

import torch

from .predictor import Predictor


class PixelDecoder(Predictor):
    """Predictor whose outputs are the pixels of each target tubelet.

    Args:
        in_dim: encoder width D.
        patch_size: spatial patch size of the encoder (16).
        tubelet_size: frames per tubelet (2).
        in_chans: image channels (3).
        embed_dim, depth, num_heads, mlp_hidden_dim, num_mask_tokens, pos_embed, attn_backend,
            act_checkpoint: as in ``Predictor``.
    """

    def __init__(
        self,
        in_dim: int,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_hidden_dim: int = 1536,
        num_mask_tokens: int = 2,
        pos_embed: str = "rope",
        attn_backend: str = "sdpa",
        act_checkpoint: bool = False,
    ) -> None:
        super().__init__(
            in_dim=in_dim,
            out_dim=tubelet_size * patch_size * patch_size * in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_hidden_dim=mlp_hidden_dim,
            num_mask_tokens=num_mask_tokens,
            pos_embed=pos_embed,
            attn_backend=attn_backend,
            act_checkpoint=act_checkpoint,
        )
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.in_chans = in_chans
        config = {k: v for k, v in self.config.items() if k != "out_dim"}
        self.config = {
            **config,
            "patch_size": patch_size,
            "tubelet_size": tubelet_size,
            "in_chans": in_chans,
        }


def patchify_pixels(video: torch.Tensor, patch: int = 16, tubelet: int = 2) -> torch.Tensor:
    """Cut a clip into tubelet pixel vectors in T×H×W token order.

    Args:
        video: ``[B, C, T, H, W]``.
        patch: spatial patch size.
        tubelet: frames per tubelet.

    Returns:
        ``[B, N, tubelet·patch²·C]`` with N = T/tubelet · H/patch · W/patch.
    """
    B, C, T, H, W = video.shape
    if T % tubelet or H % patch or W % patch:
        raise ValueError(f"clip {T}×{H}×{W} not divisible by tubelet {tubelet} × patch {patch}")
    t, h, w = T // tubelet, H // patch, W // patch
    x = video.reshape(B, C, t, tubelet, h, patch, w, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # [B, t, h, w, tubelet, p, p, C]
    return x.reshape(B, t * h * w, tubelet * patch * patch * C)


def unpatchify_pixels(
    patches: torch.Tensor, grid: tuple[int, int, int], patch: int = 16, tubelet: int = 2
) -> torch.Tensor:
    """Inverse of ``patchify_pixels``: ``[B, N, tubelet·p²·C]`` → ``[B, C, T, H, W]``."""
    B, N, P = patches.shape
    t, h, w = grid
    if t * h * w != N or P % (tubelet * patch * patch):
        raise ValueError(f"patches {tuple(patches.shape)} do not match grid {grid}")
    C = P // (tubelet * patch * patch)
    x = patches.reshape(B, t, h, w, tubelet, patch, patch, C)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, t, tubelet, h, p, w, p]
    return x.reshape(B, C, t * tubelet, h * patch, w * patch)


def norm_pix(targets: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-tubelet normalisation ``(x − mean) / (std + eps)`` over the last dim (population std),
    computed in float32."""
    x = targets.float()
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)
