"""The per-step compute of both SALT stages, as plain functions (no Trainer, no Lightning).

``salt fit`` (through ``TeacherModule`` / ``StudentModule``) and ``benchmarks/step_throughput.py``
run exactly this code. Outside a Trainer, one training step is::

    module = StudentModule(encoder="vit_large", teacher="teacher.ckpt", ...).to("cuda")
    opt = module.configure_optimizers(total_steps=N)["optimizer"]  # fused AdamW, SALT groups
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, stats = module.training_loss(batch)             # batch as the DataModule yields it
    loss.backward()
    grad_norm, skipped = prepare_optimizer_step(opt, max_norm=None, nonfinite=~torch.isfinite(loss))
    opt.step(); opt.zero_grad(set_to_none=True)

``training_loss(batch) -> (loss, stats)`` takes ``{"video": uint8 [B, C, T, H, W], "masks":
[(ctx [B, nc], tgt [B, nt]), ...]}`` on the device, normalises on the device and calls the
functions below. Nothing here reads a tensor on the host (no ``.item()``, no data-dependent
shapes): ``stats`` are detached 0-d tensors, read only when logged. (``health=True`` adds an SVD
for RankMe; the modules ask for it every ``health_every`` steps only.)

Stage 1 (``pixel_loss``): per mask config, the encoder sees the context tokens only, the pixel
decoder predicts the norm-pix tubelets at the target indices; MSE (or L1), averaged over configs.
Stage 2 (``latent_targets`` + ``latent_loss``): the teacher runs once per clip on all tokens
without grad, its chosen layer goes through a parameter-free LayerNorm, and one batched gather
picks every mask's targets; the student sees context tokens only, the predictor regresses the
targets; L1 averaged over configs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from salt.health import feature_std, rankme
from salt.models import gather_tokens, norm_pix, patchify_pixels
from salt.optim import unwrap_optimizer

Masks = Sequence[tuple[torch.Tensor, torch.Tensor]]


def _check_masks(masks: Masks) -> None:
    if not masks:
        raise ValueError("batch has no masks: the DataModule attaches them (set_mask_fn in setup)")


def regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean ``|pred − target|`` (``"l1"``) or squared error (``"mse"``), computed in float32."""
    diff = pred.float() - target.float()
    if kind == "l1":
        return diff.abs().mean()
    if kind == "mse":
        return diff.square().mean()
    raise ValueError(f"loss must be 'mse' or 'l1', got {kind!r}")


def pixel_loss(
    encoder: nn.Module,
    decoder: nn.Module,
    video: torch.Tensor,
    masks: Masks,
    loss: str = "mse",
    norm_pix_eps: float = 1e-6,
    health: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage-1 loss: reconstruct norm-pix tubelets of the masked tokens from the context.

    Args:
        encoder: ``VideoViT``; called as ``encoder(video, ctx)`` on context tokens only.
        decoder: ``PixelDecoder``; ``decoder(z, ctx, tgt, grid, mask_id=m)``.
        video: normalised float clip ``[B, C, T, H, W]``.
        masks: one ``(ctx [B, nc], tgt [B, nt])`` pair per mask config (mask_id = position).
        loss: ``"mse"`` or ``"l1"``.
        norm_pix_eps: ε of the per-tubelet normalisation.
        health: also return RankMe of encoder features and std of predictions / targets.

    Returns:
        ``(loss, stats)``: loss averaged over mask configs; stats of detached 0-d tensors.
    """
    _check_masks(masks)
    grid = encoder.grid(video)
    patch, tubelet = encoder.patch_size, encoder.tubelet_size
    with torch.no_grad():
        pixels = norm_pix(patchify_pixels(video, patch, tubelet), norm_pix_eps)  # [B, N, P] fp32
        tgt_all = torch.cat([tgt for _, tgt in masks], dim=1)  # [B, Σ nt]
        targets = gather_tokens(pixels, tgt_all).split([t.shape[1] for _, t in masks], dim=1)
    losses, stats = [], {}
    for m, (ctx, tgt) in enumerate(masks):
        z = encoder(video, ctx)  # [B, nc, D]
        pred = decoder(z, ctx, tgt, grid, mask_id=m)  # [B, nt, P]
        losses.append(regression_loss(pred, targets[m], loss))
        stats[f"loss_mask{m}"] = losses[-1].detach()
        if health and m == 0:
            stats.update(_health(z, pred, targets[m]))
    return torch.stack(losses).mean(), stats


@torch.no_grad()
def latent_targets(teacher: nn.Module, video: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Teacher features of every token, parameter-free LayerNorm over channels: ``[B, N, Dt]``.

    ``layer=-1`` is the encoder's output (after its final norm, as V-JEPA's target encoder);
    any other block index takes that block's raw output.
    """
    depth = len(teacher.blocks)
    if layer in (-1, depth - 1):
        h = teacher(video)  # [B, N, Dt]
    else:
        h = teacher.forward_intermediates(
            video, [layer], output_fmt="NLC", intermediates_only=True
        )[0]  # [B, N, Dt]
    return F.layer_norm(h, (h.shape[-1],))


def gather_mask_targets(targets: torch.Tensor, masks: Masks) -> list[torch.Tensor]:
    """Every mask config's targets from ``targets [B, N, D]`` with one batched gather."""
    _check_masks(masks)
    tgt_all = torch.cat([tgt for _, tgt in masks], dim=1)  # [B, Σ nt]
    picked = gather_tokens(targets, tgt_all)  # [B, Σ nt, D]
    return list(picked.split([tgt.shape[1] for _, tgt in masks], dim=1))


def latent_loss(
    encoder: nn.Module,
    predictor: nn.Module,
    video: torch.Tensor,
    masks: Masks,
    targets: Sequence[torch.Tensor],
    loss: str = "l1",
    health: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage-2 loss: the student sees context tokens only; the predictor regresses the targets.

    Args:
        encoder: student ``VideoViT``; ``encoder(video, ctx)``.
        predictor: ``Predictor`` with ``out_dim`` = teacher width.
        video: normalised float clip ``[B, C, T, H, W]``.
        masks: ``(ctx, tgt)`` per mask config.
        targets: per mask config ``[B, nt, Dt]`` (``gather_mask_targets`` of ``latent_targets``).
        loss: ``"l1"`` (SALT) or ``"mse"``.
        health: also return RankMe of student features and std of predictions / targets.
    """
    grid = encoder.grid(video)
    losses, stats = [], {}
    for m, (ctx, tgt) in enumerate(masks):
        z = encoder(video, ctx)  # [B, nc, Ds]
        pred = predictor(z, ctx, tgt, grid, mask_id=m)  # [B, nt, Dt]
        losses.append(regression_loss(pred, targets[m], loss))
        stats[f"loss_mask{m}"] = losses[-1].detach()
        if health and m == 0:
            stats.update(_health(z, pred, targets[m]))
    return torch.stack(losses).mean(), stats


def _health(features: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> dict:
    return {
        "rankme": rankme(features),
        "pred_std": feature_std(pred),
        "target_std": feature_std(target),
    }


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
