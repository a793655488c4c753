"""A grid's probe heads as stacked parameters: G heads in one module, batched over the head axis.

V-JEPA 2 trains its 20 attentive classifiers as 20 modules, i.e. 20 sequential forward/backward
passes of small matmuls over the same frozen tokens. Here every weight of the G heads is one
tensor with a leading head axis `[G, ...]`:

- a linear layer is one `torch.baddbmm` over the head axis (one GEMM when its input is shared);
- attention is ONE `scaled_dot_product_attention` call over the G·B sequences;
- every LayerNorm is computed without its affine, and the affine is folded into the linear layer
  that follows it (`(x̂·w + b) Wᵀ + c = x̂ (W·diag w)ᵀ + (W b + c)`), so the encoder's tokens are
  normalised once for all heads and feed the first projection of every head as one GEMM, and no
  per-head `[G, B, N, D]` LayerNorm output is kept for backward.

The function is exactly that of G `heads.AttentiveProbe` / `heads.LinearProbe` modules:
`from_probes` stacks their weights (so initialisation is the per-head modules' own) and `to_probe`
rebuilds one head; a test checks stacked == per-head outputs and gradients. `heads` (a slice)
selects a chunk of heads, so a caller can run forward + backward chunk by chunk to bound memory;
`checkpoint=True` recomputes each block's activations in backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .heads import AttentiveProbe, LinearProbe

_EPS = 1e-6  # LayerNorm eps of heads.AttentiveProbe


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys cannot hold "."


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-head linear layer.

    Args:
        x: [g, M, I] per-head inputs, or [M, I] one input shared by every head.
        w: [g, O, I] weights. b: [g, O] biases.

    Returns:
        [g, M, O].
    """
    if x.dim() == 2:  # shared input: one GEMM [M, I] @ [I, g·O] (bias inside: bf16 under autocast)
        g, o, i = w.shape
        y = torch.addmm(b.reshape(g * o), x, w.reshape(g * o, i).t())  # [M, g·O]
        return y.view(x.shape[0], g, o).transpose(0, 1)
    return torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))


def norm_linear(
    x: torch.Tensor, ln_w: torch.Tensor, ln_b: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """`linear(LayerNorm(x) with per-head affine)`, the affine folded into the linear weights.

    Args:
        x: [g, M, I] or shared [M, I]. ln_w, ln_b: [g, I]. w: [g, O, I]. b: [g, O].

    Returns:
        [g, M, O].
    """
    xn = F.layer_norm(x, x.shape[-1:], eps=_EPS)  # affine folded below
    w_eff = w * ln_w[:, None, :]  # [g, O, I]
    with torch.autocast(w.device.type, enabled=False):  # the folded bias stays fp32
        b_eff = b + torch.bmm(w, ln_b[:, :, None]).squeeze(-1)  # [g, O]
    return linear(xn, w_eff, b_eff)


def _heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # q [g·B, h, Q, hd], k/v [g·B, h, N, hd] -> [g·B, h, Q, hd]: one SDPA call for every head
    return F.scaled_dot_product_attention(q, k, v)


def _self_block(
    x: torch.Tensor, p: dict[str, torch.Tensor], B: int, num_heads: int
) -> torch.Tensor:
    """Pre-norm self-attention block of g heads; x [g, B·N, D] or shared [B·N, D] -> [g, B·N, D]."""
    g, D = p["qkv_w"].shape[0], p["qkv_w"].shape[-1]
    M = x.shape[-2]
    N, h = M // B, num_heads
    qkv = norm_linear(x, p["n1_w"], p["n1_b"], p["qkv_w"], p["qkv_b"])  # [g, B·N, 3D]
    q, k, v = qkv.reshape(g * B, N, 3, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)
    o = _heads_attention(q, k, v)  # [g·B, h, N, D/h]
    o = o.transpose(1, 2).reshape(g, M, D)
    x = x + linear(o, p["proj_w"], p["proj_b"])  # [g, B·N, D] (a shared x broadcasts)
    hid = F.gelu(norm_linear(x, p["n2_w"], p["n2_b"], p["fc1_w"], p["fc1_b"]))  # [g, B·N, H]
    return x + linear(hid, p["fc2_w"], p["fc2_b"])


def _cross_block(
    x: torch.Tensor, query: torch.Tensor, p: dict[str, torch.Tensor], B: int, num_heads: int
) -> torch.Tensor:
    """Query-to-tokens block; x [g, B·N, D] or shared [B·N, D], query [g, 1, D] -> [g, B, D]."""
    g, D = p["q_w"].shape[0], p["q_w"].shape[-1]
    M = x.shape[-2]
    N, h = M // B, num_heads
    kv = norm_linear(x, p["n1_w"], p["n1_b"], p["kv_w"], p["kv_b"])  # [g, B·N, 2D]
    k, v = kv.reshape(g * B, N, 2, h, D // h).permute(2, 0, 3, 1, 4).unbind(0)  # [g·B, h, N, hd]
    qh = linear(query, p["q_w"], p["q_b"])  # [g, 1, D]: the query is a parameter, not normed
    qh = qh.reshape(g, 1, 1, h, D // h).expand(g, B, 1, h, D // h).reshape(g * B, 1, h, D // h)
    o = _heads_attention(qh.transpose(1, 2), k, v)  # [g·B, h, 1, D/h]
    o = o.transpose(1, 2).reshape(g, B, D)
    q = query + linear(o, p["proj_w"], p["proj_b"])  # [g, B, D]
    hid = F.gelu(norm_linear(q, p["n2_w"], p["n2_b"], p["fc1_w"], p["fc1_b"]))  # [g, B, H]
    return q + linear(hid, p["fc2_w"], p["fc2_b"])


# Per-head module names -> the stacked module's short names (blocks.{i}. / cross. prefixes kept).
_BLOCK = {
    "norm1.weight": "n1_w", "norm1.bias": "n1_b", "attn.qkv.weight": "qkv_w",
    "attn.qkv.bias": "qkv_b", "attn.proj.weight": "proj_w", "attn.proj.bias": "proj_b",
    "norm2.weight": "n2_w", "norm2.bias": "n2_b", "mlp.fc1.weight": "fc1_w",
    "mlp.fc1.bias": "fc1_b", "mlp.fc2.weight": "fc2_w", "mlp.fc2.bias": "fc2_b",
}  # fmt: skip
_CROSS = {
    "norm1.weight": "n1_w", "norm1.bias": "n1_b", "q.weight": "q_w", "q.bias": "q_b",
    "kv.weight": "kv_w", "kv.bias": "kv_b", "proj.weight": "proj_w", "proj.bias": "proj_b",
    "norm2.weight": "n2_w", "norm2.bias": "n2_b", "mlp.fc1.weight": "fc1_w",
    "mlp.fc1.bias": "fc1_b", "mlp.fc2.weight": "fc2_w", "mlp.fc2.bias": "fc2_b",
}  # fmt: skip


class StackedAttentive(nn.Module):
    """G attentive probes (`heads.AttentiveProbe`) with stacked weights.

    Build it with `from_probes`; parameters keep the per-head names (dots as `__`), each with a
    leading head axis, so `state_dict()[name][g]` is head g's tensor.

    Args:
        embed_dim: token width D.
        num_classes: classifier outputs.
        depth: blocks per head (depth-1 self-attention blocks + 1 cross-attention block).
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / D.
        params: {per-head parameter name: stacked tensor [G, ...]}.
        checkpoint: recompute each block's activations in backward (saves memory).
    """

    kind = "attentive"

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        params: dict[str, torch.Tensor],
        checkpoint: bool = False,
    ):
        super().__init__()
        self.embed_dim, self.num_classes, self.depth = embed_dim, num_classes, depth
        self.num_heads, self.mlp_ratio, self.checkpoint = num_heads, mlp_ratio, checkpoint
        self.p = nn.ParameterDict({_key(n): nn.Parameter(t) for n, t in params.items()})
        self.num_probes = int(params["query"].shape[0])

    @classmethod
    def from_probes(
        cls, probes: Sequence[AttentiveProbe], checkpoint: bool = False
    ) -> StackedAttentive:
        """Stack the weights of per-head modules (all of the same shape)."""
        first = probes[0]
        states = [p.state_dict() for p in probes]
        params = {n: torch.stack([s[n].detach() for s in states]) for n in states[0]}
        mlp_ratio = first.cross.mlp.fc1.out_features / first.embed_dim
        return cls(first.embed_dim, first.num_classes, first.depth, first.num_heads, mlp_ratio,
                   params, checkpoint)  # fmt: skip

    def config(self) -> dict:
        return {"embed_dim": self.embed_dim, "num_classes": self.num_classes, "depth": self.depth,
                "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio}  # fmt: skip

    def to_probe(self, g: int) -> AttentiveProbe:
        """Head g as a standalone `AttentiveProbe` (a copy of its weights)."""
        probe = AttentiveProbe(
            self.embed_dim, self.num_classes, self.depth, self.num_heads, self.mlp_ratio
        )
        probe.load_state_dict({n: t[g].detach().clone() for n, t in self.named_stacked().items()})
        return probe.to(self.p["query"].device)

    def named_stacked(self) -> dict[str, torch.Tensor]:
        """{per-head parameter name: stacked parameter [G, ...]}."""
        return {k.replace("__", "."): v for k, v in self.p.items()}

    def decays(self) -> dict[str, bool]:
        """Weight decay on matrices only: not on biases, LayerNorms or the query token."""
        return {k: v.dim() >= 3 and k != "query" for k, v in self.p.items()}

    def select(self, idx: torch.Tensor) -> StackedAttentive:
        """A new module holding heads `idx` (in that order)."""
        params = {n: t.detach()[idx.to(t.device)].clone() for n, t in self.named_stacked().items()}
        return type(self)(**self.config(), params=params, checkpoint=self.checkpoint)

    def _group(self, prefix: str, names: dict[str, str], sl: slice) -> dict[str, torch.Tensor]:
        return {short: self.p[_key(prefix + long)][sl] for long, short in names.items()}

    def forward(self, x: torch.Tensor, heads: slice | None = None) -> torch.Tensor:
        """Logits of heads `heads` (default all) for tokens shared by every head.

        Args:
            x: [B, N, D] frozen tokens.
            heads: a slice of the head axis.

        Returns:
            [g, B, num_classes] logits.
        """
        sl = heads or slice(None)
        B, N, D = x.shape
        h: torch.Tensor = x.reshape(B * N, D)  # shared by all heads until the first residual
        for i in range(self.depth - 1):
            p = self._group(f"blocks.{i}.", _BLOCK, sl)
            if self.checkpoint and torch.is_grad_enabled():
                h = _checkpoint(_self_block, h, p, B, self.num_heads, use_reentrant=False)
            else:
                h = _self_block(h, p, B, self.num_heads)
        p = self._group("cross.", _CROSS, sl)
        query = self.p["query"][sl].flatten(1, 2)  # [g, 1, 1, D] -> [g, 1, D]
        if self.checkpoint and torch.is_grad_enabled():
            q = _checkpoint(_cross_block, h, query, p, B, self.num_heads, use_reentrant=False)
        else:
            q = _cross_block(h, query, p, B, self.num_heads)  # [g, B, D]
        return norm_linear(q, self.p["norm__weight"][sl], self.p["norm__bias"][sl],
                           self.p["linear__weight"][sl], self.p["linear__bias"][sl])  # fmt: skip


class StackedLinear(nn.Module):
    """G linear probes (`heads.LinearProbe`) on mean-pooled tokens, as one GEMM.

    Args:
        weight: [G, C, D]. bias: [G, C].
    """

    kind = "linear"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.p = nn.ParameterDict(
            {"linear__weight": nn.Parameter(weight), "linear__bias": nn.Parameter(bias)}
        )
        self.num_probes = int(weight.shape[0])
        self.num_classes, self.embed_dim = int(weight.shape[1]), int(weight.shape[2])

    @classmethod
    def from_probes(cls, probes: Sequence[LinearProbe], checkpoint: bool = False) -> StackedLinear:
        w = torch.stack([p.linear.weight.detach() for p in probes])
        return cls(w, torch.stack([p.linear.bias.detach() for p in probes]))

    def to_probe(self, g: int) -> LinearProbe:
        probe = LinearProbe(self.embed_dim, self.num_classes)
        probe.linear.weight.data.copy_(self.p["linear__weight"][g].detach())
        probe.linear.bias.data.copy_(self.p["linear__bias"][g].detach())
        return probe.to(self.p["linear__weight"].device)

    def named_stacked(self) -> dict[str, torch.Tensor]:
        return {k.replace("__", "."): v for k, v in self.p.items()}

    def decays(self) -> dict[str, bool]:
        return {"linear__weight": True, "linear__bias": False}

    def select(self, idx: torch.Tensor) -> StackedLinear:
        w, b = (self.p[k].detach()[idx.to(self.p[k].device)].clone() for k in self.decays())
        return type(self)(w, b)

    def forward(self, x: torch.Tensor, heads: slice | None = None) -> torch.Tensor:
        """x [B, N, D] tokens or [B, D] already pooled -> [g, B, C] logits."""
        sl = heads or slice(None)
        pooled = x.mean(dim=1) if x.dim() == 3 else x  # [B, D]
        return linear(pooled, self.p["linear__weight"][sl], self.p["linear__bias"][sl])
