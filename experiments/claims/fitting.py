"""One training run of the study: a salt LightningModule on a real Trainer, clips in GPU memory.

What is the same as ``salt fit``: the LightningModules (``TeacherModule``, ``StudentModule``,
``EMAModule``) with their own ``training_step``, optimiser, schedules, non-finite guard, EMA update,
health signals and checkpoint metadata; the masks (the module's ``MultiMaskCollator``, handed over
through ``set_mask_fn`` and drawn in DataLoader workers, reseeded per worker as
``VideoDataModule`` does); bf16 autocast; Lightning's ``ModelCheckpoint`` with salt's atomic
checkpoint IO. What differs: the clips. They are generated once and kept as one uint8 tensor on
the device; the workers yield only clip indices, flip flags and masks, and the DataModule gathers
the clips on the device after the transfer. The shard pipeline (decoding, random-resized crops) is
bypassed: at this size it would cost more than the models.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import Logger
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from salt.checkpointing import AtomicCheckpointIO


class _IndexStream(IterableDataset):
    """Endless batches of ``{"index": [B], "flip": [B] bool, "masks": [(ctx, tgt), ...]}``."""

    def __init__(self, num_clips: int, batch_size: int, seed: int, mask_fn: Any, flip: bool):
        self.num_clips, self.batch_size, self.seed = num_clips, batch_size, seed
        self.mask_fn, self.flip = mask_fn, flip

    def __iter__(self):
        info = get_worker_info()
        wid = info.id if info is not None else 0
        stream = self.seed * 1000 + wid  # a distinct, reproducible stream per (run seed, worker)
        if hasattr(self.mask_fn, "reseed"):
            self.mask_fn.reseed(stream)
        g = torch.Generator().manual_seed(stream)
        B = self.batch_size
        while True:
            perm = torch.randperm(self.num_clips, generator=g)
            for i in range(0, self.num_clips - B + 1, B):
                flip = torch.rand(B, generator=g) < 0.5 if self.flip else torch.zeros(B, dtype=bool)
                yield {"index": perm[i : i + B], "flip": flip, "masks": self.mask_fn(B)}


class DeviceClips(pl.LightningDataModule):
    """Pretraining clips held on the device (uint8 ``[N, 3, T, H, W]``).

    Args:
        clips: the clips, already on the training device.
        batch_size: clips per step.
        seed: stream seed (clip order, flips, masks).
        num_workers: DataLoader workers drawing indices and masks (0: in the main process).
        flip: random horizontal flips (salt's pipeline flips too; labels are never seen here).
    """

    def __init__(
        self,
        clips: torch.Tensor,
        batch_size: int,
        seed: int,
        num_workers: int = 2,
        flip: bool = True,
    ) -> None:
        super().__init__()
        if len(clips) < batch_size:
            raise ValueError(f"{len(clips)} clips cannot fill a batch of {batch_size}")
        self.clips, self.batch_size, self.seed = clips, batch_size, seed
        self.num_workers, self.flip = num_workers, flip
        self.mask_fn: Any = None

    def set_mask_fn(self, fn: Any) -> None:
        """Called by the module's ``setup()`` with its ``MultiMaskCollator`` (as for salt fit)."""
        self.mask_fn = fn

    def train_dataloader(self) -> DataLoader:
        if self.mask_fn is None:
            raise RuntimeError("no mask function: the LightningModule sets it in setup()")
        stream = _IndexStream(len(self.clips), self.batch_size, self.seed, self.mask_fn, self.flip)
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
        )

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        index, flip = batch.pop("index"), batch.pop("flip")
        video = self.clips.index_select(0, index.to(self.clips.device))  # [B, 3, T, H, W] uint8
        flip = flip.to(video.device)[:, None, None, None, None]
        batch["video"] = torch.where(flip, video.flip(-1), video)
        return batch


class MemoryLogger(Logger):
    """Keeps every logged metric as ``{name: [[step, value], ...]}`` (a real Lightning logger)."""

    def __init__(self) -> None:
        super().__init__()
        self.curves: dict[str, list[list[float]]] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.curves.setdefault(k, []).append([int(step or 0), float(v)])


class StopAt(pl.Callback):
    """Ends training after the batch during which the wall clock passed ``deadline``."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline, self.stopped_at = deadline, None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.deadline is not None and time.time() > self.deadline and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_at = trainer.global_step


def fit(
    module: pl.LightningModule,
    clips: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    checkpoints: int,
    run_dir: Path,
    seed: int,
    deadline: float | None = None,
    num_workers: int = 2,
    log_every: int | None = None,
) -> dict[str, Any]:
    """Train ``module`` for ``steps`` optimizer steps; save ``checkpoints`` evenly spaced ones.

    Returns:
        ``{"steps_done", "truncated", "wall_s", "checkpoints": [paths, oldest first], "curves"}``.
    """
    gpu = clips.device.type == "cuda"
    log_every = log_every or min(25, max(1, steps // 20))  # ≥ 20 points of every curve
    every = max(1, steps // max(checkpoints, 1))
    ckpt_dir = Path(run_dir) / "checkpoints"
    if ckpt_dir.exists():  # a previous study in the same workdir: its files are not this run's
        shutil.rmtree(ckpt_dir)
    saver = ModelCheckpoint(
        dirpath=ckpt_dir, filename="{step:07d}", every_n_train_steps=every, save_top_k=-1,
        save_weights_only=True, save_last=False, save_on_train_epoch_end=False,
        enable_version_counter=False,
    )  # fmt: skip
    stop, logger = StopAt(deadline), MemoryLogger()
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu", devices=1, precision="bf16-mixed" if gpu else 32,
        max_steps=steps, default_root_dir=str(run_dir), logger=[logger],
        callbacks=[saver, stop], plugins=[AtomicCheckpointIO()], log_every_n_steps=log_every,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    data = DeviceClips(clips, batch_size, seed, num_workers=num_workers)
    t0 = time.time()
    trainer.fit(module, datamodule=data)
    wall = time.time() - t0
    done = trainer.global_step
    final = ckpt_dir / f"step={done:07d}.ckpt"
    if done > 0 and not final.is_file():  # the run's last step, when not on the grid (or cut)
        trainer.save_checkpoint(final, weights_only=True)
    paths = sorted(ckpt_dir.glob("step=*.ckpt"))
    return {
        "steps_done": int(done),
        "truncated": stop.stopped_at is not None,
        "wall_s": round(wall, 2),
        "checkpoints": [str(p) for p in paths],
        "curves": logger.curves,
    }
