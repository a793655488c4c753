"""When `salt fit` writes periodic checkpoints, how many it keeps, and what `last.ckpt` is.

``SaltCheckpoint`` (the ``ModelCheckpoint`` of every ``salt fit``) writes
``<run>/checkpoints/step=NNNNNNN.ckpt``

- every ``--checkpoint_every`` optimizer steps, and/or
- every ``--checkpoint_minutes`` minutes of wall time since the previous periodic checkpoint (or
  the start of this attempt): what bounds the work a node loss costs when steps are slow (ViT-g
  at scale: see benchmarks/RESULTS.md). Ranks read their own clocks; the decision is agreed with
  one OR over ranks, carried by the requeue vote ``salt.resume.SlurmRequeue`` already takes at
  every step under Slurm (else one gloo all-reduce of one int per step, only when this option is
  on), so every rank saves at the same step;
- and once at the end of training if the last step was not a periodic one.

``--keep_checkpoints K`` keeps the newest K ``step=*`` checkpoints (periodic, end-of-training and
requeue ones alike; default: all); older ones are renamed to a hidden name first, then deleted,
so a kill mid-delete never leaves a half-deleted folder that looks complete.

``last.ckpt`` is not a second full copy: it is replaced (atomically: temp name, then rename) by a
*hard link* to the newest file checkpoint: the same bytes under two names, no extra space, and it
stays valid when retention later deletes the ``step=`` name. A sharded (FSDP) checkpoint is a
folder, which cannot be hard-linked, so there ``last.ckpt`` is a relative *symbolic link* (the
newest folder is never pruned, so it cannot dangle). Where the filesystem supports neither (some
object-store mounts), rank 0 copies the file, as Lightning's ``save_last`` always did.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from salt import watchdog
from salt.checkpointing import _fsync_dir

PERIODIC_RE = re.compile(r"step=(\d+)(-requeue)?\.ckpt")


def link_last(target: str | os.PathLike, last: str | os.PathLike) -> str:
    """Point ``last`` at ``target`` (same folder) atomically; returns "hardlink", "symlink" or
    "copy" (where the filesystem supports no link)."""
    target, last = Path(target), Path(last)
    tmp = last.with_name(f".{last.name}.tmp-link-{os.getpid()}")
    if tmp.is_symlink() or tmp.is_file():
        tmp.unlink()
    try:
        if target.is_dir():
            os.symlink(target.name, tmp, target_is_directory=True)
            kind = "symlink"
        else:
            os.link(target, tmp)
            kind = "hardlink"
    except OSError:
        if target.is_dir():
            shutil.copytree(target, tmp, symlinks=True)
        else:
            shutil.copy2(target, tmp)
        kind = "copy"
    if last.is_dir() and not last.is_symlink():  # a real folder (older sharded last.ckpt)
        old = last.with_name(f".{last.name}.old-{os.getpid()}")
        os.replace(last, old)
        os.replace(tmp, last)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, last)
    _fsync_dir(last.parent)
    return kind


def prune_checkpoints(dirpath: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` ``step=N[-requeue].ckpt`` in ``dirpath``; returns them."""
    if keep is None or keep < 1:
        return []
    found = []
    for p in Path(dirpath).iterdir():
        m = PERIODIC_RE.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), m.group(2) is None, p))
    found.sort()
    doomed = [p for _, _, p in found[: max(0, len(found) - keep)]]
    for p in doomed:
        hidden = p.with_name(f".deleting-{p.name}")
        os.replace(p, hidden)  # atomic: resume discovery ignores hidden names from here on
        if hidden.is_dir() and not hidden.is_symlink():
            shutil.rmtree(hidden)
        else:
            hidden.unlink()
    return doomed


class SaltCheckpoint(ModelCheckpoint):
    """Periodic checkpoints by steps and/or minutes, newest-K retention, ``last.ckpt`` as a link.

    Args:
        dirpath: the run's ``checkpoints/`` folder.
        every_n_train_steps: optimizer steps between periodic checkpoints (0: none by steps).
        every_minutes: wall-clock minutes between periodic checkpoints (None: none by time).
        keep: keep the newest this many ``step=`` checkpoints (None: all).
    """

    def __init__(
        self,
        dirpath: str | os.PathLike,
        every_n_train_steps: int = 1000,
        every_minutes: float | None = None,
        keep: int | None = None,
    ) -> None:
        if every_minutes is not None and every_minutes <= 0:
            raise ValueError(f"checkpoint_minutes must be > 0, got {every_minutes}")
        if keep is not None and keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 (or unset: keep all), got {keep}")
        super().__init__(
            dirpath=dirpath,
            filename="{step:07d}",
            every_n_train_steps=max(0, int(every_n_train_steps or 0)),
            save_top_k=-1,
            save_last=True,
            save_on_train_epoch_end=False,
            # a resumed run re-creating step N replaces the abandoned attempt's step N
            enable_version_counter=False,
        )
        self.every_minutes = every_minutes
        self.keep = keep
        self.last_kind: str | None = None  # how last.ckpt was made the last time
        self.time_vote: tuple[int, bool] | None = None  # (step, agreed) from SlurmRequeue's vote
        self._last_time = time.monotonic()
        self._seen_step: int | None = None

    @property
    def state_key(self) -> str:
        return "SaltCheckpoint"  # stable when the intervals change between attempts

    # ----------------------------------------------------------------- triggers
    def time_due(self) -> bool:
        """This rank's clock says a time-based checkpoint is due (not yet agreed)."""
        return (
            self.every_minutes is not None
            and time.monotonic() - self._last_time >= 60.0 * self.every_minutes
        )

    def _time_agreed(self, step: int) -> bool:
        if self.every_minutes is None:
            return False
        if self.time_vote is not None and self.time_vote[0] == step:
            return self.time_vote[1]  # carried by the requeue vote this step
        from salt.dist import any_rank

        return any_rank([self.time_due()])[0]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_time = time.monotonic()
        self._seen_step = trainer.global_step
        self._last_global_step_saved = trainer.global_step  # a resume does not re-save its step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        step = trainer.global_step
        if step == self._seen_step:  # inside a gradient-accumulation window: no step finished
            return
        self._seen_step = step
        if self._should_skip_saving_checkpoint(trainer):
            return
        every = self._every_n_train_steps
        by_steps = every > 0 and step % every == 0
        by_time = self._time_agreed(step)  # evaluated every step: it may be a collective
        if by_steps or by_time:
            self.save_periodic(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: salt checkpoints by optimizer steps / time only."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: salt checkpoints by optimizer steps / time only."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step and trainer.global_step > 0:
            self.save_periodic(trainer)

    # ----------------------------------------------------------------- saving
    def save_periodic(self, trainer: pl.Trainer, suffix: str = "") -> Path:
        """``step=N{suffix}.ckpt`` (every rank calls it), then ``last.ckpt`` → it, then retention.
        ``salt.requeue.SlurmRequeue`` saves its ``-requeue`` checkpoint through here too, so the
        end of training does not write the same step a second time."""
        with watchdog.phase("checkpoint save"):
            path = str(Path(self.dirpath) / f"step={trainer.global_step:07d}{suffix}.ckpt")
            self.best_model_path = path
            self.last_model_path = str(Path(path).with_name(self.CHECKPOINT_NAME_LAST + ".ckpt"))
            self._save_checkpoint(trainer, path)
            if trainer.is_global_zero:
                self.last_kind = link_last(path, self.last_model_path)
                if self.keep:
                    prune_checkpoints(Path(path).parent, self.keep)
            trainer.strategy.barrier("salt.checkpoint.last")
        self._last_time = time.monotonic()
        return Path(path)
