"""3D rotary position embedding (RoPE) for video tokens, V-JEPA 2 style, with correct pairing.

Each attention head's dim is split into three equal *even* chunks for the t, h and w axes
(head dim 64 → 3×20 rotated + 4 left unrotated; 16 → 3×4 + 4). Within a chunk of size d, the
pair of channels (2i, 2i+1) is rotated by the angle ``pos · base^(-2i/d)`` — the *interleaved*
pairing of the RoPE paper. V-JEPA 2's released code tiles the frequencies instead
(``[ω0..ω_{d/2-1}, ω0..ω_{d/2-1}]``), which rotates the two channels of one pair at different
speeds and loses the relative-position property; ``ROPE_CONVENTION`` names ours so checkpoints
can record it.

Weights trained with the tiled tables (V-JEPA 2's torch-hub checkpoints and its ``transformers``
port ``VJEPA2Model``) only reproduce their features under the same tables, so
``rope_cos_sin(..., pairing="tiled")`` builds them: chunk channel c gets ``ω_{c mod d/2}``. The
rotation itself (``apply_rope``: channel pairs (2i, 2i+1)) is the same for both pairings; only
the per-channel tables differ. ``ROPE_CONVENTIONS`` names each pairing for checkpoint metadata.

Positions are integer token coordinates computed from the token *index* in T×H×W order
(``index = t·H'W' + h·W' + w``), never from the slot a token happens to occupy, so a gathered
subset keeps its true (t, h, w). cos/sin tables are computed once per forward and shared by
every block; unrotated tail channels get cos = 1, sin = 0 so the rotation is one fused
``x·cos + rot(x)·sin`` over the whole head dim.
"""

from __future__ import annotations

import torch

ROPE_CONVENTION = "interleaved-v1"  # salt's default pairing
ROPE_PAIRINGS = ("interleaved", "tiled")
ROPE_CONVENTIONS = {"interleaved": ROPE_CONVENTION, "tiled": "tiled-vjepa2-v1"}
DEFAULT_ROPE_BASE = 10000.0


def rope_convention(pairing: str) -> str:
    """The metadata name of a pairing (``"interleaved"`` → ``"interleaved-v1"``)."""
    if pairing not in ROPE_CONVENTIONS:
        raise ValueError(f"rope pairing must be one of {ROPE_PAIRINGS}, got {pairing!r}")
    return ROPE_CONVENTIONS[pairing]


def rope_axis_dim(head_dim: int) -> int:
    """Rotated channels per axis: the largest even d with 3·d ≤ head_dim."""
    d = (head_dim // 3) // 2 * 2
    if d < 2:
        raise ValueError(f"head_dim={head_dim} is too small for 3D RoPE (needs ≥ 6)")
    return d


def token_coords(indices: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Integer (t, h, w) of token indices in T×H×W order.

    Args:
        indices: ``[..., n]`` int64 token indices into the flattened grid.
        grid: ``(T', H', W')`` token grid.

    Returns:
        ``[..., n, 3]`` int64 coordinates.
    """
    _, gh, gw = grid
    t = torch.div(indices, gh * gw, rounding_mode="floor")
    h = torch.div(indices, gw, rounding_mode="floor") % gh
    w = indices % gw
    return torch.stack((t, h, w), dim=-1)


def rope_cos_sin(
    coords: torch.Tensor,
    head_dim: int,
    base: float = DEFAULT_ROPE_BASE,
    pairing: str = "interleaved",
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for 3D RoPE.

    Args:
        coords: ``[..., n, 3]`` integer (t, h, w) token coordinates.
        head_dim: attention head dim.
        base: frequency base (10000).
        pairing: ``"interleaved"`` (channels 2i, 2i+1 share ω_i: the RoPE paper) or ``"tiled"``
            (chunk channel c gets ω_{c mod d/2}: V-JEPA 2's released tables, for its weights).

    Returns:
        ``(cos, sin)``, each ``[..., n, head_dim]`` float32: the three rotated chunks, then
        cos = 1 / sin = 0 for the unrotated tail.
    """
    if pairing not in ROPE_PAIRINGS:
        raise ValueError(f"rope pairing must be one of {ROPE_PAIRINGS}, got {pairing!r}")
    d = rope_axis_dim(head_dim)
    exponent = torch.arange(0, d, 2, device=coords.device, dtype=torch.float32) / d
    omega = base**-exponent  # [d/2]
    angles = coords.to(torch.float32).unsqueeze(-1) * omega  # [..., n, 3, d/2]
    if pairing == "interleaved":
        angles = angles.repeat_interleave(2, dim=-1)  # [..., n, 3, d]: (2i, 2i+1) share ω_i
    else:
        angles = torch.cat((angles, angles), dim=-1)  # [..., n, 3, d]: [ω_0..ω_{d/2-1}] twice
    angles = angles.flatten(-2)  # [..., n, 3·d]
    cos, sin = angles.cos(), angles.sin()
    rest = head_dim - 3 * d
    if rest:
        pad_shape = (*angles.shape[:-1], rest)
        cos = torch.cat((cos, cos.new_ones(pad_shape)), dim=-1)
        sin = torch.cat((sin, sin.new_zeros(pad_shape)), dim=-1)
    return cos, sin  # [..., n, head_dim] each


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x_{2i}, x_{2i+1}) → (−x_{2i+1}, x_{2i}) over the last dim."""
    x = x.unflatten(-1, (-1, 2))  # [..., hd/2, 2]
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., hd]`` by tables broadcastable to it (computed in x's dtype)."""
    return x * cos.to(x.dtype) + rotate_pairs(x) * sin.to(x.dtype)
