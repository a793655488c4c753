"""What both SALT LightningModules share: optimisation, logging, health, checkpoint metadata.

``SaltModule`` leaves one thing to its stages: ``training_loss(batch, health) -> (loss, stats)``
(the plain step of ``salt.step``). Around it this class provides:

- masks: ``setup()`` builds the ``MultiMaskCollator`` for the encoder's token grid and hands it to
  the DataModule (``set_mask_fn``), whose workers attach ``batch["masks"]``;
- optimisation: fused AdamW with SALT param groups, warmup→cosine lr and cosine weight decay keyed
  on optimizer steps (``salt.optim``, ``salt.schedules``); gradient-norm clipping from
  ``trainer.gradient_clip_val``; a non-finite loss or gradient skips the update on the device
  (``salt.step.prepare_optimizer_step``) and ``max_nonfinite`` skips in a row abort the run;
- logging without host syncs in the hot path: tensors are logged as tensors; Python floats (lr,
  weight decay, clips/s, data wait) only on the steps Lightning flushes to the loggers anyway;
- health every ``health_every`` steps (RankMe, std of predictions and targets);
- ``ckpt["salt"]`` metadata (docs/architecture.md), including the mean training loss since the
  previous checkpoint, accumulated on the device and read only when a checkpoint is written;
- the SDPA kernel: cuDNN attention is switched off while fitting (``cudnn_attention=False``).
  cuDNN builds an execution plan for every new sequence length (≈ 0.5 s on an H100), and SALT's
  masks give every batch new context / target lengths, so a run pays that cost on most of its
  first hundreds of steps. PyTorch then picks FlashAttention-2: eager ViT-L fits 12–21% faster,
  compiled ones equal (benchmarks/RESULTS.md, "`salt fit` end to end").
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

from salt.data.transforms import normalize
from salt.health import NonFiniteGuard
from salt.masks import MultiMaskCollator
from salt.optim import build_adamw, unwrap_optimizer
from salt.schedules import WarmupCosineSchedule
from salt.step import prepare_optimizer_step


def compile_blocks(module: nn.Module) -> None:
    """``torch.compile`` each transformer block in place (state-dict keys stay unchanged)."""
    for block in module.blocks:
        block.compile()


class SaltModule(pl.LightningModule):
    """Base of ``TeacherModule`` and ``StudentModule`` (not configured directly).

    Args:
        img_size: clip side in pixels (linked to ``data.crop_size`` by ``salt fit``).
        num_frames: frames per clip (linked to ``data.frames_per_clip``).
        mean: per-channel input mean in [0, 1]; stored with the model.
        std: per-channel input std in [0, 1]; stored with the model.
        masks: mask configs (``salt.masks``); None = SPEC.md's short- and long-range configs.
        lr: peak learning rate (after warmup).
        start_lr: learning rate at step 0.
        final_lr: learning rate at ``trainer.max_steps``.
        warmup_steps: optimizer steps of linear warmup.
        weight_decay: weight decay at step 0 (cosine schedule).
        final_weight_decay: weight decay at ``trainer.max_steps``.
        betas: AdamW betas.
        eps: AdamW epsilon.
        compile: ``torch.compile`` every transformer block.
        cudnn_attention: let PyTorch SDPA use cuDNN attention while fitting (False: excluded for
            the fit, restored after; see the module docstring).
        health_every: compute RankMe / std health signals every this many steps (0 = never).
        max_nonfinite: abort after this many consecutive non-finite (skipped) optimizer steps.
    """

    stage: ClassVar[str] = ""
    encoder: nn.Module  # the VideoViT that checkpoints and exports carry

    def __init__(
        self,
        *,
        img_size: int,
        num_frames: int,
        mean: Sequence[float],
        std: Sequence[float],
        masks: list[dict] | None,
        lr: float,
        start_lr: float,
        final_lr: float,
        warmup_steps: int,
        weight_decay: float,
        final_weight_decay: float,
        betas: Sequence[float],
        eps: float,
        compile: bool,
        health_every: int,
        max_nonfinite: int,
        cudnn_attention: bool = False,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std need 3 channels and std > 0, got {mean}, {std}")
        self.img_size, self.num_frames = int(img_size), int(num_frames)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.mask_configs = masks
        self.optim_cfg = {
            "lr": lr,
            "start_lr": start_lr,
            "final_lr": final_lr,
            "warmup_steps": warmup_steps,
            "weight_decay": weight_decay,
            "final_weight_decay": final_weight_decay,
            "betas": tuple(betas),
            "eps": eps,
        }
        self.use_compile = compile
        self.cudnn_attention = bool(cudnn_attention)
        self._cudnn_sdp_before: bool | None = None  # the process setting restored at teardown
        self.health_every = int(health_every)
        self.guard = NonFiniteGuard(max_nonfinite)
        self.mask_collator: MultiMaskCollator | None = None
        self.mlflow_run_id: str | None = None  # set by salt.tracking.TrackingCallback
        self._window_bad: torch.Tensor | None = None  # non-finite loss in this accumulation window
        self._loss_sum: torch.Tensor | None = None  # finite losses since the last checkpoint
        self._loss_count: torch.Tensor | None = None
        self._saved_loss: tuple[int, float | None] = (-1, None)
        self._timing = {"win_start": None, "clips": 0, "batches": 0, "wait": 0.0, "last_end": None}
        self._throughput: tuple[float, float] | None = None
        self._health_step = -1

    # ----------------------------------------------------------------- the step
    def training_loss(
        self, batch: dict, health: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's loss of one batch (see ``salt.step``); implemented by each stage."""
        raise NotImplementedError

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, T, H, W]`` → normalised float32 on the same device."""
        return normalize(video, self.mean, self.std)

    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')`` of this run's clips."""
        return self.encoder.grid((self.num_frames, self.img_size, self.img_size))

    def build_mask_collator(self, seed: int = 0) -> MultiMaskCollator:
        return MultiMaskCollator(self.grid(), configs=self.mask_configs, seed=seed)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        self.mask_collator = self.build_mask_collator()
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_mask_fn"):
            datamodule.set_mask_fn(self.mask_collator)
        if not self.cudnn_attention and torch.backends.cuda.cudnn_sdp_enabled():
            self._cudnn_sdp_before = True
            torch.backends.cuda.enable_cudnn_sdp(False)  # process-wide: forward and recompute agree
        if self.use_compile:
            for module in self.compiled_modules():
                compile_blocks(module)

    def teardown(self, stage: str) -> None:
        if self._cudnn_sdp_before is not None:
            torch.backends.cuda.enable_cudnn_sdp(self._cudnn_sdp_before)
            self._cudnn_sdp_before = None

    def compiled_modules(self) -> list[nn.Module]:
        """Modules whose blocks ``compile=True`` compiles (each stage lists its own)."""
        return [self.encoder]

    # ----------------------------------------------------------------- Lightning hooks
    def _is_log_step(self) -> bool:
        """Whether Lightning flushes metrics to the loggers after this batch."""
        connector = getattr(self.trainer, "_logger_connector", None)
        return bool(connector.should_update_logs) if connector is not None else True

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        step = self.global_step
        # once per optimizer step (the first micro-batch when gradients are accumulated)
        health = (
            self.health_every > 0 and step % self.health_every == 0 and step != self._health_step
        )
        if health:
            self._health_step = step
        loss, stats = self.training_loss(batch, health=health)
        detached = loss.detach()
        finite = torch.isfinite(detached)
        bad = ~finite
        self._window_bad = bad if self._window_bad is None else self._window_bad | bad
        if self._loss_sum is None:
            self._loss_sum = torch.zeros((), dtype=torch.float64, device=detached.device)
            self._loss_count = torch.zeros((), dtype=torch.int64, device=detached.device)
        self._loss_sum += torch.where(finite, detached.double(), 0.0)
        self._loss_count += finite.to(torch.int64)

        batch_size = batch["video"].shape[0]
        kw = {"on_step": True, "on_epoch": False, "sync_dist": False, "batch_size": batch_size}
        self.log("train/loss", detached, **kw)
        health_stats = {k: stats.pop(k) for k in ("rankme", "pred_std", "target_std") if k in stats}
        if health_stats:
            self.log_now({f"train/{k}": v for k, v in health_stats.items()})
        for key, value in stats.items():
            self.log(f"train/{key}", value, **kw)
        if self._is_log_step():
            # Python floats become device tensors inside self.log (a blocking copy), so they are
            # logged only when Lightning is about to read every metric on the host anyway.
            opt = unwrap_optimizer(self.optimizers())
            groups = opt.param_groups
            self.log("train/lr", float(groups[0]["lr"]), **kw)
            wd = [g["weight_decay"] for g in groups if g.get("apply_wd", True)]
            self.log("train/wd", float(wd[0] if wd else 0.0), **kw)
            if self._throughput is not None:
                self.log("train/clips_per_s", self._throughput[0], **kw)
                self.log("train/data_wait_s", self._throughput[1], **kw)
        return loss

    def log_now(self, metrics: dict[str, torch.Tensor]) -> None:
        """Send metrics straight to the loggers at this step (one host read; for rare signals
        such as health, which ``self.log`` would repeat at every later flush)."""
        if not self.trainer.is_global_zero or not self.loggers:
            return
        values = {k: float(v) for k, v in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(values, step=self.global_step)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        max_norm = self.trainer.gradient_clip_val
        if max_norm and self.trainer.gradient_clip_algorithm not in (None, "norm"):
            raise ValueError("salt clips the gradient norm only: gradient_clip_algorithm='norm'")
        norm, skipped = prepare_optimizer_step(optimizer, max_norm, self._window_bad)
        self._window_bad = None
        self.guard.update(skipped)
        kw = {"on_step": True, "on_epoch": False, "sync_dist": False, "batch_size": 1}
        self.log("train/grad_norm", norm, **kw)
        self.log("train/skipped_steps", self.guard.total.float(), **kw)
        interval = max(1, min(self.guard.max_consecutive, self.trainer.log_every_n_steps or 1))
        if (self.global_step + 1) % interval == 0:
            self.guard.check(self.global_step + 1)  # host read every `interval` steps only

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        """Clipping happens in ``on_before_optimizer_step`` (with the grad norm and the skip)."""

    def total_steps(self) -> int:
        """Optimizer steps of the run (``trainer.max_steps``): where every schedule ends."""
        steps = self.trainer.max_steps
        if steps is None or steps < 0:
            steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps) or steps < 1:
            raise ValueError("set trainer.max_steps: the lr / weight-decay schedules end there")
        return int(steps)

    def configure_optimizers(self, total_steps: int | None = None) -> dict:
        """Fused AdamW + ``WarmupCosineSchedule`` (stepped per optimizer step).

        Args:
            total_steps: schedule length; None reads ``trainer.max_steps`` (under a Trainer).
        """
        cfg = self.optim_cfg
        opt = build_adamw(
            self.named_parameters(), cfg["lr"], cfg["weight_decay"], cfg["betas"], cfg["eps"]
        )
        sched = WarmupCosineSchedule(
            opt,
            total_steps=self.total_steps() if total_steps is None else total_steps,
            warmup_steps=cfg["warmup_steps"],
            start_lr=cfg["start_lr"],
            lr=cfg["lr"],
            final_lr=cfg["final_lr"],
            weight_decay=cfg["weight_decay"],
            final_weight_decay=cfg["final_weight_decay"],
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        t = self._timing
        now = time.perf_counter()
        if t["last_end"] is not None:
            t["wait"] += now - t["last_end"]
        if t["win_start"] is None:
            t["win_start"] = now
        elif self._is_log_step() and t["batches"]:
            self._throughput = (t["clips"] / (now - t["win_start"]), t["wait"] / t["batches"])
            t.update(win_start=now, clips=0, batches=0, wait=0.0)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        t = self._timing
        t["clips"] += int(batch["video"].shape[0])
        t["batches"] += 1
        t["last_end"] = time.perf_counter()

    # ----------------------------------------------------------------- checkpoints
    def running_train_loss(self) -> float | None:
        """Mean finite training loss since the previous checkpoint (host read; at save time)."""
        step = self.global_step
        if self._saved_loss[0] == step:  # `last` and the periodic checkpoint share one value
            return self._saved_loss[1]
        value = None
        if self._loss_count is not None and int(self._loss_count) > 0:
            value = float(self._loss_sum / self._loss_count)
            self._loss_sum.zero_()
            self._loss_count.zero_()
        self._saved_loss = (step, value)
        return value

    def tracking_tags(self) -> dict[str, str]:
        """MLflow tags of this run (``salt.tracking.TrackingCallback`` adds kind and paths)."""
        return {"salt.stage": self.stage}

    def checkpoint_metadata(self) -> dict[str, Any]:
        """``ckpt["salt"]`` (docs/architecture.md); plain Python types only (weights_only-safe)."""
        return {
            "stage": self.stage,
            "encoder_config": dict(self.encoder.config),
            "encoder_prefix": "encoder.",
            "rope_convention": self.encoder.rope_convention,
            "mean": list(self.mean),
            "std": list(self.std),
            "step": int(self.global_step),
            "train_loss": self.running_train_loss(),
            "teacher": None,
            "mlflow_run_id": self.mlflow_run_id,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["salt"] = self.checkpoint_metadata()
