"""Stage 1 of SALT: the pixel-reconstruction teacher ("V-Pixel", SPEC.md stage 1).

A video ViT encodes the context tokens of each V-JEPA multi-block mask; a narrow pixel decoder
(the JEPA predictor with a pixel head, 12 × 384 by default) predicts the per-tubelet normalised
pixels ("norm-pix") of the masked tubelets; MSE (L1 as option) averaged over the two mask configs.
Every clip gets both mask configs, and the encoder runs once per config on that config's context.
Only the encoder is kept for stage 2 (``load_encoder`` / ``salt export`` read ``encoder.*``); the
decoder is dropped.

Per-step compute lives in ``salt.step.pixel_loss``; ``training_loss(batch)`` is the Trainer-free
entry point the GPU benchmark calls.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from salt.models import PixelDecoder, create_encoder
from salt.module_base import SaltModule
from salt.step import pixel_loss


class TeacherModule(SaltModule):
    """Stage-1 LightningModule (``salt fit -c configs/teacher/vitl16.yaml``).

    Args:
        encoder: registered encoder name (``salt.models.list_encoders()``), e.g. ``vit_large``.
        encoder_kwargs: extra ``VideoViT`` arguments (``pos_embed``, ``attn_backend``, ...).
        img_size: clip side in pixels (linked to ``data.crop_size``).
        num_frames: frames per clip (linked to ``data.frames_per_clip``).
        decoder_dim: pixel decoder width (384).
        decoder_depth: pixel decoder blocks (12).
        decoder_heads: pixel decoder heads (12).
        decoder_mlp_hidden: pixel decoder MLP width (1536).
        loss: ``"mse"`` (default) or ``"l1"`` on norm-pix targets.
        norm_pix_eps: ε of the per-tubelet normalisation.
        act_checkpoint: activation checkpointing in encoder and decoder.
        masks, mean, std, lr, start_lr, final_lr, warmup_steps, weight_decay, final_weight_decay,
            betas, eps, compile, compile_scope, compile_mode, cudnn_attention, health_every,
            max_nonfinite: see ``salt.module_base.SaltModule``.
    """

    stage = "teacher"

    def __init__(
        self,
        encoder: str = "vit_large",
        encoder_kwargs: dict[str, Any] | None = None,
        img_size: int = 224,
        num_frames: int = 16,
        decoder_dim: int = 384,
        decoder_depth: int = 12,
        decoder_heads: int = 12,
        decoder_mlp_hidden: int = 1536,
        loss: Literal["mse", "l1"] = "mse",
        norm_pix_eps: float = 1e-6,
        masks: list[dict] | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        lr: float = 6.25e-4,
        start_lr: float = 2e-4,
        final_lr: float = 1e-6,
        warmup_steps: int = 10_000,
        weight_decay: float = 0.04,
        final_weight_decay: float = 0.4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        act_checkpoint: bool = False,
        compile: bool = False,
        compile_scope: Literal["blocks", "modules"] = "blocks",
        compile_mode: str | None = None,
        cudnn_attention: bool = False,
        health_every: int = 100,
        max_nonfinite: int = 20,
    ) -> None:
        super().__init__(
            img_size=img_size,
            num_frames=num_frames,
            mean=mean,
            std=std,
            masks=masks,
            lr=lr,
            start_lr=start_lr,
            final_lr=final_lr,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            final_weight_decay=final_weight_decay,
            betas=betas,
            eps=eps,
            compile=compile,
            compile_scope=compile_scope,
            compile_mode=compile_mode,
            cudnn_attention=cudnn_attention,
            health_every=health_every,
            max_nonfinite=max_nonfinite,
        )
        self.save_hyperparameters(logger=False)  # MLflow params come from the resolved config
        self.loss_kind, self.norm_pix_eps = loss, norm_pix_eps
        self.encoder = create_encoder(
            encoder,
            **{
                **(encoder_kwargs or {}),
                "img_size": img_size,
                "num_frames": num_frames,
                "act_checkpoint": act_checkpoint,
            },
        )
        self.grid()  # fail now if the clip does not divide into tubelets × patches
        num_masks = len(self.build_mask_collator().generators)
        self.decoder = PixelDecoder(
            in_dim=self.encoder.embed_dim,
            patch_size=self.encoder.patch_size,
            tubelet_size=self.encoder.tubelet_size,
            in_chans=self.encoder.config["in_chans"],
            embed_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            mlp_hidden_dim=decoder_mlp_hidden,
            num_mask_tokens=num_masks,
            pos_embed=self.encoder.pos_embed,
            attn_backend=self.encoder.attn_backend,
            act_checkpoint=act_checkpoint,
        )

    def compiled_modules(self) -> list[nn.Module]:
        return [self.encoder, self.decoder]

    def training_loss(
        self, batch: dict, health: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Norm-pix reconstruction loss of one batch (``salt.step.pixel_loss``).

        Args:
            batch: ``{"video": uint8 [B, C, T, H, W], "masks": [(ctx, tgt), ...]}`` on the device.
            health: also compute RankMe and prediction / target std.
        """
        video = self.normalize(batch["video"])  # [B, C, T, H, W] float32
        return pixel_loss(
            self.encoder,
            self.decoder,
            video,
            batch["masks"],
            loss=self.loss_kind,
            norm_pix_eps=self.norm_pix_eps,
            health=health,
        )
