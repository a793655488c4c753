"""Decoded frames of training videos kept in a worker's memory, for training sets that fit.

A training stream that revisits the same few hundred short videos every few batches (``salt
demo``, tests, a small fine-tuning set) spends its decoding worker re-decoding them, and on a
small machine the model waits for it (the demo on 2 cores: benchmarks/RESULTS.md, "`salt demo`
faster recipes tried"). With a budget, the stream decodes *every* frame of a video the first
time it is drawn and keeps them (uint8 [n, H, W, 3], keyed by shard URL and sample key); later
draws take their window and crop from memory. Once the budget is spent, videos not yet held decode
their window as usual. The budget is per DataLoader worker (each worker holds its own copy), and
a video whose frames alone exceed it is never held. Decode events (``decoder_fallback``) are
counted per decode, so once for a held video.
"""

from __future__ import annotations

import numpy as np


class DecodedCache:
    """Whole decoded videos ``(frames uint8 [n, H, W, 3], fps)`` up to ``budget_mb`` MiB."""

    def __init__(self, budget_mb: float) -> None:
        if budget_mb <= 0:
            raise ValueError(f"decoded cache budget must be > 0 MiB, got {budget_mb}")
        self.budget = int(budget_mb * 2**20)
        self.used = 0
        self.full = False  # a video did not fit: stop decoding whole videos for the cache
        self._store: dict[tuple[str, str], tuple[np.ndarray, float]] = {}

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: tuple[str, str]) -> tuple[np.ndarray, float] | None:
        return self._store.get(key)

    def put(self, key: tuple[str, str], frames: np.ndarray, fps: float) -> bool:
        """Hold ``frames`` if they fit in what is left of the budget; returns whether held."""
        if self.used + frames.nbytes > self.budget:
            self.full = True
            return False
        self._store[key] = (frames, fps)
        self.used += frames.nbytes
        return True
