"""Stage 1 of SALT: the pixel-reconstruction teacher ("V-Pixel", docs/method.md).

A video ViT encodes the context tokens of each V-JEPA multi-block mask; a narrow pixel decoder
(the JEPA predictor with a pixel head, 12 × 384 by default) predicts the per-tubelet normalised
pixels ("norm-pix") of the masked tubelets; MSE (L1 as option) averaged over the two mask configs.
Every clip gets both mask configs, and the encoder runs once per config on that config's context.
Only the encoder is kept for stage 2 (``load_encoder`` / ``salt export`` read ``encoder.*``); the
decoder is dropped.

Per-step compute lives in ``salt.step`` (``pixel_targets``, ``masked_regression_loss``); ``training_loss(batch)`` is the Trainer-free
entry point the GPU benchmark calls.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from salt.models import PixelDecoder
from salt.module_base import SaltModule
from salt.step import masked_regression_loss, pixel_targets


class TeacherModule(SaltModule):
    """Stage-1 LightningModule (``salt fit -c configs/teacher/vitl16.yaml``).

    Args:
        encoder: registered encoder name (``salt.models.list_encoders()``), e.g. ``vit_large``.
        encoder_kwargs: extra ``VideoViT`` arguments (``pos_embed``, ``attn_backend``, ...).
        decoder_dim: pixel decoder width (384).
        decoder_depth: pixel decoder blocks (12).
        decoder_heads: pixel decoder heads (12).
        decoder_mlp_hidden: pixel decoder MLP width (1536).
        loss: ``"mse"`` (default) or ``"l1"`` on norm-pix targets.
        norm_pix_eps: ε of the per-tubelet normalisation.
        act_checkpoint: activation checkpointing in encoder and decoder.
        **kwargs: clip size, masks, normalisation, optimisation, compilation and health
            arguments of ``salt.module_base.SaltModule`` (``img_size``, ``lr``, ...).
    """

    stage = "teacher"

    def __init__(
        self,
        encoder: str = "vit_large",
        encoder_kwargs: dict[str, Any] | None = None,
        decoder_dim: int = 384,
        decoder_depth: int = 12,
        decoder_heads: int = 12,
        decoder_mlp_hidden: int = 1536,
        loss: Literal["mse", "l1"] = "mse",
        norm_pix_eps: float = 1e-6,
        act_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.loss_kind, self.norm_pix_eps = loss, norm_pix_eps
        self._build_encoder(encoder, encoder_kwargs, act_checkpoint)
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
        """Norm-pix reconstruction loss of one batch (``salt.step.masked_regression_loss``).

        Args:
            batch: ``{"video": uint8 [B, C, T, H, W], "masks": [(ctx, tgt), ...]}`` on the device.
            health: also compute RankMe and prediction / target std.
        """
        video = self.normalize(batch["video"])  # [B, C, T, H, W] float32
        enc = self.encoder
        masks = batch["masks"]
        targets = pixel_targets(video, masks, enc.patch_size, enc.tubelet_size, self.norm_pix_eps)
        return masked_regression_loss(
            enc, self.decoder, video, masks, targets, loss=self.loss_kind, health=health
        )
