"""What both SALT LightningModules share: optimisation, logging, health, checkpoint metadata.

``SaltModule`` leaves one thing to its stages: ``training_loss(batch, health) -> (loss, stats)``
(the plain step of ``salt.step``). Around it this class provides:

- masks: ``setup()`` builds the ``MultiMaskCollator`` for the encoder's token grid and hands it to
  the DataModule (``set_mask_fn``), whose workers attach ``batch["masks"]``;
- optimisation: fused AdamW with SALT param groups, warmup→cosine lr and cosine weight decay keyed
  on optimizer steps (``salt.optim``, ``salt.schedules``); gradient-norm clipping from
  ``trainer.gradient_clip_val``; a non-finite loss or gradient skips the update on the device
  (``salt.optim.prepare_optimizer_step``) and ``max_nonfinite`` skips in a row abort the run;
- the skip is agreed by every rank without a collective of its own: a rank whose loss is not
  finite multiplies it by NaN, so its gradients are NaN (an L1 loss of NaN targets alone would
  not make them so: the backward of ``|x|`` at NaN is 0), the gradient all-reduce the step does
  anyway spreads the NaN to every rank, and every rank sees a non-finite grad norm and skips;
- logging without host syncs in the hot path: on the steps Lightning flushes to the loggers (every
  ``log_every_n_steps``), ``train/loss`` (mean over ranks of the finite losses),
  ``train/loss_mask{i}`` and ``train/nonfinite_losses`` (micro-batches with a non-finite loss,
  summed over ranks) are reduced over ranks in one all-reduce of a few numbers; Python floats (lr,
  weight decay, clips/s, data wait) are logged only on those steps too;
- health every ``health_every`` steps (RankMe, std of predictions and targets);
- ``ckpt["salt"]`` metadata (docs/architecture.md), including the mean training loss since the
  previous checkpoint over every rank (accumulated on the device, summed over ranks and read only
  when a checkpoint is written) and the number of skipped steps (restored on resume);
- compilation: ``compile=True`` compiles each transformer block (``compile_scope="blocks"``) or
  each whole module's forward (``"modules"``) with ``torch.compile(mode=compile_mode)`` where that
  can work (a CUDA device, Triton importable, a C compiler on PATH for Triton's launcher);
  elsewhere (CPU runs, a box without Triton or a compiler) it logs one warning and runs eager,
  so a shipped config with ``compile: true`` still runs everywhere;
- the SDPA kernel: cuDNN attention is switched off process-wide while fitting
  (``cudnn_attention=False``). cuDNN builds an execution plan for every new sequence length,
  and SALT's masks give every batch new context / target lengths, so a run pays that cost on
  most of its first hundreds of steps. PyTorch then picks FlashAttention-2 (see
  benchmarks/RESULTS.md, "`salt fit` end to end"). A call site of fixed length may still ask for cuDNN (``salt.models.set_sdpa_kernel``;
  the stage-2 frozen teacher does, see ``salt.student``).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import nn

from salt import watchdog
from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from salt.dist import sum_over_ranks
from salt.health import NonFiniteGuard
from salt.masks import MultiMaskCollator
from salt.models import VideoViT, create_encoder
from salt.optim import build_adamw, prepare_optimizer_step, unwrap_optimizer
from salt.schedules import WarmupCosineSchedule

log = logging.getLogger(__name__)
COMPILE_SCOPES = ("blocks", "modules")
_COMPILE_FALLBACK_WARNED = False


def compile_blocks(module: nn.Module, mode: str | None = None) -> None:
    """``torch.compile`` each transformer block in place (state-dict keys stay unchanged)."""
    for block in module.blocks:
        block.compile(mode=mode)


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot (or should not) run for ``device``; None when it can.

    Compiled training here means Inductor's Triton kernels: CUDA only, Triton importable, and a
    C compiler (Triton builds its kernel launcher with one the first time it runs).
    """
    if device.type != "cuda":
        return f"compiled training is for CUDA devices (this run is on {device.type})"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken install
        return f"Triton does not import ({type(exc).__name__}: {exc})"
    cc = os.environ.get("CC")
    if not (cc and shutil.which(cc)) and not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        return "no C compiler on PATH (cc, gcc or clang; Triton needs one)"
    return None


def compile_modules(
    modules: Sequence[nn.Module],
    device: torch.device,
    scope: str = "blocks",
    mode: str | None = None,
) -> bool:
    """Compile ``modules`` in place for a run on ``device``; False (and one warning per process)
    when ``compile_unavailable_reason`` says it cannot, in which case they stay eager.

    Args:
        modules: modules with ``.blocks`` (``VideoViT``, ``Predictor``).
        device: the device the run trains on.
        scope: ``"blocks"`` (each block: small graphs, quick to compile) or ``"modules"`` (each
            module's whole forward: fewer graph calls per step, longer compile).
        mode: ``torch.compile`` mode (None, ``"reduce-overhead"`` for CUDA graphs, ...).
    """
    global _COMPILE_FALLBACK_WARNED
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile_scope must be one of {COMPILE_SCOPES}, got {scope!r}")
    reason = compile_unavailable_reason(torch.device(device))
    if reason is not None:
        if not _COMPILE_FALLBACK_WARNED:
            _COMPILE_FALLBACK_WARNED = True
            log.warning("compile: true, but running eager: %s", reason)
        return False
    for module in modules:
        if scope == "blocks":
            compile_blocks(module, mode)
        else:
            module.compile(mode=mode)
    return True


class SaltModule(pl.LightningModule):
    """Base of ``TeacherModule``, ``StudentModule`` and ``EMAModule`` (not configured directly).

    The arguments below are defined here only: each stage declares its own arguments and
    forwards ``**kwargs`` to this constructor, and LightningCLI (jsonargparse) follows that call,
    so ``--model.init_args.lr`` and the rest are options of every stage. A stage whose recipe
    differs redeclares just the arguments whose defaults differ (``salt.ema.EMAModule``).

    Args:
        img_size: clip side in pixels (linked to ``data.crop_size`` by ``salt fit``).
        num_frames: frames per clip (linked to ``data.frames_per_clip``).
        mean: per-channel input mean in [0, 1]; stored with the model.
        std: per-channel input std in [0, 1]; stored with the model.
        masks: mask configs (``salt.masks``); None = V-JEPA's short- and long-range configs (docs/method.md, "Masks").
        lr: peak learning rate (after warmup).
        start_lr: learning rate at step 0.
        final_lr: learning rate at ``trainer.max_steps``.
        warmup_steps: optimizer steps of linear warmup.
        weight_decay: weight decay at step 0 (cosine schedule).
        final_weight_decay: weight decay at ``trainer.max_steps``.
        betas: AdamW betas.
        eps: AdamW epsilon.
        compile: ``torch.compile`` the stage's modules where it can run (CUDA with Triton and a C
            compiler); elsewhere one warning and eager (see the module docstring).
        compile_scope: ``"blocks"`` (every transformer block) or ``"modules"`` (every module's
            whole forward).
        compile_mode: ``torch.compile`` mode (None = default; ``"reduce-overhead"`` = CUDA graphs).
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
        img_size: int = 224,
        num_frames: int = 16,
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
        compile: bool = False,
        compile_scope: Literal["blocks", "modules"] = "blocks",
        compile_mode: str | None = None,
        cudnn_attention: bool = False,
        health_every: int = 100,
        max_nonfinite: int = 20,
    ) -> None:
        super().__init__()
        if compile_scope not in COMPILE_SCOPES:
            raise ValueError(
                f"compile_scope must be one of {COMPILE_SCOPES}, got {compile_scope!r}"
            )
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
        self.compile_scope, self.compile_mode = compile_scope, compile_mode
        self.compiled = False  # set by setup("fit"): whether compilation really happened
        self._norm_stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cudnn_attention = bool(cudnn_attention)
        self._cudnn_sdp_before: bool | None = None  # the process setting restored at teardown
        self.health_every = int(health_every)
        self.guard = NonFiniteGuard(max_nonfinite)
        self.mask_collator: MultiMaskCollator | None = None
        self.mlflow_run_id: str | None = None  # set by salt.tracking.TrackingCallback
        self._window_bad: torch.Tensor | None = None  # non-finite loss in this accumulation window
        self._nonfinite: torch.Tensor | None = None  # micro-batches with a non-finite loss (rank)
        self._loss_sum: torch.Tensor | None = None  # finite losses since the last checkpoint
        self._loss_count: torch.Tensor | None = None
        self._saved_loss: tuple[int, float | None] = (-1, None)
        self._timing = {"win_start": None, "clips": 0, "batches": 0, "wait": 0.0, "last_end": None}
        self._throughput: tuple[float, float] | None = None
        self._health_step = -1
        # every constructor argument of the stage and of this class (Lightning walks the chain
        # of __init__ frames); MLflow params come from the resolved config, not from here
        self.save_hyperparameters(logger=False)

    # ----------------------------------------------------------------- the step
    def training_loss(
        self, batch: dict, health: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's loss of one batch (see ``salt.step``); implemented by each stage."""
        raise NotImplementedError

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, C, T, H, W]`` → normalised float32 on the same device.

        mean/std are device tensors made once per device: built from Python lists at every step,
        they were a blocking host→device copy (a host sync) in every training step.
        """
        stats = self._norm_stats.get(video.device)
        if stats is None:
            stats = tuple(
                torch.tensor(v, dtype=torch.float32, device=video.device)
                for v in (self.mean, self.std)
            )
            self._norm_stats[video.device] = stats
        return normalize(video, *stats)

    def _build_encoder(
        self, name: str, kwargs: dict[str, Any] | None, act_checkpoint: bool
    ) -> VideoViT:
        """The trained encoder (``self.encoder``): a registered size at this run's clip size."""
        self.encoder = create_encoder(
            name,
            **{
                **(kwargs or {}),
                "img_size": self.img_size,
                "num_frames": self.num_frames,
                "act_checkpoint": act_checkpoint,
            },
        )
        self.grid()  # fail now if the clip does not divide into tubelets × patches
        return self.encoder

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
        self.apply_sdpa_flags()
        if self.use_compile:
            self.compiled = compile_modules(
                self.compiled_modules(),
                self.trainer.strategy.root_device,
                self.compile_scope,
                self.compile_mode,
            )

    def apply_sdpa_flags(self) -> None:
        """Switch cuDNN SDPA off process-wide unless ``cudnn_attention`` (restored at teardown).

        Call sites with their own kernel (``salt.models.set_sdpa_kernel``) choose inside this."""
        if not self.cudnn_attention and torch.backends.cuda.cudnn_sdp_enabled():
            self._cudnn_sdp_before = True
            torch.backends.cuda.enable_cudnn_sdp(False)  # process-wide: forward and recompute agree

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

    def _is_reduce_step(self) -> bool:
        """The log steps as every rank computes them alike (Lightning's ``should_update_logs``
        also turns true on ``should_stop``, which need not be set on every rank at once)."""
        every = self.trainer.log_every_n_steps
        return bool(every) and (self.global_step + 1) % every == 0

    def _log_over_ranks(
        self, loss: torch.Tensor, finite: torch.Tensor, stats: dict[str, torch.Tensor], kw: dict
    ) -> None:
        """One all-reduce of ``[Σ finite loss, n finite, Σ non-finite count, Σ stats]`` over
        ranks, then ``train/loss`` etc. as means over ranks (an all-non-finite step logs NaN)."""
        keys = list(stats)
        zero = torch.zeros((), dtype=torch.float64, device=loss.device)
        vec = torch.stack(
            [
                torch.where(finite, loss.double(), zero),
                finite.double(),
                self._nonfinite.double(),
                *[torch.where(finite, stats[k].double(), zero) for k in keys],
            ]
        )  # [3 + n_stats] float64
        vec = sum_over_ranks(vec)
        count = vec[1]
        self.log("train/loss", (vec[0] / count).float(), **kw)
        self.log("train/nonfinite_losses", vec[2].float(), **kw)
        for i, key in enumerate(keys):
            self.log(f"train/{key}", (vec[3 + i] / count).float(), **kw)

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
            self._nonfinite = torch.zeros((), dtype=torch.int64, device=detached.device)
        self._loss_sum += torch.where(finite, detached.double(), 0.0)
        self._loss_count += finite.to(torch.int64)
        self._nonfinite += bad.to(torch.int64)
        # NaN gradients on this rank whenever its loss is not finite (see the module docstring):
        # one scalar multiply, no host read, and the skip is then the same on every rank
        loss = loss * torch.where(finite, 1.0, float("nan"))

        batch_size = batch["video"].shape[0]
        kw = {"on_step": True, "on_epoch": False, "sync_dist": False, "batch_size": batch_size}
        health_stats = {k: stats.pop(k) for k in ("rankme", "pred_std", "target_std") if k in stats}
        if health_stats:
            self.log_now({f"train/{k}": v for k, v in health_stats.items()})
        if self._is_reduce_step():
            # the values Lightning is about to read on the host anyway, reduced over ranks first
            self._log_over_ranks(detached, finite, stats, kw)
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
        # the skip is agreed (see the module docstring): every rank holds the same count
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
        watchdog.mark("data wait (next batch)")  # after every callback's batch end

    # ----------------------------------------------------------------- checkpoints
    def running_train_loss(self) -> float | None:
        """Mean finite training loss since the previous checkpoint over every rank (host read at
        save time; one all-reduce of two numbers where several ranks save together)."""
        step = self.global_step
        if self._saved_loss[0] == step:  # checkpoints of one step share one value
            return self._saved_loss[1]
        value = None
        if self._loss_count is not None:
            pair = sum_over_ranks(torch.stack([self._loss_sum, self._loss_count.double()]))
            total, count = pair.tolist()
            value = total / count if count > 0 else None
            self._loss_sum.zero_()
            self._loss_count.zero_()
        self._saved_loss = (step, value)
        return value

    def tracking_tags(self) -> dict[str, str]:
        """MLflow tags of this run (``salt.tracking.TrackingCallback`` adds kind and paths; the
        job's attempt and restart tags come from ``salt.run_tags`` where a job sets them)."""
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
            "skipped_steps": self.guard.count(),
            "teacher": None,
            "mlflow_run_id": self.mlflow_run_id,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["salt"] = self.checkpoint_metadata()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        skipped = (checkpoint.get("salt") or {}).get("skipped_steps")
        if skipped:
            self.guard.start_from(int(skipped))  # train/skipped_steps continues across resumes
