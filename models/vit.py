"""VideoViT: the video Vision Transformer encoder used as SALT teacher and student.

Tubelet patch embedding (Conv3d weights, tubelet 2 × 16 × 16 by default, run as one matmul) →
tokens ``[B, N, D]`` in T×H×W order (``index = t·H'W' + h·W' + w``) → pre-norm blocks with 3D
RoPE (or a fixed sin-cos table added once) → final LayerNorm. No CLS token.

Context-only encoding: ``forward_features(x, token_indices)`` embeds every tubelet (one matmul
over the clip, cheap next to the blocks), then keeps ``token_indices [B, n]`` with one batched
``torch.gather``. Positions come from the indices, so each kept token keeps its true (t, h, w).
The forward has no host syncs (no ``.item()``, no data-dependent shapes, no sorting); index
*values* are not validated for that reason — out-of-range indices fail inside ``gather``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .attention import BACKENDS, compute_dtype, select_backend
from .block import Block, init_vjepa_, run_block
from .pos_embed import sincos_embed_3d
from .rope import rope_cos_sin, token_coords

POS_EMBEDS = ("rope", "sincos")


def embed_tubelets(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """``conv(x).flatten(2).transpose(1, 2)`` for a Conv3d whose stride equals its kernel, computed
    as one matmul: ``x [B, C, T, H, W]`` → ``[B, N, D]`` in T×H×W order, same weights.

    Why: for this conv in bf16, cuDNN picked a non-tensor-core kernel (``implicit_convolveNd_sgemm``,
    4.5 ms per ViT-L batch of 24 clips on an H100, ~18 ms per student step with backward) where
    the equivalent matmul is 118 GFLOP (≈ 0.2 ms). Under autocast the clip is cast first, so the
    unfold copy moves half the bytes.
    """
    B, C, T, H, W = x.shape
    t, p, q = conv.kernel_size
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    patches = x.reshape(B, C, T // t, t, H // p, p, W // q, q)
    patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7)  # [B, T', H', W', C, t, p, q]
    patches = patches.reshape(B, (T // t) * (H // p) * (W // q), C * t * p * q)  # [B, N, C·t·p·q]
    weight = conv.weight.reshape(conv.out_channels, -1)  # [D, C·t·p·q], Conv3d's own layout
    return nn.functional.linear(patches, weight, conv.bias)  # [B, N, D]


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``x [B, N, D]``, ``indices [B, n]`` int64 → ``[B, n, D]`` (one batched gather)."""
    if indices.dtype != torch.int64 or indices.dim() != 2 or indices.shape[0] != x.shape[0]:
        raise ValueError(
            f"token indices must be int64 [B={x.shape[0]}, n], got {indices.dtype} "
            f"{tuple(indices.shape)}"
        )
    return torch.gather(x, 1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class VideoViT(nn.Module):
    """Video ViT encoder (3D tubelet patches, pre-norm blocks, 3D RoPE by default).

    Args:
        img_size: nominal frame size (int or ``(H, W)``); inputs may be any size divisible by
            ``patch_size``. Kept for the config and for consumers that need a default grid.
        num_frames: nominal frame count; inputs may have any count divisible by ``tubelet_size``.
        patch_size: spatial patch size (16).
        tubelet_size: frames per tubelet (2).
        in_chans: input channels (3).
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads (head dim = D / heads).
        mlp_hidden_dim: MLP hidden width.
        pos_embed: ``"rope"`` (3D RoPE in every block) or ``"sincos"`` (fixed table added once).
        attn_backend: ``"sdpa"``, ``"flex"``, ``"xformers"`` or ``"auto"`` (see ``models.attention``).
        act_checkpoint: recompute block activations in backward to save memory.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_hidden_dim: int = 4096,
        pos_embed: str = "rope",
        attn_backend: str = "sdpa",
        act_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        if attn_backend not in BACKENDS:
            raise ValueError(f"attn_backend must be one of {BACKENDS}, got {attn_backend!r}")
        img_size = [img_size, img_size] if isinstance(img_size, int) else list(img_size)
        self.config = {
            "img_size": img_size,
            "num_frames": num_frames,
            "patch_size": patch_size,
            "tubelet_size": tubelet_size,
            "in_chans": in_chans,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_hidden_dim": mlp_hidden_dim,
            "pos_embed": pos_embed,
            "attn_backend": attn_backend,
            "act_checkpoint": act_checkpoint,
        }
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.pos_embed = pos_embed
        self.attn_backend = attn_backend
        self.act_checkpoint = act_checkpoint
        self.attn_backend_used = "none"  # set by every forward: "sdpa" or "xformers"

        self.patch_embed = nn.Conv3d(
            in_chans,
            embed_dim,
            kernel_size=(tubelet_size, patch_size, patch_size),
            stride=(tubelet_size, patch_size, patch_size),
        )
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_hidden_dim) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        init_vjepa_(self, self.blocks)

    def grid(self, x_or_shape: torch.Tensor | Sequence[int]) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')`` of a clip ``[B, C, T, H, W]``, its shape, or ``(T, H, W)``."""
        shape = tuple(x_or_shape.shape if isinstance(x_or_shape, torch.Tensor) else x_or_shape)
        if len(shape) not in (3, 5):
            raise ValueError(f"expected [B, C, T, H, W] or (T, H, W), got shape {shape}")
        t, h, w = shape[-3:]
        if t % self.tubelet_size or h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"clip T×H×W = {t}×{h}×{w} is not divisible by tubelet {self.tubelet_size} "
                f"× patch {self.patch_size}×{self.patch_size}"
            )
        return t // self.tubelet_size, h // self.patch_size, w // self.patch_size

    def _prepare(
        self, x: torch.Tensor, token_indices: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, str]:
        """Embed, add/compute positions and keep the requested tokens.

        Returns tokens ``[B, n, D]``, RoPE ``(cos, sin)`` each ``[B or 1, n, hd]`` (or None),
        and the resolved attention backend.
        """
        if x.dim() != 5:
            raise ValueError(f"expected a clip [B, C, T, H, W], got shape {tuple(x.shape)}")
        grid = self.grid(x)
        tokens = embed_tubelets(x, self.patch_embed)  # [B, N, D], T×H×W order
        if self.pos_embed == "sincos":
            table = sincos_embed_3d(grid, self.embed_dim, device=x.device)  # [N, D]
            tokens = tokens + table.to(tokens.dtype)
        if token_indices is not None:
            tokens = gather_tokens(tokens, token_indices)  # [B, n, D]
        rope = None
        if self.pos_embed == "rope":
            if token_indices is None:
                n = grid[0] * grid[1] * grid[2]
                token_indices = torch.arange(n, device=x.device).unsqueeze(0)  # [1, N]
            coords = token_coords(token_indices, grid)  # [B|1, n, 3]
            cos, sin = rope_cos_sin(coords, self.head_dim)  # [B|1, n, hd] each, float32
            dtype = compute_dtype(tokens)  # cast once here, not in every block
            rope = (cos.to(dtype), sin.to(dtype))
        backend = select_backend(self.attn_backend, x.device, tokens.dtype, self.head_dim)
        self.attn_backend_used = backend
        return tokens, rope, backend

    def forward_features(
        self, x: torch.Tensor, token_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode a clip.

        Args:
            x: ``[B, C, T, H, W]`` float clip.
            token_indices: ``[B, n]`` int64 indices (T×H×W order) of the tokens to encode, e.g.
                the context of a mask; None encodes all N tokens.

        Returns:
            ``[B, n or N, D]`` final-normed tokens, in the order of ``token_indices``.
        """
        tokens, rope, backend = self._prepare(x, token_indices)
        for block in self.blocks:
            tokens = run_block(block, tokens, rope, backend, self.act_checkpoint)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor, token_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Same as ``forward_features``."""
        return self.forward_features(x, token_indices)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        layers: Sequence[int],
        token_indices: torch.Tensor | None = None,
        norm: bool = False,
    ) -> list[torch.Tensor]:
        """Outputs of selected blocks (0-based; negative counts from the end).

        Args:
            x: ``[B, C, T, H, W]`` clip.
            layers: block indices whose outputs to return, in this order.
            token_indices: optional ``[B, n]`` token subset, as in ``forward_features``.
            norm: apply the final LayerNorm to each returned output.

        Returns:
            one ``[B, n or N, D]`` tensor per entry of ``layers``. Blocks after the last
            requested one are not run.
        """
        depth = len(self.blocks)
        wanted = [i + depth if i < 0 else i for i in layers]
        if not wanted or any(not 0 <= i < depth for i in wanted):
            raise ValueError(
                f"layers must be non-empty indices in [-{depth}, {depth}), got {layers}"
            )
        tokens, rope, backend = self._prepare(x, token_indices)
        outputs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            tokens = run_block(block, tokens, rope, backend, self.act_checkpoint)
            if i in wanted:
                outputs[i] = self.norm(tokens) if norm else tokens
        return [outputs[i] for i in wanted]
