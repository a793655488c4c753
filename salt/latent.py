"""What SALT's student and the V-JEPA EMA baseline share: regressing a target encoder's latents.

Both train an encoder and a narrow predictor so that, from the context tokens of each mask
config, the predictor reproduces the *target encoder*'s features at the masked positions (L1 on
the parameter-free-LayerNormed output of its last layer, or of ``target_layer``). They differ
only in where the target encoder comes from and whether it moves:

- ``salt.student.StudentModule`` (SALT): a stage-1 teacher loaded from a file, frozen for good;
- ``salt.ema.EMAModule`` (V-JEPA): a copy of the encoder that follows it by an exponential
  moving average after every optimizer step.

``LatentTargetModule`` holds the parts and the step they share; the per-step compute itself is
``salt.step.latent_targets`` + ``gather_mask_targets`` + ``masked_regression_loss`` (what ``salt fit`` and the
benchmarks run).

How the target encoder stays out of training and out of DDP/FSDP: it is held in a plain Python
list (``self._teacher``), so it is *not* a submodule. It is therefore absent from
``parameters()``, ``state_dict()``, every optimizer group, and from whatever module tree a
strategy wraps or shards; the module moves it to the batch's device itself. It has
``requires_grad=False`` and sits in a ``FrozenTeacher`` whose ``train()`` always means ``eval()``.
Each subclass decides what of it a checkpoint records (SALT: the teacher file's path and sha256;
EMA: its weights, which are trainable state there).
"""

from __future__ import annotations

import torch
from torch import nn

from salt.errors import UsageError
from salt.models import Predictor, VideoViT, check_sdpa_kernel, set_sdpa_kernel
from salt.module_base import SaltModule
from salt.step import gather_mask_targets, latent_targets, masked_regression_loss

# SDPA kernel per call site (salt.models.attention): the target encoder always attends over all
# tokens of a clip, one fixed length, so cuDNN's per-length plan is built once and its kernel is
# the fastest there; the encoder's context and the predictor's context + targets change length
# with every batch's masks, where FlashAttention-2 has no per-length cost (and is the faster one
# at short context lengths). See benchmarks/RESULTS.md (`step_throughput.py --suite perf`).
DEFAULT_SDPA_KERNELS = {"teacher": "cudnn", "encoder": "flash", "predictor": "flash"}


def resolve_sdpa_kernels(kernels: dict[str, str | None] | None) -> dict[str, str | None]:
    """``DEFAULT_SDPA_KERNELS`` updated with ``kernels``; ``UsageError`` for an unknown site or
    kernel name."""
    out = dict(DEFAULT_SDPA_KERNELS)
    for site, kernel in (kernels or {}).items():
        if site not in out:
            raise UsageError(
                f"sdpa_kernels: unknown call site {site!r} (one of {sorted(DEFAULT_SDPA_KERNELS)})"
            )
        try:
            check_sdpa_kernel(kernel)
        except ValueError as exc:
            raise UsageError(f"sdpa_kernels.{site}: {exc}") from None
        out[site] = kernel
    return out


class FrozenTeacher(nn.Module):
    """Holds the target encoder: no gradients, and ``train()`` always leaves it in eval mode."""

    def __init__(self, encoder: VideoViT) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)


class LatentTargetModule(SaltModule):
    """Base of ``StudentModule`` and ``EMAModule`` (not configured directly).

    Subclasses call, in order: ``_build_encoder`` (``SaltModule``) → (make the target encoder) →
    ``_attach_target`` → ``_build_predictor`` → ``_set_sdpa_kernels``. They set
    ``self.loss_kind`` (``"l1"`` or ``"mse"``) and may override ``target_input`` (what the target
    encoder reads: the normalised clip, or a lower-precision copy of it).
    """

    loss_kind: str

    def _attach_target(self, target: VideoViT, target_layer: int) -> None:
        """Hold ``target`` outside the module tree (see the module docstring)."""
        depth = len(target.blocks)
        if not -depth <= target_layer < depth:
            raise ValueError(f"target_layer {target_layer} outside the teacher's {depth} blocks")
        self.target_layer = target_layer
        # A list, not an attribute nn.Module registers: see the module docstring.
        self._teacher: list[FrozenTeacher] = [FrozenTeacher(target)]

    def _build_predictor(
        self, dim: int, depth: int, heads: int, mlp_hidden: int, act_checkpoint: bool
    ) -> Predictor:
        """The narrow predictor: encoder width in, target-encoder width out."""
        self.predictor = Predictor(
            in_dim=self.encoder.embed_dim,
            out_dim=self.teacher.encoder.embed_dim,
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            mlp_hidden_dim=mlp_hidden,
            num_mask_tokens=len(self.build_mask_collator().generators),
            pos_embed=self.encoder.pos_embed,
            attn_backend=self.encoder.attn_backend,
            act_checkpoint=act_checkpoint,
        )
        return self.predictor

    def _set_sdpa_kernels(self, kernels: dict[str, str | None] | None) -> None:
        """Each call site's SDPA kernel (``DEFAULT_SDPA_KERNELS`` updated with ``kernels``)."""
        self.sdpa_kernels = resolve_sdpa_kernels(kernels)
        set_sdpa_kernel(self.encoder, self.sdpa_kernels["encoder"])
        set_sdpa_kernel(self.predictor, self.sdpa_kernels["predictor"])
        set_sdpa_kernel(self.teacher.encoder, self.sdpa_kernels["teacher"])

    # ----------------------------------------------------------------- target access
    @property
    def teacher(self) -> FrozenTeacher:
        """The frozen (or EMA) target encoder's holder; not a submodule of this module."""
        return self._teacher[0]

    def teacher_on(self, device: torch.device) -> FrozenTeacher:
        """The target holder, moved to ``device`` first if needed (no host sync)."""
        teacher = self._teacher[0]
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        return teacher

    def compiled_modules(self) -> list[nn.Module]:
        return [self.encoder, self.predictor, self.teacher.encoder]

    def on_fit_start(self) -> None:
        self.teacher_on(self.device)

    def target_input(self, video: torch.Tensor) -> torch.Tensor:
        """The clip the target encoder reads (here: ``video`` itself)."""
        return video

    # ----------------------------------------------------------------- the step
    def training_loss(
        self, batch: dict, health: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Latent-regression loss of one batch: targets once per clip, encoder on context only.

        Args:
            batch: ``{"video": uint8 [B, C, T, H, W], "masks": [(ctx, tgt), ...]}`` on the device.
            health: also compute RankMe of encoder features and prediction / target std.
        """
        video = self.normalize(batch["video"])  # [B, C, T, H, W] float32
        teacher = self.teacher_on(video.device)
        clip = self.target_input(video)
        targets = latent_targets(teacher.encoder, clip, self.target_layer)  # [B, N, Dt]
        per_mask = gather_mask_targets(targets, batch["masks"])  # [[B, nt_m, Dt], ...]
        return masked_regression_loss(
            self.encoder,
            self.predictor,
            video,
            batch["masks"],
            per_mask,
            loss=self.loss_kind,
            health=health,
        )
