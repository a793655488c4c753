"""Shared pieces of the training tests (tests/test_train_*.py, test_configs.py, test_encoder_io.py).

Everything is real: H.264 WebDataset shards from ``salt.data.synthetic``, the ``VideoDataModule``,
Lightning's Trainer on the CPU, ``vit_test`` with 8-pixel patches on 32-pixel, 8-frame clips
(token grid 4×4×4) so a step takes a fraction of a second on 2 cores. The fixtures these tests
use (``shards``, ``one_thread``) and ``single_thread`` live in tests/conftest.py; the names are
importable from here too, for test files that still import them from this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from conftest import one_thread, shards, single_thread  # noqa: F401 - see the module docstring

from salt.checkpointing import AtomicCheckpointIO
from salt.data import VideoDataModule

CLIP = {"frames_per_clip": 8, "frame_step": 2, "crop_size": 32}
ENCODER = {"encoder": "vit_test", "encoder_kwargs": {"patch_size": 8}}
OPTIM = {"lr": 3e-3, "start_lr": 3e-4, "final_lr": 1e-5, "warmup_steps": 4}
DECODER = {"decoder_dim": 48, "decoder_depth": 2, "decoder_heads": 4, "decoder_mlp_hidden": 96}
PREDICTOR = {
    "predictor_dim": 48,
    "predictor_depth": 2,
    "predictor_heads": 4,
    "predictor_mlp_hidden": 96,
}


def module_kwargs(stage: str, **overrides: Any) -> dict[str, Any]:
    """Constructor kwargs of a tiny TeacherModule / StudentModule for the test clips."""
    head = DECODER if stage == "teacher" else PREDICTOR
    clip = {"img_size": CLIP["crop_size"], "num_frames": CLIP["frames_per_clip"]}
    return {**ENCODER, **clip, **head, **OPTIM, "health_every": 0, **overrides}


def datamodule(train_shards: str, batch_size: int = 4, **overrides: Any) -> VideoDataModule:
    return VideoDataModule(
        train_shards=train_shards,
        **{**CLIP, "batch_size": batch_size, "num_workers": 0, "shuffle_buffer": 8, **overrides},
    )


def trainer(
    root: Path, max_steps: int, callbacks: list | None = None, **overrides: Any
) -> pl.Trainer:
    """A CPU Trainer without loggers or progress bars; atomic checkpoint IO like `salt fit`."""
    kwargs = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "default_root_dir": str(root),
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "plugins": [AtomicCheckpointIO()],
        "callbacks": callbacks or [],
        **overrides,
    }
    return pl.Trainer(**kwargs)


class TinyModule(pl.LightningModule):
    """A one-layer LightningModule for Trainer mechanics (checkpoints, resume) on [B, 4] batches."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(pl.Callback):
    """Per training batch: global step before the step, lr used, and the loss (host reads are
    fine in a test)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.steps.append(trainer.global_step)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.losses.append(float(outputs["loss"]))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def params_snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_teacher_checkpoint(
    root: Path, train_shards: str, steps: int = 3, **overrides: Any
) -> Path:
    """A real stage-1 Lightning checkpoint (a few steps of training, saved by the Trainer)."""
    from salt.teacher import TeacherModule

    with single_thread():
        model = TeacherModule(**module_kwargs("teacher", **{"warmup_steps": 1, **overrides}))
        t = trainer(root, steps)
        t.fit(model, datamodule=datamodule(train_shards))
        path = root / "teacher.ckpt"
        t.save_checkpoint(path)
    return path
