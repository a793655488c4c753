"""Stage 2 of SALT: a student ViT regresses a frozen teacher's latents (SPEC.md stage 2).

The teacher (a stage-1 checkpoint, an exported ``.safetensors``, or a V-JEPA 2 / VideoMAE encoder
written by ``salt import``; loaded strictly through ``salt.encoder_io``) runs once per clip on all
tokens, without grad (bf16 under the Trainer's autocast); its last layer (or ``target_layer``)
goes through a parameter-free LayerNorm; one batched gather picks each mask config's targets. The
student encodes context tokens only; a narrow predictor (12 × 384) maps them to the target
positions at the *teacher's* width (which may differ from the student's); L1, averaged over the
two mask configs. ``teacher_mode="ema"`` (or ``teacher: ema``) is the V-JEPA baseline instead:
the teacher is an EMA copy of the student (momentum 0.99925 constant, or linear to a final value).

How the teacher stays frozen — and out of DDP/FSDP: it is held in a plain Python list
(``self._teacher``), so it is *not* a submodule. It is therefore absent from ``parameters()``,
``state_dict()``, every optimizer group, and from whatever module tree a strategy wraps or shards;
the module moves it to the batch's device itself. It has ``requires_grad=False`` and sits in a
``FrozenTeacher`` whose ``train()`` always means ``eval()``. A checkpoint records the teacher's
path and sha256 (not its weights) and resuming verifies the hash; the EMA teacher *is* trainable
state, so its weights go into the checkpoint under ``"salt_ema_teacher"``. A sharding strategy
should shard only ``encoder`` and ``predictor`` and place the teacher itself (it is only read).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from salt.encoder_io import file_sha256, load_encoder
from salt.models import Predictor, VideoViT, create_encoder
from salt.module_base import SaltModule
from salt.schedules import ema_momentum
from salt.step import gather_mask_targets, latent_loss, latent_targets

EMA_STATE_KEY = "salt_ema_teacher"


class FrozenTeacher(nn.Module):
    """Holds the teacher encoder: no gradients, and ``train()`` always leaves it in eval mode."""

    def __init__(self, encoder: VideoViT) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)


def teacher_mismatches(teacher: VideoViT, meta: dict, student: StudentModule) -> list[str]:
    """Every input-side setting in which the teacher differs from the student, as text.

    A salt teacher runs at the clip size it was trained at. An imported one (``salt import``)
    whose positions come from each clip's grid (RoPE, 3D sin-cos: V-JEPA 2) runs at the
    student's clip size, as V-JEPA 2 itself evaluates at other sizes than it trained at; one
    that numbers a fixed grid (``sincos_1d``: VideoMAE) must see that grid.
    """
    cfg = teacher.config
    pairs = [
        ("patch_size", cfg["patch_size"], student.encoder.patch_size),
        ("tubelet_size", cfg["tubelet_size"], student.encoder.tubelet_size),
        ("in_chans", cfg["in_chans"], student.encoder.config["in_chans"]),
    ]
    if not (meta.get("stage") == "imported" and cfg["pos_embed"] in ("rope", "sincos")):
        pairs += [
            ("num_frames (data.frames_per_clip)", cfg["num_frames"], student.num_frames),
            ("img_size (data.crop_size)", list(cfg["img_size"]), [student.img_size] * 2),
        ]
    out = [f"{name}: teacher {a} vs student {b}" for name, a, b in pairs if a != b]
    for name in ("mean", "std"):
        a, b = list(meta[name]), getattr(student, name)
        if len(a) != len(b) or not all(
            math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b, strict=False)
        ):
            out.append(f"{name}: teacher {a} vs student {b}")
    return out


class StudentModule(SaltModule):
    """Stage-2 LightningModule (``salt fit -c configs/student/vitl16.yaml --model.teacher T``).

    Args:
        encoder: registered student encoder name (``vit_large`` … ``vit_gigantic``).
        encoder_kwargs: extra ``VideoViT`` arguments for the student.
        img_size: clip side in pixels (linked to ``data.crop_size``).
        num_frames: frames per clip (linked to ``data.frames_per_clip``).
        teacher: stage-1 Lightning checkpoint or exported ``.safetensors``; ``"ema"`` is shorthand
            for ``teacher_mode="ema"``.
        teacher_mode: ``"frozen"`` (SALT) or ``"ema"`` (V-JEPA baseline: EMA copy of the student).
        ema_momentum: EMA momentum (constant; the start value if ``ema_final_momentum`` is set).
        ema_final_momentum: None for a constant momentum (V-JEPA 2), else linear to this (V-JEPA 1:
            0.998 → 1.0).
        target_layer: teacher block whose output is the target (-1: the final, normed output).
        predictor_dim: predictor width (384).
        predictor_depth: predictor blocks (12).
        predictor_heads: predictor heads (12).
        predictor_mlp_hidden: predictor MLP width (1536).
        loss: ``"l1"`` (SALT) or ``"mse"``.
        act_checkpoint: activation checkpointing in student encoder and predictor.
        masks, mean, std, lr, start_lr, final_lr, warmup_steps, weight_decay, final_weight_decay,
            betas, eps, compile, cudnn_attention, health_every, max_nonfinite:
                see ``salt.module_base.SaltModule``.
    """

    stage = "student"

    def __init__(
        self,
        encoder: str = "vit_large",
        encoder_kwargs: dict[str, Any] | None = None,
        img_size: int = 224,
        num_frames: int = 16,
        teacher: str | None = None,
        teacher_mode: Literal["frozen", "ema"] = "frozen",
        ema_momentum: float = 0.99925,
        ema_final_momentum: float | None = None,
        target_layer: int = -1,
        predictor_dim: int = 384,
        predictor_depth: int = 12,
        predictor_heads: int = 12,
        predictor_mlp_hidden: int = 1536,
        loss: Literal["l1", "mse"] = "l1",
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
            cudnn_attention=cudnn_attention,
            health_every=health_every,
            max_nonfinite=max_nonfinite,
        )
        self.save_hyperparameters(logger=False)  # MLflow params come from the resolved config
        if teacher == "ema":
            teacher, teacher_mode = None, "ema"
        self.teacher_mode, self.loss_kind = teacher_mode, loss
        self.ema = (ema_momentum, ema_final_momentum)
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
        self.teacher_info = None
        if teacher_mode == "frozen":
            teacher_encoder = self._load_teacher(teacher)
        elif teacher_mode == "ema":
            if teacher is not None:
                raise ValueError(
                    "teacher_mode='ema' copies the student; do not also pass a teacher"
                )
            teacher_encoder = copy.deepcopy(self.encoder)
        else:
            raise ValueError(f"teacher_mode must be 'frozen' or 'ema', got {teacher_mode!r}")
        depth = len(teacher_encoder.blocks)
        if not -depth <= target_layer < depth:
            raise ValueError(f"target_layer {target_layer} outside the teacher's {depth} blocks")
        self.target_layer = target_layer
        # A list, not an attribute nn.Module registers: see the module docstring.
        self._teacher: list[FrozenTeacher] = [FrozenTeacher(teacher_encoder)]
        self._total_steps: int | None = None
        self.predictor = Predictor(
            in_dim=self.encoder.embed_dim,
            out_dim=teacher_encoder.embed_dim,
            embed_dim=predictor_dim,
            depth=predictor_depth,
            num_heads=predictor_heads,
            mlp_hidden_dim=predictor_mlp_hidden,
            num_mask_tokens=len(self.build_mask_collator().generators),
            pos_embed=self.encoder.pos_embed,
            attn_backend=self.encoder.attn_backend,
            act_checkpoint=act_checkpoint,
        )

    def _load_teacher(self, path: str | None) -> VideoViT:
        if not path:
            raise ValueError(
                "StudentModule needs a teacher: pass --model.teacher PATH (a stage-1 checkpoint "
                "or an exported .safetensors), or teacher_mode='ema' for the V-JEPA baseline"
            )
        if not Path(path).is_file():
            raise FileNotFoundError(f"teacher checkpoint not found: {path} (--model.teacher)")
        encoder, meta = load_encoder(path, attn_backend=self.encoder.attn_backend)
        mismatches = teacher_mismatches(encoder, meta, self)
        if mismatches:
            raise ValueError(
                f"teacher {path} does not match this student: {'; '.join(mismatches)}. Train the "
                "student with the teacher's input settings, or use a matching teacher."
            )
        self.teacher_info = {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}
        if meta.get("stage") == "imported":  # which public model it came from
            self.teacher_info["source"] = (meta.get("source") or {}).get("format")
        return encoder

    # ----------------------------------------------------------------- teacher access
    @property
    def teacher(self) -> FrozenTeacher:
        """The frozen (or EMA) teacher; not a submodule of this module."""
        return self._teacher[0]

    def teacher_on(self, device: torch.device) -> FrozenTeacher:
        """The teacher, moved to ``device`` first if needed (no host sync)."""
        teacher = self._teacher[0]
        if next(teacher.parameters()).device != device:
            teacher.to(device)
        return teacher

    def compiled_modules(self) -> list[nn.Module]:
        return [self.encoder, self.predictor, self.teacher.encoder]

    def on_fit_start(self) -> None:
        self.teacher_on(self.device)

    # ----------------------------------------------------------------- the step
    def training_loss(
        self, batch: dict, health: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """SALT loss of one batch: teacher targets once per clip, student on context only.

        Args:
            batch: ``{"video": uint8 [B, C, T, H, W], "masks": [(ctx, tgt), ...]}`` on the device.
            health: also compute RankMe of student features and prediction / target std.
        """
        video = self.normalize(batch["video"])  # [B, C, T, H, W] float32
        teacher = self.teacher_on(video.device)
        targets = latent_targets(teacher.encoder, video, self.target_layer)  # [B, N, Dt]
        per_mask = gather_mask_targets(targets, batch["masks"])  # [[B, nt_m, Dt], ...]
        return latent_loss(
            self.encoder,
            self.predictor,
            video,
            batch["masks"],
            per_mask,
            loss=self.loss_kind,
            health=health,
        )

    # ----------------------------------------------------------------- EMA baseline
    def configure_optimizers(self, total_steps: int | None = None) -> dict:
        out = super().configure_optimizers(total_steps)
        self._total_steps = out["lr_scheduler"]["scheduler"].total_steps
        return out

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.teacher_mode == "ema":
            self.ema_update(self.global_step)

    @torch.no_grad()
    def ema_update(self, step: int) -> None:
        """teacher ← m·teacher + (1 − m)·student, with m from the momentum schedule at ``step``."""
        m = ema_momentum(step, self._total_steps or 1, *self.ema)
        teacher = self.teacher_on(self.device)
        t_params = list(teacher.encoder.parameters())
        s_params = [p.detach() for p in self.encoder.parameters()]
        torch._foreach_lerp_(t_params, s_params, 1.0 - m)

    # ----------------------------------------------------------------- checkpoints
    def tracking_tags(self) -> dict[str, str]:
        info = self.teacher_info or {}
        return {
            **super().tracking_tags(),
            "salt.teacher_mode": self.teacher_mode,
            "salt.teacher_path": info.get("path", self.teacher_mode),
            "salt.teacher_sha256": info.get("sha256", ""),
        }

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {**super().checkpoint_metadata(), "teacher": self.teacher_info}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.teacher_mode == "ema":
            checkpoint[EMA_STATE_KEY] = self.teacher.encoder.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.teacher_mode == "ema":
            if EMA_STATE_KEY not in checkpoint:
                raise ValueError(
                    "checkpoint has no EMA teacher state (was it a frozen-teacher run?)"
                )
            self.teacher.encoder.load_state_dict(checkpoint[EMA_STATE_KEY], strict=True)
            return
        saved = (checkpoint.get("salt") or {}).get("teacher") or {}
        if saved.get("sha256") and saved["sha256"] != self.teacher_info["sha256"]:
            raise ValueError(
                f"the teacher changed since this checkpoint: it was trained against "
                f"{saved.get('path')} (sha256 {saved['sha256'][:12]}…), now {self.teacher_info['path']} "
                f"(sha256 {self.teacher_info['sha256'][:12]}…); a student's targets are defined by "
                "its teacher, so resume with the original teacher file"
            )
