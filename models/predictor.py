"""JEPA predictor: from context tokens to predictions at target positions (docs/method.md, stage 2).

``in_dim`` (student width) → linear → ``embed_dim`` (384); append one learnable mask token per
target position (zero-init, one token per mask config, chosen by ``mask_id``); 12 pre-norm
blocks × 384 wide, 12 heads, over ``[context; targets]`` with positions from their indices
(3D RoPE in every block, or the fixed sin-cos table added once); final LayerNorm; linear out to
``out_dim`` = the **teacher** width, which may differ from the student's. Only the target rows
are returned. Batched throughout: one concat, no sorting, no per-sample loops.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import BACKENDS, compute_dtype, select_backend
from .block import Block, init_vjepa_, run_block
from .pos_embed import sincos_embed_3d
from .rope import rope_cos_sin, token_coords


class Predictor(nn.Module):
    """Narrow transformer that predicts target-token features from context tokens.

    Args:
        in_dim: width of the incoming context tokens (the student encoder's D).
        out_dim: width of the predictions (the teacher's D, or pixels per tubelet).
        embed_dim: predictor width (384).
        depth: predictor blocks (12).
        num_heads: predictor heads (12, head dim 32).
        mlp_hidden_dim: predictor MLP hidden width (1536).
        num_mask_tokens: learnable mask tokens, one per mask config (2).
        pos_embed: ``"rope"`` or ``"sincos"``.
        attn_backend: ``"sdpa"``, ``"flex"``, ``"xformers"`` or ``"auto"``.
        act_checkpoint: recompute block activations in backward.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_hidden_dim: int = 1536,
        num_mask_tokens: int = 2,
        pos_embed: str = "rope",
        attn_backend: str = "sdpa",
        act_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if pos_embed not in ("rope", "sincos"):
            raise ValueError(f"pos_embed must be 'rope' or 'sincos', got {pos_embed!r}")
        if attn_backend not in BACKENDS:
            raise ValueError(f"attn_backend must be one of {BACKENDS}, got {attn_backend!r}")
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens must be ≥ 1, got {num_mask_tokens}")
        self.config = {
            "in_dim": in_dim,
            "out_dim": out_dim,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_hidden_dim": mlp_hidden_dim,
            "num_mask_tokens": num_mask_tokens,
            "pos_embed": pos_embed,
            "attn_backend": attn_backend,
            "act_checkpoint": act_checkpoint,
        }
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.pos_embed = pos_embed
        self.attn_backend = attn_backend
        self.act_checkpoint = act_checkpoint
        self.attn_backend_used = "none"

        self.embed = nn.Linear(in_dim, embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_hidden_dim) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Linear(embed_dim, out_dim)
        init_vjepa_(self, self.blocks)
        # Zero-init after init_vjepa_ (which touches only Linear/Conv/LayerNorm anyway).
        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, embed_dim))

    def forward(
        self,
        ctx_tokens: torch.Tensor,
        ctx_idx: torch.Tensor,
        tgt_idx: torch.Tensor,
        grid: tuple[int, int, int],
        mask_id: int = 0,
    ) -> torch.Tensor:
        """Predict the target tokens of one mask config.

        Args:
            ctx_tokens: ``[B, Nc, in_dim]`` encoder output for the context tokens.
            ctx_idx: ``[B, Nc]`` int64 indices (T×H×W order) of those context tokens.
            tgt_idx: ``[B, Nt]`` int64 indices of the tokens to predict.
            grid: ``(T', H', W')`` token grid of the clip.
            mask_id: which mask token to use (the mask config's position in the batch list).

        Returns:
            ``[B, Nt, out_dim]`` predictions, in the order of ``tgt_idx``.
        """
        if not 0 <= mask_id < self.mask_tokens.shape[0]:
            raise ValueError(f"mask_id={mask_id} outside [0, {self.mask_tokens.shape[0]})")
        B, Nc, _ = ctx_tokens.shape
        for name, idx in (("ctx_idx", ctx_idx), ("tgt_idx", tgt_idx)):
            if idx.dtype != torch.int64 or idx.dim() != 2 or idx.shape[0] != B:
                raise ValueError(
                    f"{name} must be int64 [B={B}, n], got {idx.dtype} {tuple(idx.shape)}"
                )
        if ctx_idx.shape[1] != Nc:
            raise ValueError(f"ctx_idx has {ctx_idx.shape[1]} tokens, ctx_tokens has {Nc}")
        grid = (int(grid[0]), int(grid[1]), int(grid[2]))

        ctx = self.embed(ctx_tokens)  # [B, Nc, E]
        tgt = self.mask_tokens[mask_id].to(ctx.dtype).expand(B, tgt_idx.shape[1], -1)  # [B, Nt, E]
        x = torch.cat((ctx, tgt), dim=1)  # [B, Nc+Nt, E]
        idx = torch.cat((ctx_idx, tgt_idx), dim=1)  # [B, Nc+Nt]
        rope = None
        if self.pos_embed == "sincos":
            table = sincos_embed_3d(grid, self.embed_dim, device=x.device)  # [N, E]
            x = x + table.to(x.dtype)[idx]  # [B, Nc+Nt, E]
        else:
            cos, sin = rope_cos_sin(token_coords(idx, grid), self.head_dim)  # [B, Nc+Nt, hd]
            dtype = compute_dtype(x)
            rope = (cos.to(dtype), sin.to(dtype))
        backend = select_backend(self.attn_backend, x.device, x.dtype, self.head_dim)
        self.attn_backend_used = backend
        for block in self.blocks:
            x = run_block(block, x, rope, backend, self.act_checkpoint)
        x = self.norm(x[:, Nc:])  # [B, Nt, E]: only target rows are predicted
        return self.proj(x)  # [B, Nt, out_dim]
