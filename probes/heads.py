"""Probe heads trained on frozen encoder tokens: the V-JEPA 2 attentive probe and a linear probe.

`AttentiveProbe(depth=4)` is V-JEPA 2's classifier: 3 self-attention blocks over the frozen
tokens, then one cross-attention block whose single learnable query attends to them, then a
linear layer. `depth=1` is V-JEPA 1's probe (the cross-attention block only). `LinearProbe` is the
cheap baseline: mean-pool the tokens, one linear layer.

The self-attention blocks are timm's pre-norm `Block`; only the query-to-tokens block is written
here because timm's `AttentionPoolLatent` has no residual path around its attention.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

_LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class CrossAttentionBlock(nn.Module):
    """Pre-norm block in which a few query tokens attend to a token sequence.

    `q = q + attn(q, norm1(x)); q = q + mlp(norm2(q))` — the keys/values are normalised, the query
    is not (it is a learned parameter, not a feature).

    Args:
        dim: token width (the encoder's embed_dim).
        num_heads: attention heads; must divide `dim`.
        mlp_ratio: MLP hidden width as a multiple of `dim`.
        qkv_bias: bias on the q/kv projections.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the token width {dim}")
        self.num_heads = num_heads
        self.norm1 = _LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = _LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # q [B, Q, D], x [B, N, D] -> [B, Q, D]
        B, Q, D = q.shape
        h = self.num_heads
        xn = self.norm1(x)
        qh = self.q(q).reshape(B, Q, h, D // h).transpose(1, 2)  # [B, h, Q, D/h]
        k, v = self.kv(xn).reshape(B, -1, 2, h, D // h).permute(2, 0, 3, 1, 4)  # 2 × [B, h, N, D/h]
        y = F.scaled_dot_product_attention(qh, k, v)  # [B, h, Q, D/h]
        q = q + self.proj(y.transpose(1, 2).reshape(B, Q, D))
        return q + self.mlp(self.norm2(q))


class AttentiveProbe(nn.Module):
    """Attentive probe: (depth-1) self-attention blocks + 1 cross-attention block + linear.

    Args:
        embed_dim: width of the frozen tokens.
        num_classes: classifier outputs.
        depth: total blocks; 4 is V-JEPA 2's probe, 1 is V-JEPA 1's.
        num_heads: attention heads in every block (16 in V-JEPA 2; must divide `embed_dim`).
        mlp_ratio: MLP hidden width as a multiple of `embed_dim`.
        init_std: std of the truncated-normal init of linear weights and the query token.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_std: float = 0.02,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"attentive probe depth must be >= 1, got {depth}")
        if embed_dim % num_heads:
            raise ValueError(f"probe num_heads={num_heads} must divide the token width {embed_dim}")
        self.init_std = init_std
        self.embed_dim, self.num_classes, self.depth = embed_dim, num_classes, depth
        self.num_heads, self.mlp_ratio = num_heads, mlp_ratio
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=_LayerNorm)
            for _ in range(depth - 1)
        )
        self.query = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cross = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio)
        self.norm = _LayerNorm(embed_dim)
        self.linear = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=self.init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.query, std=self.init_std)
        # Residual output projections of block i scaled by 1/sqrt(2·i), as in the encoder.
        for i, blk in enumerate([*self.blocks, self.cross], start=1):
            proj = blk.attn.proj if isinstance(blk, Block) else blk.proj
            proj.weight.data.div_(math.sqrt(2.0 * i))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * i))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [B, N, D] frozen tokens -> logits [B, num_classes]
        for blk in self.blocks:
            x = blk(x)
        q = self.cross(self.query.expand(x.shape[0], -1, -1), x)  # [B, 1, D]
        return self.linear(self.norm(q[:, 0]))


class LinearProbe(nn.Module):
    """Linear classifier on mean-pooled tokens.

    Args:
        embed_dim: width of the frozen tokens.
        num_classes: classifier outputs.
    """

    pooled_input = True  # the sweep may pass pre-pooled [B, D] features, shared across heads

    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [B, N, D] tokens or [B, D] already pooled -> logits [B, num_classes]
        if x.dim() == 3:
            x = x.mean(dim=1)
        return self.linear(x)


def build_head(
    kind: str,
    embed_dim: int,
    num_classes: int,
    *,
    depth: int = 4,
    num_heads: int = 16,
    mlp_ratio: float = 4.0,
) -> nn.Module:
    """Build a probe head by kind: "attentive" or "linear"."""
    if kind == "attentive":
        return AttentiveProbe(embed_dim, num_classes, depth, num_heads, mlp_ratio)
    if kind == "linear":
        return LinearProbe(embed_dim, num_classes)
    raise ValueError(f"unknown probe head kind {kind!r}; expected 'attentive' or 'linear'")
