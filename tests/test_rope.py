"""3D RoPE: interleaved pairing against an independent float64 reference, the relative-position
property, the tiled pairing (V-JEPA 2's tables, for its weights) against a per-channel reference,
index → (t, h, w) coordinates, and the sin-cos option's table."""

import math

import pytest
import torch

from salt.models.pos_embed import sincos_embed_3d
from salt.models.rope import (
    ROPE_CONVENTION,
    ROPE_CONVENTIONS,
    apply_rope,
    rope_axis_dim,
    rope_convention,
    rope_cos_sin,
    token_coords,
)


def naive_rope(x: torch.Tensor, pos: tuple[int, int, int], base: float = 10000.0) -> torch.Tensor:
    """Rotate one head vector x [hd] pair by pair, in plain Python float64."""
    hd = x.shape[0]
    d = (hd // 3) // 2 * 2
    out = x.clone().double()
    for axis in range(3):
        for i in range(d // 2):
            theta = pos[axis] * base ** (-2 * i / d)
            a, b = axis * d + 2 * i, axis * d + 2 * i + 1
            c, s = math.cos(theta), math.sin(theta)
            out[a] = x[a] * c - x[b] * s
            out[b] = x[a] * s + x[b] * c
    return out


def rotate(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    cos, sin = rope_cos_sin(coords, x.shape[-1])
    return apply_rope(x, cos.double(), sin.double())


def test_convention_name():
    assert ROPE_CONVENTION == "interleaved-v1"
    assert ROPE_CONVENTIONS == {"interleaved": "interleaved-v1", "tiled": "tiled-vjepa2-v1"}
    assert rope_convention("tiled") == "tiled-vjepa2-v1"
    with pytest.raises(ValueError, match="pairing"):
        rope_cos_sin(torch.zeros(1, 3), 16, pairing="halves")


def naive_tiled_rope(x: torch.Tensor, pos: tuple[int, int, int]) -> torch.Tensor:
    """V-JEPA 2's tiled layout, channel by channel in float64: within an axis chunk of size d,
    channel c uses ω_(c mod d/2), and channels (2i, 2i+1) rotate as a pair."""
    hd = x.shape[0]
    d = (hd // 3) // 2 * 2
    out = x.clone().double()
    for axis in range(3):
        for i in range(d // 2):
            a, b = axis * d + 2 * i, axis * d + 2 * i + 1
            ta = pos[axis] * 10000.0 ** (-((2 * i) % (d // 2)) / (d / 2))
            tb = pos[axis] * 10000.0 ** (-((2 * i + 1) % (d // 2)) / (d / 2))
            out[a] = x[a] * math.cos(ta) - x[b] * math.sin(ta)
            out[b] = x[b] * math.cos(tb) + x[a] * math.sin(tb)
    return out


@pytest.mark.parametrize("head_dim", [20, 64])
def test_tiled_pairing_matches_per_channel_reference(head_dim):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, head_dim, generator=g, dtype=torch.float64)
    coords = torch.randint(0, 9, (5, 3), generator=g)
    cos, sin = rope_cos_sin(coords, head_dim, pairing="tiled")
    ours = apply_rope(x, cos.double(), sin.double())
    for row in range(5):
        ref = naive_tiled_rope(x[row], tuple(coords[row].tolist()))
        torch.testing.assert_close(ours[row], ref, atol=1e-5, rtol=0)
    plain = rope_cos_sin(coords, head_dim)[0]
    assert not torch.allclose(cos, plain)  # the two pairings differ


@pytest.mark.parametrize(("head_dim", "axis_dim"), [(16, 4), (32, 10), (64, 20), (80, 26)])
def test_axis_split(head_dim, axis_dim):
    assert rope_axis_dim(head_dim) == axis_dim
    cos, sin = rope_cos_sin(torch.tensor([[3, 5, 7]]), head_dim)
    assert cos.shape == (1, head_dim)
    # the unrotated tail is the identity: cos = 1, sin = 0
    assert torch.equal(cos[0, 3 * axis_dim :], torch.ones(head_dim - 3 * axis_dim))
    assert torch.equal(sin[0, 3 * axis_dim :], torch.zeros(head_dim - 3 * axis_dim))


def test_head_dim_too_small():
    with pytest.raises(ValueError, match="too small"):
        rope_axis_dim(4)


@pytest.mark.parametrize("head_dim", [16, 64])
def test_matches_naive_interleaved_reference(head_dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, head_dim, generator=g, dtype=torch.float64)
    coords = torch.randint(0, 14, (5, 3), generator=g)
    got = rotate(x, coords)
    for n in range(5):
        want = naive_rope(x[n], tuple(coords[n].tolist()))
        torch.testing.assert_close(got[n], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("head_dim", [16, 32, 64, 80])
def test_logits_invariant_to_common_shift(head_dim):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(20, head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(20, head_dim, generator=g, dtype=torch.float64)
    cq = torch.randint(0, 8, (20, 3), generator=g)
    ck = torch.randint(0, 8, (20, 3), generator=g)
    logits = rotate(q, cq) @ rotate(k, ck).T  # [20, 20]
    shift = torch.tensor([3, -2, 5])
    shifted = rotate(q, cq + shift) @ rotate(k, ck + shift).T
    torch.testing.assert_close(shifted, logits, rtol=0, atol=1e-4)
    # positions do matter: moving only the keys along one axis changes the logits
    moved = rotate(q, cq) @ rotate(k, ck + torch.tensor([0, 1, 0])).T
    assert (moved - logits).abs().max() > 1e-2


def test_tiled_pairing_would_fail_the_shift_check():
    """The check above catches V-JEPA 2's tiled frequencies (pair channels at different ω): salt
    runs them only to reproduce weights trained with them."""
    hd = 64
    g = torch.Generator().manual_seed(2)
    q = torch.randn(10, hd, generator=g, dtype=torch.float64)
    k = torch.randn(10, hd, generator=g, dtype=torch.float64)

    def tiled(x, pos):
        cos, sin = rope_cos_sin(pos, hd, pairing="tiled")
        return apply_rope(x, cos.double(), sin.double())

    c = torch.randint(0, 8, (10, 3), generator=g)
    shift = torch.tensor([3, -2, 5])
    before = tiled(q, c) @ tiled(k, c).T
    after = tiled(q, c + shift) @ tiled(k, c + shift).T
    assert (after - before).abs().max() > 1e-2


def test_token_coords_non_square_grid():
    grid = (3, 5, 7)  # T', H', W'
    idx = torch.arange(3 * 5 * 7)
    coords = token_coords(idx, grid)
    t, h, w = coords.unbind(-1)
    assert torch.equal(t * 35 + h * 7 + w, idx)  # T×H×W order, w fastest
    assert coords[:, 0].max() == 2 and coords[:, 1].max() == 4 and coords[:, 2].max() == 6
    assert coords[8].tolist() == [0, 1, 1]


def test_sincos_table():
    table = sincos_embed_3d((4, 7, 10), 64)
    assert table.shape == (280, 64)
    assert torch.equal(table[:, 60:], torch.zeros(280, 4))  # 3×20 used, 4 zero
    assert torch.unique(table, dim=0).shape[0] == 280  # every position distinct
    # the row of a token depends on its (t, h, w) only: t=1,h=2,w=3 in two grids with equal W'
    other = sincos_embed_3d((2, 3, 10), 64)
    torch.testing.assert_close(table[1 * 70 + 2 * 10 + 3], other[1 * 30 + 2 * 10 + 3])
