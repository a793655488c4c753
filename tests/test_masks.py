"""V-JEPA multi-block 3D masks (salt/masks.py): statistics, invariants, determinism, resume."""

import pytest
import torch

from salt.masks import MaskGenerator, MultiMaskCollator, default_mask_configs


def _valid(idx: torch.Tensor) -> torch.Tensor:
    return idx >= 0  # [B, n] False on -1 padding


def _token_counts(ctx: torch.Tensor, tgt: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """How often each token occurs in ctx + tgt per sample: [B, N] (padding dropped)."""
    both = torch.cat([ctx, tgt], dim=1)  # [B, nc + nt]
    counts = torch.zeros(both.shape[0], n_tokens + 1, dtype=torch.long)
    counts.scatter_add_(1, torch.where(both < 0, n_tokens, both), torch.ones_like(both))
    return counts[:, :n_tokens]


def _target_grid(tgt: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Dense [B, T, H, W] bool target mask from padded target indices."""
    dense = torch.zeros(tgt.shape[0], grid[0] * grid[1] * grid[2] + 1, dtype=torch.bool)
    dense.scatter_(1, torch.where(tgt < 0, dense.shape[1] - 1, tgt), True)
    return dense[:, :-1].view(-1, *grid)


def test_mask_statistics_8x14x14():
    """docs/method.md's simulated fractions (per sample, all tokens kept) and V-JEPA's truncated ones."""
    grid, n_tok, batches, bsz = (8, 14, 14), 8 * 14 * 14, 200, 8
    full = MultiMaskCollator(grid, seed=3, truncate=False)
    trunc = MultiMaskCollator(grid, seed=3, truncate=True)  # same seed: same draws, cut rows
    ctx_full, tgt_full, ctx_cut, tgt_cut = ([0.0, 0.0] for _ in range(4))
    for _ in range(batches):
        for k, ((cf, tf), (cc, tc)) in enumerate(zip(full(bsz), trunc(bsz), strict=True)):
            nc, nt = _valid(cf).sum(1), _valid(tf).sum(1)  # [B] untruncated sizes
            assert torch.equal(nc + nt, torch.full_like(nc, n_tok))  # partition of all tokens
            # truncation = the batch minimum of the untruncated sizes, keeping the lowest indices
            assert cc.shape == (bsz, int(nc.min())) and tc.shape == (bsz, int(nt.min()))
            assert torch.equal(cc, cf[:, : cc.shape[1]]) and torch.equal(tc, tf[:, : tc.shape[1]])
            ctx_full[k] += nc.float().mean().item() / n_tok / batches
            tgt_full[k] += nt.float().mean().item() / n_tok / batches
            ctx_cut[k] += cc.shape[1] / n_tok / batches
            tgt_cut[k] += tc.shape[1] / n_tok / batches
    print(
        f"\nper-sample ctx {ctx_full[0]:.3f}/{ctx_full[1]:.3f} tgt {tgt_full[0]:.3f}/{tgt_full[1]:.3f}"
        f"; truncated B={bsz} ctx {ctx_cut[0]:.3f}/{ctx_cut[1]:.3f} tgt {tgt_cut[0]:.3f}/{tgt_cut[1]:.3f}"
        f"; stats {trunc.stats}"
    )
    assert ctx_full[0] == pytest.approx(0.37, abs=0.03)  # short-range
    assert ctx_full[1] == pytest.approx(0.18, abs=0.03)  # long-range
    assert tgt_full[0] == pytest.approx(0.62, abs=0.03)
    assert tgt_full[1] == pytest.approx(0.81, abs=0.03)
    # truncation only ever shortens rows; long-range keeps less context than short-range
    assert ctx_cut[0] < ctx_full[0] and ctx_cut[1] < ctx_full[1] and ctx_cut[1] < ctx_cut[0]
    assert trunc.stats["long_range"]["ctx_dropped"] > 0


@pytest.mark.parametrize("grid", [(8, 14, 14), (4, 7, 10), (2, 14, 14), (16, 14, 14), (1, 3, 5)])
@pytest.mark.parametrize("truncate", [True, False])
def test_invariants(grid, truncate):
    n_tok = grid[0] * grid[1] * grid[2]
    collator = MultiMaskCollator(grid, seed=1, truncate=truncate)
    for _ in range(10):
        for ctx, tgt in collator(6):
            for idx in (ctx, tgt):
                assert idx.dtype == torch.int64 and idx.shape[0] == 6 and idx.shape[1] >= 1
                assert int(idx.max()) < n_tok and int(idx.min()) >= (0 if truncate else -1)
                v = _valid(idx)
                assert v[:, 0].all()  # at least one token per row
                # valid entries strictly ascending, padding only at the right end
                assert torch.equal(v, v.cummin(dim=1).values)
                steps = idx[:, 1:] - idx[:, :-1]
                assert (steps[v[:, 1:]] > 0).all()
            counts = _token_counts(ctx, tgt, n_tok)
            assert counts.max() <= 1  # context ∩ target = ∅, no duplicates
            if not truncate:
                assert (counts == 1).all()  # context ∪ target = every token


def test_blocks_span_all_temporal_slices():
    grid = (8, 14, 14)
    gen = MaskGenerator(grid, num_blocks=8, spatial_scale=(0.15, 0.15), truncate=False)
    for _ in range(20):
        tgt = _target_grid(gen(8)[1], grid)  # [B, T, H, W]
        assert torch.equal(tgt, tgt[:, :1].expand_as(tgt))  # same (h, w) targets in every t
    # control: shorter blocks do vary over t, so the check above can fail
    short = MaskGenerator(grid, num_blocks=2, temporal_scale=(0.25, 0.25), truncate=False)
    tgt = _target_grid(short(8)[1], grid)
    assert not torch.equal(tgt, tgt[:, :1].expand_as(tgt))
    assert tgt.any(dim=(2, 3)).sum(1).min() >= 2  # each block spans int(8·0.25) = 2 slices


def _same(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> bool:
    return len(xs) == len(ys) and all(torch.equal(x, y) for x, y in zip(xs, ys, strict=True))


def _draw(collator: MultiMaskCollator, n: int) -> list[torch.Tensor]:
    return [idx for _ in range(n) for pair in collator(4) for idx in pair]


def test_determinism_counter_and_resume():
    grid = (8, 14, 14)
    a, b = MultiMaskCollator(grid, seed=7), MultiMaskCollator(grid, seed=7)
    assert _same(_draw(a, 5), _draw(b, 5))
    assert [g["counter"] for g in a.state_dict()["generators"]] == [5, 5]
    other = MultiMaskCollator(grid, seed=8)
    assert not _same(_draw(MultiMaskCollator(grid, seed=7), 5), _draw(other, 5))

    # the stream advances: consecutive batches differ (4 tensors per batch: 2 configs × ctx, tgt)
    two = _draw(MultiMaskCollator(grid, seed=7), 2)
    assert not _same(two[:4], two[4:])

    # neighbouring seeds do not replay each other's stream shifted by a batch
    g0, g1 = (
        MaskGenerator(grid, seed=0, truncate=False),
        MaskGenerator(grid, seed=1, truncate=False),
    )
    g0(4)
    assert not torch.equal(g0(4)[1], g1(4)[1])

    # state_dict round trip resumes the exact sequence, seed included
    run = MultiMaskCollator(grid, seed=11)
    _draw(run, 3)
    state = run.state_dict()
    expected = _draw(run, 4)
    resumed = MultiMaskCollator(grid, seed=0)
    resumed.load_state_dict(state)
    assert _same(expected, _draw(resumed, 4))

    # reseed starts a fresh stream: same as a new collator with that seed
    run.reseed(11)
    assert _same(_draw(run, 2), _draw(MultiMaskCollator(grid, seed=11), 2))


def test_empty_context_resampled_and_counted():
    # 4 blocks of 1 token on a 2×2 frame cover it all with probability 4!/4^4 ≈ 9%
    gen = MaskGenerator((1, 2, 2), num_blocks=4, spatial_scale=(0.25, 0.25), truncate=False)
    for _ in range(10):
        ctx, _ = gen(16)
        assert _valid(ctx).any(dim=1).all()
    assert gen.stats["resampled"] > 0 and gen.stats["samples"] == 160

    always_full = MaskGenerator((2, 4, 4), num_blocks=1, spatial_scale=(1.0, 1.0), max_tries=5)
    with pytest.raises(RuntimeError, match="context stays empty"):
        always_full(2)


def test_padding_counts_match_untruncated_sizes():
    grid = (4, 7, 10)
    gen = MaskGenerator(grid, num_blocks=3, spatial_scale=(0.2, 0.3), truncate=False, seed=5)
    ctx, tgt = gen(12)
    dense = _target_grid(tgt, grid).flatten(1)  # [B, N]
    assert torch.equal(_valid(tgt).sum(1), dense.sum(1))
    assert torch.equal(_valid(ctx).sum(1), (~dense).sum(1))
    assert (ctx == -1).any() or (tgt == -1).any()  # sizes vary per sample, so rows are padded


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown keys"):
        MultiMaskCollator((8, 14, 14), configs=[{"num_blocks": 2, "scale": 0.5}])
    with pytest.raises(ValueError, match="spatial_scale"):
        MaskGenerator(spatial_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="grid"):
        MaskGenerator(grid=(8, 14))
    with pytest.raises(ValueError, match="seed"):
        MultiMaskCollator((8, 14, 14), seed=-1)
    with pytest.raises(ValueError, match="mask configs"):
        MultiMaskCollator((8, 14, 14)).load_state_dict({"seed": 0, "generators": [{}]})


def test_collator_from_typed_config():
    """LightningCLI/jsonargparse builds the collator from YAML-like values (lists, not tuples)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(MultiMaskCollator, "masks")
    cfg = parser.parse_object(
        {
            "masks": {
                "grid": [2, 4, 6],
                "seed": 3,
                "configs": [{"num_blocks": 2, "spatial_scale": [0.3, 0.3]}],
            }
        }
    )
    collator = MultiMaskCollator(**cfg.masks)
    assert collator.names == ["mask0"] and len(collator(2)) == 1
    assert [c["name"] for c in default_mask_configs()] == ["short_range", "long_range"]
