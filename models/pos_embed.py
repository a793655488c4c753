"""Fixed sin-cos absolute position embeddings (the options to RoPE).

``sincos_embed_3d`` (``pos_embed="sincos"``, V-JEPA 1 style): the channel dim is split like
RoPE's head dim: three equal even chunks for t, h, w and a zero tail. A chunk of size d holds
``[sin(p·ω_i), cos(p·ω_i)]`` with ``ω_i = 10000^(-2i/d)``. The table is computed for the grid of
the clip at hand, so any frame count and non-square frames work without interpolation; a
gathered token subset carries the row of its true index.

``sincos_embed_1d`` (``pos_embed="sincos_1d"``, VideoMAE's table): one sinusoid over the
*flattened* token index n (T×H×W order) of the model's nominal grid, channels interleaved:
``[n, 2i] = sin(n·ω_i)``, ``[n, 2i+1] = cos(n·ω_i)``, ``ω_i = 10000^(-2i/D)``. Built in float64
and rounded once to float32 (as VideoMAE builds it): indices reach T'·H'·W' (1568 for 16×224²),
where float32 angles would already be off by ~1e-4. Because it encodes the flattened index, a
row only means (t, h, w) for the grid it was built for; ``VideoViT`` therefore accepts clips
of that grid or fewer frames (the first rows), nothing else.
"""

from __future__ import annotations

import torch

from .rope import token_coords


def sincos_embed_3d(
    grid: tuple[int, int, int],
    dim: int,
    device: torch.device | None = None,
    base: float = 10000.0,
) -> torch.Tensor:
    """Sin-cos table of every token of a grid, in T×H×W order.

    Args:
        grid: ``(T', H', W')`` token grid.
        dim: embedding width.
        device: where to build the table.
        base: frequency base.

    Returns:
        ``[T'·H'·W', dim]`` float32.
    """
    d = (dim // 3) // 2 * 2
    if d < 2:
        raise ValueError(f"dim={dim} is too small for a 3D sin-cos embedding (needs ≥ 6)")
    n = grid[0] * grid[1] * grid[2]
    coords = token_coords(torch.arange(n, device=device), grid).to(torch.float32)  # [N, 3]
    omega = base ** -(torch.arange(d // 2, device=device, dtype=torch.float32) / (d // 2))
    angles = coords.unsqueeze(-1) * omega  # [N, 3, d/2]
    table = torch.cat((angles.sin(), angles.cos()), dim=-1).flatten(1)  # [N, 3·d]
    if dim > 3 * d:
        table = torch.cat((table, table.new_zeros(n, dim - 3 * d)), dim=1)
    return table  # [N, dim]


def sincos_embed_1d(num_tokens: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """VideoMAE's fixed 1-D sinusoid table over flattened token indices.

    Args:
        num_tokens: rows (tokens of the nominal grid, T×H×W order).
        dim: embedding width.
        base: frequency base.

    Returns:
        ``[num_tokens, dim]`` float32 (computed in float64 on the CPU, then rounded).
    """
    pos = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)  # [N, 1]
    channel = torch.arange(dim)
    scale = base ** ((2 * (channel // 2)).to(torch.float64) / dim)  # [dim], pairs share it
    angles = pos / scale  # [N, dim]: n·ω_i, as a division (VideoMAE's rounding)
    table = torch.where(channel % 2 == 0, angles.sin(), angles.cos())  # even sin, odd cos
    return table.to(torch.float32)
