"""Fixed 3D sin-cos absolute position embedding (the option to RoPE; V-JEPA 1 style).

The channel dim is split like RoPE's head dim: three equal even chunks for t, h, w and a zero
tail. A chunk of size d holds ``[sin(p·ω_i), cos(p·ω_i)]`` with ``ω_i = 10000^(-2i/d)``. The
table is computed for the grid of the clip at hand, so any frame count and non-square frames
work without interpolation; a gathered token subset carries the row of its true index.
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
