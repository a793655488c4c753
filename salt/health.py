"""Training-health signals V-JEPA lacks: effective rank, feature spread, and a non-finite guard.

- ``rankme``: RankMe (Garrido et al. 2023), ``exp(entropy(σ / Σσ))`` over the singular values of a
  feature matrix — near 1 means collapse, near min(M, D) means full use of the width.
- ``feature_std``: per-channel standard deviation averaged over channels; a collapsing predictor or
  target space shows up as this shrinking towards 0.
- ``NonFiniteGuard``: counts consecutive optimizer steps skipped for a non-finite loss/gradient on
  the device (no host sync per step) and aborts with a clear message once ``max_consecutive`` in a
  row are seen. It is read on the host only when ``check()`` is called (at logging intervals).
  Under DDP/FSDP every rank skips the same steps (``salt.module_base``), so every rank's guard
  holds the same counts and aborts at the same step.
"""

from __future__ import annotations

import torch


def rankme(features: torch.Tensor, max_rows: int = 4096, eps: float = 1e-7) -> torch.Tensor:
    """RankMe effective rank of ``features [..., D]`` (leading dims flattened), a 0-d float tensor.

    Args:
        features: any ``[..., D]`` feature tensor (e.g. encoder tokens ``[B, n, D]``).
        max_rows: evenly strided subsample of rows to bound the SVD cost.
        eps: smoothing of the normalised singular values (RankMe's ε).
    """
    x = features.detach().reshape(-1, features.shape[-1]).float()  # [M, D]
    if x.shape[0] > max_rows:
        x = x[:: -(-x.shape[0] // max_rows)]
    s = torch.linalg.svdvals(x)  # [min(M, D)]
    p = s / (s.sum() + eps) + eps
    return torch.exp(-(p * p.log()).sum())


def feature_std(x: torch.Tensor) -> torch.Tensor:
    """Mean over channels of the per-channel std of ``x [..., D]`` (a 0-d float tensor)."""
    x = x.detach().reshape(-1, x.shape[-1]).float()  # [M, D]
    return x.std(dim=0).mean()


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive optimizer steps with a non-finite loss or gradient."""


class NonFiniteGuard:
    """Device-side counter of consecutive skipped (non-finite) optimizer steps.

    Args:
        max_consecutive: abort once this many steps in a row were non-finite (K ≥ 1).
    """

    def __init__(self, max_consecutive: int) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be ≥ 1, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.streak: torch.Tensor | None = None  # current run of bad steps, 0-d int64
        self.worst: torch.Tensor | None = None  # longest run since the last check()
        self.total: torch.Tensor | None = None  # bad steps in the whole run
        self._start = 0  # skipped steps of earlier attempts (a resumed run)

    def start_from(self, total: int) -> None:
        """Continue the run's total from a checkpoint (``ckpt["salt"]["skipped_steps"]``)."""
        self._start = int(total)
        if self.total is not None:
            self.total = torch.full_like(self.total, self._start)

    def count(self) -> int:
        """Skipped steps in the whole run so far (a host read)."""
        return self._start if self.total is None else int(self.total)

    def update(self, bad: torch.Tensor) -> None:
        """Record one optimizer step; ``bad`` is a 0-d bool tensor (no host sync)."""
        bad = bad.to(torch.int64)
        if self.streak is None or self.streak.device != bad.device:
            self.streak = torch.zeros((), dtype=torch.int64, device=bad.device)
            self.worst = torch.zeros_like(self.streak)
            self.total = torch.full_like(self.streak, self._start)
        self.streak = (self.streak + 1) * bad
        self.worst = torch.maximum(self.worst, self.streak)
        self.total = self.total + bad

    def check(self, step: int) -> None:
        """Host read: raise ``NonFiniteLossError`` if a run of ≥ K bad steps happened since the
        last check. Call it at logging intervals, not every step."""
        if self.worst is None:
            return
        worst = int(self.worst)
        if worst >= self.max_consecutive:
            raise NonFiniteLossError(
                f"training aborted at optimizer step {step}: {worst} consecutive steps had a "
                f"non-finite loss or gradient (limit max_nonfinite={self.max_consecutive}). "
                "Those steps were skipped without updating any weight. Lower the learning rate, "
                "enable gradient clipping (trainer.gradient_clip_val) or resume from an earlier "
                "checkpoint."
            )
        self.worst = self.streak.clone()
