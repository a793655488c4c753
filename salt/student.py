"""Stage 2 of SALT: a student ViT regresses a frozen teacher's latents.

The teacher (a stage-1 checkpoint, an exported ``.safetensors``, or a V-JEPA 2 / VideoMAE encoder
written by ``salt import``; loaded strictly through ``salt.encoder_io``) runs once per clip on all
tokens, without grad (bf16 under the Trainer's autocast); its last layer (or ``target_layer``)
goes through a parameter-free LayerNorm; one batched gather picks each mask config's targets. The
student encodes context tokens only; a narrow predictor (12 × 384) maps them to the target
positions at the *teacher's* width (which may differ from the student's); L1, averaged over the
two mask configs. The parts and the step are ``salt.latent.LatentTargetModule``'s, shared with
the V-JEPA EMA baseline (``salt.ema.EMAModule``, its own module).

The teacher is held outside the module tree (``salt.latent``): absent from ``parameters()``,
``state_dict()``, every optimizer group and every DDP/FSDP wrap; ``requires_grad=False``, always
in eval mode. A checkpoint records the teacher's path and sha256 (not its weights) and resuming
verifies the hash (rank 0 hashes the file once per job in ``setup`` and broadcasts it: a multi-GB
teacher is not read again by every rank). A sharding strategy should shard only ``encoder`` and
``predictor`` and place the teacher itself (it is only read). ``teacher_precision`` casts the
teacher once to bf16 or makes its block matmuls FP8 (``salt.fp8``); ``sdpa_kernels`` picks each
call site's attention kernel (``salt.latent.DEFAULT_SDPA_KERNELS``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch

from salt.dist import from_rank_zero
from salt.encoder_io import file_sha256, load_encoder
from salt.errors import MissingInputError, UsageError
from salt.fp8 import check_teacher_precision, prepare_teacher, teacher_input
from salt.latent import (
    DEFAULT_SDPA_KERNELS,
    FrozenTeacher,
    LatentTargetModule,
    resolve_sdpa_kernels,
)
from salt.models import VideoViT

__all__ = [
    "DEFAULT_SDPA_KERNELS",
    "FrozenTeacher",
    "StudentModule",
    "resolve_sdpa_kernels",
    "teacher_mismatches",
]

EMA_MOVED = (
    "the V-JEPA EMA baseline is its own module now: set model.class_path to salt.ema.EMAModule "
    "(configs/ema/vitl16.yaml) and drop model.teacher / model.teacher_mode; its ema_momentum, "
    "ema_final_momentum and predictor settings keep their names"
)


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


class StudentModule(LatentTargetModule):
    """Stage-2 LightningModule (``salt fit -c configs/student/vitl16.yaml --model.teacher T``).

    Args:
        encoder: registered student encoder name (``vit_large`` … ``vit_gigantic``).
        encoder_kwargs: extra ``VideoViT`` arguments for the student.
        teacher: stage-1 Lightning checkpoint or exported ``.safetensors``.
        teacher_mode: ``"frozen"`` (the only mode; ``"ema"`` is an error naming
            ``salt.ema.EMAModule``, where the V-JEPA baseline lives).
        target_layer: teacher block whose output is the target (-1: the final, normed output).
        sdpa_kernels: SDPA kernel per call site, keys ``teacher``, ``encoder`` (the student),
            ``predictor``; values ``"cudnn"``, ``"flash"``, ``"efficient"``, ``"math"`` or None
            (PyTorch's process-wide choice). Keys left out keep ``DEFAULT_SDPA_KERNELS``
            (teacher cuDNN, student and predictor FlashAttention-2). ``attn_backend: sdpa`` only.
        teacher_precision: ``"fp32"`` (teacher weights as loaded), ``"bf16"`` (cast once) or
            ``"fp8"`` (block matmuls in FP8; GPUs with compute capability ≥ 8.9 only, see
            ``salt.fp8``).
        predictor_dim: predictor width (384).
        predictor_depth: predictor blocks (12).
        predictor_heads: predictor heads (12).
        predictor_mlp_hidden: predictor MLP width (1536).
        loss: ``"l1"`` (SALT) or ``"mse"``.
        act_checkpoint: activation checkpointing in student encoder and predictor.
        **kwargs: clip size, masks, normalisation, optimisation, compilation and health
            arguments of ``salt.module_base.SaltModule`` (``img_size``, ``lr``, ...).
    """

    stage = "student"

    def __init__(
        self,
        encoder: str = "vit_large",
        encoder_kwargs: dict[str, Any] | None = None,
        teacher: str | None = None,
        teacher_mode: Literal["frozen", "ema"] = "frozen",
        target_layer: int = -1,
        sdpa_kernels: dict[str, str | None] | None = None,
        teacher_precision: Literal["fp32", "bf16", "fp8"] = "fp32",
        predictor_dim: int = 384,
        predictor_depth: int = 12,
        predictor_heads: int = 12,
        predictor_mlp_hidden: int = 1536,
        loss: Literal["l1", "mse"] = "l1",
        act_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        if teacher == "ema" or teacher_mode == "ema":
            raise UsageError(EMA_MOVED)
        if teacher_mode != "frozen":
            raise UsageError(f"teacher_mode must be 'frozen', got {teacher_mode!r}")
        super().__init__(**kwargs)
        self.teacher_mode, self.loss_kind = teacher_mode, loss
        check_teacher_precision(teacher_precision)
        self.teacher_precision = teacher_precision
        self.fp8_backend: str | None = None  # set when the FP8 teacher is built
        self._teacher_prepared_on: torch.device | None = None
        self._build_encoder(encoder, encoder_kwargs, act_checkpoint)
        self.teacher_info = None
        self._attach_target(self._load_teacher(teacher), target_layer)
        self._build_predictor(
            predictor_dim, predictor_depth, predictor_heads, predictor_mlp_hidden, act_checkpoint
        )
        self._set_sdpa_kernels(sdpa_kernels)

    def _load_teacher(self, path: str | None) -> VideoViT:
        if not path:
            raise UsageError(
                "StudentModule needs a teacher: pass --model.teacher PATH (a stage-1 checkpoint "
                "or an exported .safetensors); the V-JEPA EMA baseline is salt.ema.EMAModule"
            )
        if not Path(path).is_file():
            raise MissingInputError(f"teacher checkpoint not found: {path} (--model.teacher)")
        try:
            encoder, meta = load_encoder(path, attn_backend=self.encoder.attn_backend)
        except ValueError as e:  # not a salt checkpoint, unknown architecture, wrong weights
            raise UsageError(f"--model.teacher {path}: {e}") from None
        if meta.get("stage") == "student":
            raise UsageError(
                f"--model.teacher {path} is a stage-2 (student) checkpoint; the teacher is a "
                "stage-1 checkpoint (salt fit -c configs/teacher/...) or its exported encoder"
            )
        mismatches = teacher_mismatches(encoder, meta, self)
        if mismatches:
            raise UsageError(
                f"teacher {path} does not match this student: {'; '.join(mismatches)}. Train the "
                "student with the teacher's input settings, or use a matching teacher."
            )
        # sha256 filled in once per job (setup) or on first read outside a Trainer
        self.teacher_info = {"path": str(Path(path).resolve()), "sha256": None}
        if meta.get("stage") == "imported":  # which public model it came from
            self.teacher_info["source"] = (meta.get("source") or {}).get("format")
        return encoder

    @property
    def teacher_info(self) -> dict[str, str] | None:
        """``{"path", "sha256"}`` of the frozen teacher file."""
        info = self._teacher_file
        if info is not None and info["sha256"] is None:
            info["sha256"] = file_sha256(info["path"])  # one process: no one else to ask
        return info

    @teacher_info.setter
    def teacher_info(self, value: dict[str, str] | None) -> None:
        self._teacher_file = value

    def setup(self, stage: str) -> None:
        super().setup(stage)
        info = self._teacher_file
        if stage == "fit" and info is not None and info["sha256"] is None:
            path = info["path"]
            info["sha256"] = from_rank_zero(lambda: file_sha256(path))  # every rank calls this

    def teacher_on(self, device: torch.device) -> FrozenTeacher:
        """The teacher, moved to ``device`` first if needed (no host sync); the first time on a
        device it is put into ``teacher_precision`` (``UsageError`` for FP8 without FP8 cores)."""
        teacher = super().teacher_on(device)
        if self._teacher_prepared_on != device:
            self.fp8_backend = prepare_teacher(teacher.encoder, self.teacher_precision, device)
            self._teacher_prepared_on = device
        return teacher

    def target_input(self, video: torch.Tensor) -> torch.Tensor:
        """The clip in the teacher's precision (bf16 for a bf16 / FP8 teacher)."""
        return teacher_input(video, self.teacher_precision)

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
        super().on_load_checkpoint(checkpoint)
        saved = (checkpoint.get("salt") or {}).get("teacher") or {}
        if saved.get("sha256") and saved["sha256"] != self.teacher_info["sha256"]:
            raise ValueError(
                f"the teacher changed since this checkpoint: it was trained against "
                f"{saved.get('path')} (sha256 {saved['sha256'][:12]}…), now {self.teacher_info['path']} "
                f"(sha256 {self.teacher_info['sha256'][:12]}…); a student's targets are defined by "
                "its teacher, so resume with the original teacher file"
            )
