"""AdamW with the SALT / V-JEPA parameter groups (docs/method.md, "Optimisation").

Two groups: weights that decay, and everything that must not — biases, norm parameters, every
other 1-D parameter and the predictor / decoder mask tokens. AdamW uses β = (0.9, 0.95) and the
*fused* implementation: one kernel per step on CUDA and CPU, and the only implementation that honours
``optimizer.found_inf`` — the device-side flag with which ``prepare_optimizer_step`` skips
an update after a non-finite loss or gradient without a host sync.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# Substrings of parameter names that never decay, whatever their shape (V-JEPA excludes these too).
NO_DECAY_NAMES = ("mask_token", "pos_embed")


def decays(name: str, param: nn.Parameter) -> bool:
    """Whether AdamW's weight decay applies: not to biases, norms, 1-D params or mask tokens."""
    if param.ndim <= 1 or name.endswith(".bias"):
        return False
    return not any(s in name for s in NO_DECAY_NAMES)


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]]) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed AdamW group.

    Frozen parameters (``requires_grad=False``) are left out entirely. Each group carries an
    ``"apply_wd"`` flag that ``salt.schedules.WarmupCosineSchedule`` reads, and ``"names"`` for
    inspection and tests.
    """
    decay, no_decay = ([], []), ([], [])
    for name, p in named_params:
        if not p.requires_grad:
            continue
        names, params = decay if decays(name, p) else no_decay
        names.append(name)
        params.append(p)
    groups = [
        {"params": decay[1], "names": decay[0], "apply_wd": True},
        {"params": no_decay[1], "names": no_decay[0], "apply_wd": False, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters to optimise")
    return groups


def build_adamw(
    named_params: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """Fused AdamW over ``param_groups(named_params)``.

    Args:
        named_params: ``module.named_parameters()`` of everything that trains (never the teacher).
        lr: initial learning rate (the schedule overwrites it every step).
        weight_decay: initial weight decay of the decayed group.
        betas: AdamW betas.
        eps: AdamW epsilon.
    """
    groups = param_groups(named_params)
    return torch.optim.AdamW(
        groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, fused=True
    )


def unwrap_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """The torch optimizer behind Lightning's ``LightningOptimizer`` wrapper (or itself)."""
    return getattr(optimizer, "_optimizer", optimizer)


@torch.no_grad()
def prepare_optimizer_step(
    optimizer: torch.optim.Optimizer,
    max_norm: float | None,
    nonfinite: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Between backward and ``optimizer.step()``: grad norm, optional clipping, non-finite skip.

    Sets ``optimizer.found_inf`` so fused AdamW skips the whole update (weights, moments and step
    count) on the device when the gradient norm — or ``nonfinite``, e.g. ``~isfinite(loss)`` — is
    not finite. No host sync.

    Args:
        optimizer: a fused ``torch.optim.AdamW`` (``salt.optim.build_adamw``), possibly wrapped.
        max_norm: clip the global gradient norm to this (None or ≤ 0: no clipping).
        nonfinite: extra 0-d bool that forces a skip.

    Returns:
        ``(grad_norm, skipped)``: 0-d float32 and 0-d bool tensors (pre-clipping norm).
    """
    opt = unwrap_optimizer(optimizer)
    if not opt.defaults.get("fused"):
        raise ValueError(
            "non-finite steps are skipped through fused AdamW; build it with build_adamw"
        )
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if not params:
        raise RuntimeError("no gradients: call backward() before prepare_optimizer_step")
    norm = torch.nn.utils.get_total_norm([p.grad for p in params]).float()
    if max_norm is not None and max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    skipped = ~torch.isfinite(norm)
    if nonfinite is not None:
        skipped = skipped | nonfinite.to(skipped.device)
    opt.found_inf = skipped.float()  # read by the fused kernel: 1.0 → no update at all
    return norm, skipped
