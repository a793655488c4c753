"""The V-JEPA baseline: the target encoder is an EMA copy of the encoder (docs/method.md, "EMA").

``salt fit -c configs/ema/vitl16.yaml`` trains it, so users can reproduce the SALT-vs-V-JEPA
comparison on their own data with the same masks, predictor, loss, data pipeline and step code as
SALT (``salt.latent.LatentTargetModule``). What differs is the target and, by default, the
optimisation recipe, which follows V-JEPA 2's released configs rather than SALT's:

- target encoder: a copy of the encoder at initialisation, then after every optimizer step
  ``target ← m·target + (1 − m)·encoder``; momentum ``m`` constant 0.99925 (V-JEPA 2), or linear
  ``ema_momentum → ema_final_momentum`` over the run (V-JEPA 1: 0.998 → 1.0);
- AdamW betas (0.9, 0.999) (PyTorch's default, which V-JEPA keeps; SALT uses (0.9, 0.95));
- lr "warmup–stable–decay" (``lr_schedule="wsd"``): linear ``start_lr → lr``, constant, then a
  linear cooldown to ``final_lr`` over the last ``cooldown_fraction`` of the run (V-JEPA 2's
  pretraining keeps the lr constant after warmup and anneals in a separate cooldown phase);
  ``"cosine"`` is SALT's / V-JEPA 1's warmup + cosine;
- weight decay constant 0.04 (``final_weight_decay`` equal to ``weight_decay``).

Checkpoints carry the target encoder's weights under ``ckpt["salt_ema_teacher"]`` (the key
predates this module; ``salt.encoder_io.EMA_STATE_KEY``), and ``salt export`` / ``load_encoder``
/ ``salt-probe`` / ``LiveProbe`` use that target encoder by default, as V-JEPA evaluates it
(``--which online`` for the trained encoder). FSDP is refused for this module: the update lerps a
full copy toward sharded weights; use DDP.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch

from salt.encoder_io import EMA_STATE_KEY
from salt.latent import LatentTargetModule
from salt.models import VideoViT
from salt.optim import build_adamw
from salt.schedules import WarmupCosineSchedule, ema_momentum, linear

__all__ = ["EMA_STATE_KEY", "EMAModule", "WarmupStableDecaySchedule"]


class WarmupStableDecaySchedule(WarmupCosineSchedule):
    """lr: linear ``start_lr → lr`` over ``warmup_steps``, constant, then linear to ``final_lr``
    over the last ``decay_steps``; weight decay as ``WarmupCosineSchedule`` (cosine between its
    two values, constant when they are equal). Every value is final at ``total_steps``.

    Args:
        decay_steps: optimizer steps of the final linear decay (0: none; the lr stays at ``lr``).
        optimizer, total_steps, warmup_steps, start_lr, lr, final_lr, weight_decay,
            final_weight_decay, last_epoch: see ``salt.schedules.WarmupCosineSchedule``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int,
        decay_steps: int,
        start_lr: float,
        lr: float,
        final_lr: float,
        weight_decay: float,
        final_weight_decay: float,
        last_epoch: int = -1,
    ) -> None:
        if decay_steps < 0 or warmup_steps + decay_steps > total_steps:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) + decay_steps ({decay_steps}) must fit in "
                f"total_steps ({total_steps})"
            )
        self.decay_steps = int(decay_steps)  # read by lr_at during super().__init__
        super().__init__(
            optimizer, total_steps, warmup_steps, start_lr, lr, final_lr,
            weight_decay, final_weight_decay, last_epoch,
        )  # fmt: skip

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return linear(step, self.warmup_steps, self.start_lr, self.peak_lr)
        decay_start = self.total_steps - self.decay_steps
        if step < decay_start:
            return self.peak_lr
        return linear(step - decay_start, self.decay_steps, self.peak_lr, self.final_lr)


class EMAModule(LatentTargetModule):
    """V-JEPA baseline LightningModule (``salt fit -c configs/ema/vitl16.yaml``).

    Args:
        encoder: registered encoder name (``salt.models.list_encoders()``).
        encoder_kwargs: extra ``VideoViT`` arguments.
        ema_momentum: EMA momentum (constant; the start value if ``ema_final_momentum`` is set).
        ema_final_momentum: None for a constant momentum (V-JEPA 2), else linear to this (V-JEPA 1:
            0.998 → 1.0).
        target_layer: target-encoder block whose output is the target (-1: the final output).
        predictor_dim: predictor width (384).
        predictor_depth: predictor blocks (12).
        predictor_heads: predictor heads (12).
        predictor_mlp_hidden: predictor MLP width (1536).
        loss: ``"l1"`` (V-JEPA) or ``"mse"``.
        lr_schedule: ``"wsd"`` (V-JEPA 2: warmup, constant, linear cooldown) or ``"cosine"``.
        cooldown_fraction: share of the run spent in the final linear lr decay (``"wsd"`` only).
        act_checkpoint: activation checkpointing in encoder and predictor.
        sdpa_kernels: SDPA kernel per call site (``salt.student.StudentModule``; the EMA target
            encoder is the ``teacher`` site).
        lr: peak learning rate (V-JEPA 2: 5.25e-4).
        start_lr: learning rate at step 0 (V-JEPA 2: 1e-4).
        warmup_steps: optimizer steps of linear warmup (V-JEPA 2: 12 000).
        final_weight_decay: weight decay at ``trainer.max_steps`` (V-JEPA 2: constant 0.04).
        betas: AdamW betas (V-JEPA 2: PyTorch's default (0.9, 0.999)).
        **kwargs: the other clip size, masks, normalisation, optimisation, compilation and health
            arguments of ``salt.module_base.SaltModule`` (same defaults as SALT's).
    """

    stage = "ema"

    def __init__(
        self,
        encoder: str = "vit_large",
        encoder_kwargs: dict[str, Any] | None = None,
        ema_momentum: float = 0.99925,
        ema_final_momentum: float | None = None,
        target_layer: int = -1,
        predictor_dim: int = 384,
        predictor_depth: int = 12,
        predictor_heads: int = 12,
        predictor_mlp_hidden: int = 1536,
        loss: Literal["l1", "mse"] = "l1",
        lr_schedule: Literal["wsd", "cosine"] = "wsd",
        cooldown_fraction: float = 0.05,
        act_checkpoint: bool = False,
        sdpa_kernels: dict[str, str | None] | None = None,
        lr: float = 5.25e-4,
        start_lr: float = 1e-4,
        warmup_steps: int = 12_000,
        final_weight_decay: float = 0.04,
        betas: tuple[float, float] = (0.9, 0.999),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            lr=lr,
            start_lr=start_lr,
            warmup_steps=warmup_steps,
            final_weight_decay=final_weight_decay,
            betas=betas,
            **kwargs,
        )
        for name, m in (("ema_momentum", ema_momentum), ("ema_final_momentum", ema_final_momentum)):
            if m is not None and not 0.0 <= m <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {m}")
        if not 0.0 <= cooldown_fraction < 1.0:
            raise ValueError(f"cooldown_fraction must be in [0, 1), got {cooldown_fraction}")
        self.loss_kind = loss
        self.ema = (ema_momentum, ema_final_momentum)
        self.lr_schedule, self.cooldown_fraction = lr_schedule, float(cooldown_fraction)
        self._total_steps: int | None = None
        self._build_encoder(encoder, encoder_kwargs, act_checkpoint)
        self._attach_target(copy.deepcopy(self.encoder), target_layer)
        self._build_predictor(
            predictor_dim, predictor_depth, predictor_heads, predictor_mlp_hidden, act_checkpoint
        )
        self._set_sdpa_kernels(sdpa_kernels)

    @property
    def target_encoder(self) -> VideoViT:
        """The EMA target encoder (what V-JEPA evaluates and ``LiveProbe`` probes by default)."""
        return self.teacher.encoder

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self, total_steps: int | None = None) -> dict:
        """Fused AdamW + the V-JEPA-style schedule (``lr_schedule``), stepped per optimizer step.

        Args:
            total_steps: schedule length; None reads ``trainer.max_steps`` (under a Trainer).
        """
        if self.lr_schedule == "cosine":
            out = super().configure_optimizers(total_steps)
        else:
            cfg = self.optim_cfg
            total = self.total_steps() if total_steps is None else total_steps
            opt = build_adamw(
                self.named_parameters(), cfg["lr"], cfg["weight_decay"], cfg["betas"], cfg["eps"]
            )
            decay = min(round(self.cooldown_fraction * total), total - cfg["warmup_steps"])
            sched = WarmupStableDecaySchedule(
                opt,
                total_steps=total,
                warmup_steps=cfg["warmup_steps"],
                decay_steps=max(decay, 0),
                start_lr=cfg["start_lr"],
                lr=cfg["lr"],
                final_lr=cfg["final_lr"],
                weight_decay=cfg["weight_decay"],
                final_weight_decay=cfg["final_weight_decay"],
            )
            out = {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        self._total_steps = out["lr_scheduler"]["scheduler"].total_steps
        return out

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema_update(self.global_step)

    def momentum_at(self, step: int) -> float:
        """EMA momentum used after ``step`` optimizer steps."""
        return ema_momentum(step, self._total_steps or 1, *self.ema)

    @torch.no_grad()
    def ema_update(self, step: int) -> None:
        """target ← m·target + (1 − m)·encoder, with m from the momentum schedule at ``step``.

        Called after every optimizer step (by ``optimizer_step`` under a Trainer; a loop without
        one calls it itself after ``opt.step()``).
        """
        m = self.momentum_at(step)
        target = self.teacher_on(self.device)
        t_params = list(target.encoder.parameters())
        s_params = [p.detach() for p in self.encoder.parameters()]
        torch._foreach_lerp_(t_params, s_params, 1.0 - m)

    # ----------------------------------------------------------------- checkpoints
    def tracking_tags(self) -> dict[str, str]:
        return {
            **super().tracking_tags(),
            "salt.teacher_mode": "ema",
            "salt.teacher_path": "ema",
            "salt.teacher_sha256": "",
        }

    def checkpoint_metadata(self) -> dict[str, Any]:
        momentum, final = self.ema
        return {
            **super().checkpoint_metadata(),
            "ema": {"momentum": momentum, "final_momentum": final, "state_key": EMA_STATE_KEY},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[EMA_STATE_KEY] = self.teacher.encoder.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if EMA_STATE_KEY not in checkpoint:
            raise ValueError(
                f"checkpoint has no EMA target encoder ({EMA_STATE_KEY!r}): was it a SALT "
                "student or teacher run? Resume it with its own module"
            )
        self.teacher.encoder.load_state_dict(checkpoint[EMA_STATE_KEY], strict=True)
