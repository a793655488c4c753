"""Honest head selection: split the *training* features, choose a head on the held-out slice.

V-JEPA 2 trains 20 heads and reports the best one measured on the validation set, which leaks the
validation labels into the reported number. Here the training split is cut into a fit part and a
held-out part (seeded, stratified by class); heads are ranked by held-out top-1 and validation is
evaluated once, for the chosen head only. Nothing in this file accepts validation data.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def stratified_split(
    labels: torch.Tensor, heldout_fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into (fit, held-out), per class, reproducibly.

    Each class with n ≥ 2 samples sends round(n · fraction) of them (at least 1, at most n − 1) to
    the held-out slice; a class with a single sample stays in the fit part.

    Args:
        labels: int64 [M] class of every training sample.
        heldout_fraction: share of each class held out, in (0, 1).
        seed: seed of the permutation.

    Returns:
        (fit_idx [M_fit], heldout_idx [M_held]) int64, each sorted.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    gen = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = (
            0 if len(idx) < 2 else min(max(round(len(idx) * heldout_fraction), 1), len(idx) - 1)
        )
        held.append(idx[:n_held])
        fit.append(idx[n_held:])
    fit_idx, held_idx = torch.cat(fit).sort().values, torch.cat(held).sort().values
    if len(held_idx) == 0:
        raise ValueError(
            f"held-out slice is empty ({len(labels)} training samples, no class has ≥ 2): "
            "head selection needs more labelled training samples"
        )
    return fit_idx, held_idx


def rank_heads(heldout: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Head names best first: held-out top-1 (higher), then loss (lower), then name."""
    return sorted(heldout, key=lambda name: (-heldout[name]["top1"], heldout[name]["loss"], name))


def select_head(heldout: Mapping[str, Mapping[str, float]]) -> str:
    """Name of the head with the best held-out score.

    Args:
        heldout: per head name, {"top1": held-out accuracy, "loss": held-out cross-entropy}.
            Ranked by top-1, ties broken by the lower loss, then by name (deterministic).

    Returns:
        the chosen head's name.
    """
    if not heldout:
        raise ValueError("no heads to select from")
    return rank_heads(heldout)[0]
