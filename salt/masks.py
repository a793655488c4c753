"""V-JEPA multi-block 3D masks: which tokens the encoder sees (context) and which are predicted.

Implements the masks of docs/method.md ("Masks"). For every batch and every mask config, one
block *size* (t, h, w) is drawn from a generator seeded by (seed, batch counter); each sample then
places `num_blocks` blocks of that size at its own random positions. The target is the union of the
blocks, the context its complement. A sample whose blocks cover every token (empty context) is
redrawn, and counted in `.stats`. Token indices follow the contract order `t·(H·W) + h·W + w`.

Block sizes follow V-JEPA: `t = max(1, int(T·temporal))`, `keep = int(H·W·spatial)`,
`h = round(sqrt(keep·aspect))`, `w = round(sqrt(keep / aspect))`, clipped to the grid (and to at
least 1 here). With `truncate=True` (V-JEPA's convention) every row is cut to the batch minimum so
rows stack; cutting a sorted list keeps its lowest indices. `truncate=False` keeps every token and
right-pads rows with -1.

The whole batch (sizes and positions) is a function of (seed, counter), so a stream is
reproducible and resumable from `state_dict()`. The counter is mixed with the seed through numpy's
SeedSequence rather than added to it, so streams of neighbouring seeds (per worker / rank) never
replay each other shifted by a few batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

_CONFIG_KEYS = {
    "name",
    "num_blocks",
    "spatial_scale",
    "aspect_ratio",
    "temporal_scale",
    "max_tries",
}


def _as_range(
    name: str, value: float | Sequence[float], lo: float, hi: float
) -> tuple[float, float]:
    """A (min, max) pair from a number or a pair, checked to lie in (lo, hi]."""
    pair = (
        (float(value), float(value))
        if isinstance(value, (int, float))
        else tuple(map(float, value))
    )
    if len(pair) != 2 or not (lo < pair[0] <= pair[1] <= hi):
        raise ValueError(
            f"{name} must be a (min, max) pair with {lo} < min <= max <= {hi}, got {value!r}"
        )
    return pair


def _span(start: torch.Tensor, length: int, size: int) -> torch.Tensor:
    """Membership of 0..size-1 in [start, start+length): [...] -> [..., size] bool."""
    ar = torch.arange(size)
    start = start.unsqueeze(-1)
    return (ar >= start) & (ar < start + length)


class MaskGenerator:
    """One multi-block 3D mask config; `gen(batch_size) -> (ctx [B,nc], tgt [B,nt])` int64.

    Args:
        grid: token grid (T', H', W') of the clip.
        num_blocks: blocks per sample; the target is their union.
        spatial_scale: (min, max) fraction of the H'×W' frame each block covers.
        aspect_ratio: (min, max) block aspect ratio h/w.
        temporal_scale: (min, max) fraction of T' each block spans (1.0: every slice).
        seed: stream seed (non-negative); sizes and positions derive from (seed, batch counter).
        truncate: cut every row to the batch minimum (V-JEPA); False pads rows with -1.
        max_tries: redraws allowed for samples with an empty context before a RuntimeError.
    """

    def __init__(
        self,
        grid: tuple[int, int, int] = (8, 14, 14),
        num_blocks: int = 8,
        spatial_scale: tuple[float, float] = (0.15, 0.15),
        aspect_ratio: tuple[float, float] = (0.75, 1.5),
        temporal_scale: tuple[float, float] = (1.0, 1.0),
        seed: int = 0,
        truncate: bool = True,
        max_tries: int = 100,
    ) -> None:
        grid = tuple(int(g) for g in grid)
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"grid must be three positive ints (T', H', W'), got {grid!r}")
        if num_blocks < 1 or max_tries < 0:
            raise ValueError(
                f"need num_blocks >= 1 and max_tries >= 0, got {num_blocks}, {max_tries}"
            )
        self.grid = grid
        self.num_blocks = int(num_blocks)
        self.spatial_scale = _as_range("spatial_scale", spatial_scale, 0.0, 1.0)
        self.aspect_ratio = _as_range("aspect_ratio", aspect_ratio, 0.0, math.inf)
        self.temporal_scale = _as_range("temporal_scale", temporal_scale, 0.0, 1.0)
        if int(grid[1] * grid[2] * self.spatial_scale[0]) < 1:
            raise ValueError(f"spatial_scale {self.spatial_scale} covers < 1 token of {grid[1:]}")
        self.truncate = bool(truncate)
        self.max_tries = int(max_tries)
        self.reseed(seed)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def reseed(self, seed: int) -> None:
        """Start a fresh stream: new seed, counter 0, statistics cleared."""
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = int(seed)
        self.counter = 0
        # samples redrawn for an empty context; tokens cut by truncation (both lists)
        self.stats = {
            "batches": 0,
            "samples": 0,
            "resampled": 0,
            "ctx_dropped": 0,
            "tgt_dropped": 0,
        }

    def state_dict(self) -> dict:
        return {"seed": self.seed, "counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        self.reseed(int(state["seed"]))
        self.counter = int(state["counter"])

    def _generator(self) -> torch.Generator:
        mixed = np.random.SeedSequence([self.seed, self.counter]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(mixed) >> 1)  # 63 bits: a valid torch seed

    def _uniform(self, g: torch.Generator, lo_hi: tuple[float, float]) -> float:
        return lo_hi[0] + torch.rand(1, generator=g).item() * (lo_hi[1] - lo_hi[0])

    def _block_size(self, g: torch.Generator) -> tuple[int, int, int]:
        T, H, W = self.grid
        t = max(1, int(T * self._uniform(g, self.temporal_scale)))
        keep = int(H * W * self._uniform(g, self.spatial_scale))
        ar = self._uniform(g, self.aspect_ratio)
        h = min(H, max(1, round(math.sqrt(keep * ar))))
        w = min(W, max(1, round(math.sqrt(keep / ar))))
        return t, h, w

    def _target_mask(self, g: torch.Generator, n: int, size: tuple[int, int, int]) -> torch.Tensor:
        """Union of `num_blocks` blocks of `size` at random positions: [n, T, H, W] bool."""
        (T, H, W), (t, h, w), nb = self.grid, size, self.num_blocks
        in_t = _span(torch.randint(0, T - t + 1, (n, nb), generator=g), t, T)  # [n, nb, T]
        in_h = _span(torch.randint(0, H - h + 1, (n, nb), generator=g), h, H)  # [n, nb, H]
        in_w = _span(torch.randint(0, W - w + 1, (n, nb), generator=g), w, W)  # [n, nb, W]
        in_hw = (in_h[..., :, None] & in_w[..., None, :]).flatten(2)  # [n, nb, H*W]
        # union over blocks of (t-span x hw-rectangle) as one batched matmul: 3x faster than any()
        hits = torch.bmm(in_t.transpose(1, 2).float(), in_hw.float())  # [n, T, H*W]
        return (hits > 0).view(n, T, H, W)

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one batch of masks: (context [B, nc], target [B, nt]) int64, rows ascending."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        g = self._generator()
        self.counter += 1
        size = self._block_size(g)
        target = self._target_mask(g, batch_size, size).flatten(1)  # [B, N]
        full = target.all(dim=1)  # [B] samples with no context left
        tries = 0
        while full.any():
            if tries == self.max_tries:
                raise RuntimeError(
                    f"mask blocks of size {size} (t, h, w) x {self.num_blocks} covered the whole "
                    f"grid {self.grid} in {self.max_tries} redraws: the context stays empty; "
                    "lower num_blocks or spatial_scale"
                )
            bad = full.nonzero().squeeze(1)
            target[bad] = self._target_mask(g, len(bad), size).flatten(1)
            self.stats["resampled"] += len(bad)
            full, tries = target.all(dim=1), tries + 1
        self.stats["batches"] += 1
        self.stats["samples"] += batch_size
        ctx = self._rows(~target, "ctx_dropped")
        return ctx, self._rows(target, "tgt_dropped")

    def _rows(self, mask: torch.Tensor, dropped_key: str) -> torch.Tensor:
        """Column indices of each row's True entries, ascending: [B, N] bool -> [B, n] int64.

        Truncated to the smallest row count (dropped tokens counted in stats), or right-padded
        with -1 to the largest.
        """
        counts = mask.sum(dim=1)  # [B]
        rank = mask.cumsum(dim=1) - 1  # [B, N] slot of each True entry within its row
        if self.truncate:
            n = int(counts.min())
            self.stats[dropped_key] += int((counts - n).sum())
            keep = mask & (rank < n)
            return keep.nonzero()[:, 1].view(mask.shape[0], n)  # nonzero is row-major: sorted
        rows, cols = mask.nonzero(as_tuple=True)
        out = torch.full((mask.shape[0], int(counts.max())), -1, dtype=torch.long)
        out[rows, rank[rows, cols]] = cols
        return out


def default_mask_configs() -> list[dict]:
    """The method's two configs (docs/method.md): short-range (8 blocks × 0.15) and long-range (2 blocks × 0.70)."""
    common = {"aspect_ratio": (0.75, 1.5), "temporal_scale": (1.0, 1.0)}
    return [
        {"name": "short_range", "num_blocks": 8, "spatial_scale": (0.15, 0.15), **common},
        {"name": "long_range", "num_blocks": 2, "spatial_scale": (0.70, 0.70), **common},
    ]


class MultiMaskCollator:
    """Every mask config for one batch: `collator(B) -> [(ctx, tgt), ...]`, one pair per config.

    Config i draws from seed `seed * len(configs) + i`, so configs never share a stream.

    Args:
        grid: token grid (T', H', W').
        configs: mask configs as dicts of MaskGenerator arguments (`num_blocks`, `spatial_scale`,
            `aspect_ratio`, `temporal_scale`, `max_tries`) plus an optional `name`;
            None means `default_mask_configs()`.
        seed: stream seed (non-negative); `reseed()` per worker / rank / resume.
        truncate: cut rows to the batch minimum (V-JEPA); False pads rows with -1.
    """

    def __init__(
        self,
        grid: tuple[int, int, int],
        configs: list[dict] | None = None,
        seed: int = 0,
        truncate: bool = True,
    ) -> None:
        configs = default_mask_configs() if configs is None else [dict(c) for c in configs]
        if not configs:
            raise ValueError("configs must hold at least one mask config")
        for i, cfg in enumerate(configs):
            unknown = set(cfg) - _CONFIG_KEYS
            if unknown:
                raise ValueError(
                    f"mask config {i}: unknown keys {sorted(unknown)}; allowed {sorted(_CONFIG_KEYS)}"
                )
        self.names = [str(c.pop("name", f"mask{i}")) for i, c in enumerate(configs)]
        self.generators = [MaskGenerator(grid, truncate=truncate, **c) for c in configs]
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Start fresh streams for every config (counters 0) derived from `seed`."""
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = int(seed)
        n = len(self.generators)
        for i, gen in enumerate(self.generators):
            gen.reseed(self.seed * n + i)

    def __call__(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [gen(batch_size) for gen in self.generators]

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return {
            name: dict(gen.stats) for name, gen in zip(self.names, self.generators, strict=True)
        }

    def state_dict(self) -> dict:
        return {"seed": self.seed, "generators": [gen.state_dict() for gen in self.generators]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["generators"]) != len(self.generators):
            raise ValueError(
                f"state holds {len(state['generators'])} mask configs, collator has {len(self.generators)}"
            )
        self.seed = int(state["seed"])
        for gen, s in zip(self.generators, state["generators"], strict=True):
            gen.load_state_dict(s)
