"""Stage 2 of SALT: a student ViT regresses a frozen teacher's latents.

The teacher (a stage-1 checkpoint or an exported ``.safetensors``, loaded strictly through
``salt.encoder_io``) runs once per clip on all tokens, without grad (bf16 under the Trainer's
autocast); its last layer (or ``target_layer``) goes through a parameter-free LayerNorm; one batched
gather picks each mask config's targets. The student encodes context tokens only; a narrow
predictor (12 × 384) maps them to the target positions at the *teacher's* width; L1, averaged over
the two mask configs. The parts and the step are ``salt.latent.LatentTargetModule``'s, shared with
the V-JEPA EMA baseline (``salt.ema.EMAModule``, its own module).

The teacher is held outside the module tree (``salt.latent``): absent from ``parameters()``,
``state_dict()``, every optimizer group and every DDP/FSDP wrap; ``requires_grad=False``, always
in eval mode. A checkpoint records the teacher's path and sha256 (not its weights) and resuming
verifies the hash. A sharding strategy should shard only ``encoder`` and ``predictor`` and place
the teacher itself (it is only read).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from salt.encoder_io import file_sha256, load_encoder
from salt.errors import UsageError
from salt.latent import FrozenTeacher, LatentTargetModule
from salt.models import VideoViT

__all__ = ["FrozenTeacher", "StudentModule", "teacher_mismatches"]

EMA_MOVED = (
    "the V-JEPA EMA baseline is its own module now: set model.class_path to salt.ema.EMAModule "
    "(configs/ema/vitl16.yaml) and drop model.teacher / model.teacher_mode; its ema_momentum, "
    "ema_final_momentum and predictor settings keep their names"
)


def teacher_mismatches(teacher: VideoViT, meta: dict, student: StudentModule) -> list[str]:
    """Every input-side setting in which the teacher differs from the student, as text."""
    cfg = teacher.config
    pairs = [
        ("patch_size", cfg["patch_size"], student.encoder.patch_size),
        ("tubelet_size", cfg["tubelet_size"], student.encoder.tubelet_size),
        ("in_chans", cfg["in_chans"], student.encoder.config["in_chans"]),
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


class StudentModule(LatentTargetModule):
    """Stage-2 LightningModule (``salt fit -c configs/student/vitl16.yaml --model.teacher T``).

    Args:
        encoder: registered student encoder name (``vit_large`` … ``vit_gigantic``).
        encoder_kwargs: extra ``VideoViT`` arguments for the student.
        img_size: clip side in pixels (linked to ``data.crop_size``).
        num_frames: frames per clip (linked to ``data.frames_per_clip``).
        teacher: stage-1 Lightning checkpoint or exported ``.safetensors``.
        teacher_mode: ``"frozen"`` (the only mode; ``"ema"`` is an error naming
            ``salt.ema.EMAModule``, where the V-JEPA baseline lives).
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
        if teacher == "ema" or teacher_mode == "ema":
            raise UsageError(EMA_MOVED)
        if teacher_mode != "frozen":
            raise UsageError(f"teacher_mode must be 'frozen', got {teacher_mode!r}")
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
        self.teacher_mode, self.loss_kind = teacher_mode, loss
        self._build_encoder(encoder, encoder_kwargs, act_checkpoint)
        self.teacher_info = None
        self._attach_target(self._load_teacher(teacher), target_layer)
        self._build_predictor(
            predictor_dim, predictor_depth, predictor_heads, predictor_mlp_hidden, act_checkpoint
        )

    def _load_teacher(self, path: str | None) -> VideoViT:
        if not path:
            raise ValueError(
                "StudentModule needs a teacher: pass --model.teacher PATH (a stage-1 checkpoint "
                "or an exported .safetensors); the V-JEPA EMA baseline is salt.ema.EMAModule"
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
        return encoder

    # ----------------------------------------------------------------- checkpoints
    def tracking_tags(self) -> dict[str, str]:
        info = self.teacher_info or {}
        return {
            **super().tracking_tags(),
            "salt.teacher_mode": self.teacher_mode,
            "salt.teacher_path": info.get("path", ""),
            "salt.teacher_sha256": info.get("sha256", ""),
        }

    def checkpoint_metadata(self) -> dict[str, Any]:
        return {**super().checkpoint_metadata(), "teacher": self.teacher_info}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = (checkpoint.get("salt") or {}).get("teacher") or {}
        if saved.get("sha256") and saved["sha256"] != self.teacher_info["sha256"]:
            raise ValueError(
                f"the teacher changed since this checkpoint: it was trained against "
                f"{saved.get('path')} (sha256 {saved['sha256'][:12]}…), now {self.teacher_info['path']} "
                f"(sha256 {self.teacher_info['sha256'][:12]}…); a student's targets are defined by "
                "its teacher, so resume with the original teacher file"
            )
