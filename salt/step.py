"""The per-step compute of both SALT stages, as plain functions (no Trainer, no Lightning).

``salt fit`` (through ``TeacherModule``, ``StudentModule``, ``EMAModule``) and
``benchmarks/step_throughput.py`` run exactly this code. Outside a Trainer, one training step is::

    module = StudentModule(encoder="vit_large", teacher="teacher.ckpt", ...).to("cuda")
    opt = module.configure_optimizers(total_steps=N)["optimizer"]  # fused AdamW, SALT groups
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, stats = module.training_loss(batch)             # batch as the DataModule yields it
    loss.backward()
    grad_norm, skipped = prepare_optimizer_step(opt, max_norm=None, nonfinite=~torch.isfinite(loss))
    opt.step(); opt.zero_grad(set_to_none=True)

(``prepare_optimizer_step`` is ``salt.optim``'s.) ``training_loss(batch) -> (loss, stats)`` takes
``{"video": uint8 [B, C, T, H, W], "masks": [(ctx [B, nc], tgt [B, nt]), ...]}`` on the device,
normalises on the device and calls the functions below. Nothing here reads a tensor on the host
(no ``.item()``, no data-dependent shapes): ``stats`` are detached 0-d tensors, read only when
logged. (``health=True`` adds an SVD for RankMe; the modules ask for it every ``health_every``
steps only.)

Both stages are one masked regression (``masked_regression_loss``): per mask config, the encoder
sees the context tokens only and a narrow head predicts the targets at the masked positions; the
loss is averaged over configs. Only the targets differ:

- stage 1 (``pixel_targets``): the norm-pix tubelets of the masked tokens; MSE (or L1);
- stage 2 (``latent_targets`` + ``gather_mask_targets``): the teacher runs once per clip on all
  tokens without grad, its chosen layer goes through a parameter-free LayerNorm, and one batched
  gather picks every mask's targets; L1 (or MSE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from salt.health import feature_std, rankme
from salt.models import gather_tokens, norm_pix, patchify_pixels

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


@torch.no_grad()
def pixel_targets(
    video: torch.Tensor, masks: Masks, patch_size: int, tubelet_size: int, eps: float = 1e-6
) -> list[torch.Tensor]:
    """Stage-1 targets: every mask config's norm-pix tubelets ``[B, nt, P]`` (float32).

    Args:
        video: normalised float clip ``[B, C, T, H, W]``.
        masks: ``(ctx, tgt)`` per mask config.
        patch_size: the encoder's patch side in pixels.
        tubelet_size: the encoder's tubelet length in frames.
        eps: ε of the per-tubelet normalisation.
    """
    pixels = norm_pix(patchify_pixels(video, patch_size, tubelet_size), eps)  # [B, N, P] fp32
    return gather_mask_targets(pixels, masks)


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


def masked_regression_loss(
    encoder: nn.Module,
    head: nn.Module,
    video: torch.Tensor,
    masks: Masks,
    targets: Sequence[torch.Tensor],
    loss: str,
    health: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of both stages: from each mask config's context, regress its targets.

    Per mask config the encoder sees the context tokens only and the head (stage 1: the pixel
    decoder; stage 2: the predictor) predicts the target tokens; the loss is averaged over configs.

    Args:
        encoder: ``VideoViT``; ``encoder(video, ctx)``.
        head: ``PixelDecoder`` or ``Predictor``; ``head(z, ctx, tgt, grid, mask_id=m)``.
        video: normalised float clip ``[B, C, T, H, W]``.
        masks: one ``(ctx [B, nc], tgt [B, nt])`` pair per mask config (mask_id = position).
        targets: per mask config ``[B, nt, D]`` (``pixel_targets``, or ``gather_mask_targets``
            of ``latent_targets``).
        loss: ``"mse"`` or ``"l1"``.
        health: also return RankMe of encoder features and std of predictions / targets.

    Returns:
        ``(loss, stats)``: loss averaged over mask configs; stats of detached 0-d tensors
        (``loss_mask{m}`` per config).
    """
    _check_masks(masks)
    grid = encoder.grid(video)
    losses, stats = [], {}
    for m, (ctx, tgt) in enumerate(masks):
        z = encoder(video, ctx)  # [B, nc, D]
        pred = head(z, ctx, tgt, grid, mask_id=m)  # [B, nt, D_out]
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
