"""Pre-norm transformer block and the V-JEPA weight init shared by encoder and predictor.

Block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``; LayerNorm eps 1e-6, qkv bias, GELU MLP
(``timm.layers.Mlp``). Init (V-JEPA 2): every Linear/Conv weight trunc-normal(std 0.02), biases
zero, LayerNorm (1, 0); then the residual output projections of block i (1-based; ``attn.proj``
and ``mlp.fc2``) are divided by sqrt(2·i) so deep stacks start with small residual updates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.layers import Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention

NORM_EPS = 1e-6
INIT_STD = 0.02


class Block(nn.Module):
    """Pre-norm ViT block with RoPE-aware attention.

    Args:
        dim: token width D.
        num_heads: attention heads.
        mlp_hidden_dim: hidden width of the GELU MLP.
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = Mlp(dim, hidden_features=mlp_hidden_dim, act_layer=nn.GELU)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        backend: str = "sdpa",
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, backend)  # [B, N, D]
        return x + self.mlp(self.norm2(x))  # [B, N, D]


def run_block(
    block: Block,
    x: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    backend: str,
    act_checkpoint: bool,
) -> torch.Tensor:
    """Run one block, recomputing its activations in backward when ``act_checkpoint`` is on
    and gradients are being recorded (non-reentrant ``torch.utils.checkpoint``)."""
    if act_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, x, rope, backend, use_reentrant=False)
    return block(x, rope, backend)


def init_vjepa_(module: nn.Module, blocks: Sequence[Block]) -> None:
    """V-JEPA init in place: trunc-normal(0.02) weights, zero biases, unit LayerNorms, and the
    residual output projections of block i (1-based) scaled by 1/sqrt(2·i)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            trunc_normal_(m.weight, std=INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for i, block in enumerate(blocks, start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * i))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * i))
