"""Requeue on the Slurm time-limit warning: agreed-step checkpoint, `scontrol requeue`, stop.

One owner of the requeue: `SlurmRequeue` (this file), not Lightning's `SLURMEnvironment`
auto-requeue, which it switches off. Why: Lightning saves the checkpoint *inside* the SIGUSR1
handler on every rank, i.e. at whatever point each rank happens to be (one may be inside a gradient
all-reduce while the other enters the save barrier), a collective mismatch that can hang DDP and
certainly hangs FSDP's sharded save. Here the handler only sets a flag; at the next optimizer-step
end all ranks agree on it with one all-reduce of a few ints over a gloo group (no GPU sync), save
together at the same global step (atomically), then rank 0 runs `scontrol requeue` and the
trainer stops. Slurm puts the job back in the queue with the same job id; on restart `salt fit`
resumes from the newest checkpoint of the run (`salt.resume.decide_ckpt_path`).

The same vote carries `SaltCheckpoint`'s "a time-based checkpoint is due" flag, so a run under
Slurm pays one host all-reduce per step for both.

A failed `scontrol requeue` (the job was submitted with `--no-requeue`, the controller is down, the
user may not requeue) is retried three times, then reported, and the process exits with
`REQUEUE_FAILED_EXIT` after the fit has ended cleanly on every rank: the job ends FAILED, not
COMPLETED, so `--dependency=afterok` jobs never start on a half-trained model. The checkpoint is
on disk; resubmitting with `--run_name <run> --ckpt_path auto` continues it.

`train.sbatch` exports `SALT_JOB_STATE` (a per-job folder): before calling scontrol, rank 0 writes
`requeue-<restart>` there ("requested", then "failed: ..." if it fails), so the batch script can
tell a requeue in progress (tasks killed by Slurm) from a crash it should retry.

The signal comes from `#SBATCH --signal=SIGUSR1@90` *without* `B:`, so srun forwards it to the
training tasks rather than to the batch shell (see slurm/train.sbatch).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from salt.resume import (
    CKPT_SUFFIX,
    atomic_save_checkpoint,
    attempt_info,
    in_slurm_task,
    restart_count,
    slurm_job_key,
)

log = logging.getLogger(__name__)

REQUEUE_FAILED_EXIT = 3  # the attempt saved its checkpoint but could not requeue the job
SCONTROL_TRIES = 3


def job_state_file(name: str, env: dict[str, str] | None = None) -> Path | None:
    """A file in the per-job folder `train.sbatch` exports as `SALT_JOB_STATE` (None outside)."""
    env = os.environ if env is None else env
    folder = env.get("SALT_JOB_STATE")
    return Path(folder) / name if folder else None


def mark_job_state(kind: str, text: str) -> None:
    """Record ``<kind>-<restart>`` for ``train.sbatch`` (e.g. a usage error, which it must not
    retry: srun's own exit code is that of whichever task it killed, not the rank's 2)."""
    path = job_state_file(f"{kind}-{restart_count()}")
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.strip() + "\n")
    except OSError as err:  # best effort: the job log has the message either way
        log.warning("cannot write %s: %s", path, err)


def scontrol_requeue(job: str, tries: int = SCONTROL_TRIES, wait_s: float = 2.0) -> str | None:
    """`scontrol requeue JOB`, retried with backoff; None on success, else the last error."""
    error = None
    for attempt in range(tries):
        try:
            result = subprocess.run(
                ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            error = f"{type(err).__name__}: {err}"
        else:
            if result.returncode == 0:
                return None
            error = f"exit {result.returncode}: {(result.stderr or result.stdout).strip()}"
        if attempt + 1 < tries:
            time.sleep(wait_s * 2**attempt)
    return error


class SlurmRequeue(Callback):
    """On the Slurm warning signal: checkpoint at a step every rank agrees on, requeue, stop.

    Inactive outside an srun task. Switches off Lightning's own SLURM auto-requeue so there is
    exactly one owner.

    Args:
        dirpath: where the requeue checkpoint goes; None = the ModelCheckpoint's folder.
        signum: the warning signal (`#SBATCH --signal=SIGUSR1@90`).
        requeue: run `scontrol requeue` after saving (False: save and stop only).
        check_every_n_steps: how often ranks all-reduce the flag (a few ints per check, over a
            CPU/gloo group: no GPU synchronisation in the training loop).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        signum: int = int(signal.SIGUSR1),
        requeue: bool = True,
        check_every_n_steps: int = 1,
    ) -> None:
        self.dirpath = dirpath
        self.signum = signum
        self.requeue = requeue
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self.received = False
        self.saved_path: Path | None = None
        self.requeue_error: str | None = None  # set on rank 0 when scontrol failed
        self._active = False  # inside an srun task: takes part in the flag all-reduce
        self._installed = False  # the signal handler is ours (main thread only)
        self._last_step: int | None = None
        self._previous_handler = None

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only a flag: saving here would run collectives at an arbitrary point of the step.
        self.received = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not in_slurm_task():
            return
        from lightning_fabric.plugins.environments import SLURMEnvironment

        from salt.dist import cpu_group, is_distributed

        for env in (
            getattr(trainer.strategy, "cluster_environment", None),
            getattr(trainer._accelerator_connector, "cluster_environment", None),
        ):
            if isinstance(env, SLURMEnvironment):
                env.auto_requeue = False  # this callback is the only requeue owner
        if is_distributed():
            cpu_group()  # collective on first use: every rank, here, in the same order
        self._active = True  # on every rank alike: they all join the flag all-reduce
        if threading.current_thread() is threading.main_thread():
            # DataLoader workers forked later inherit this handler (the signal reaches every
            # process of the step), so a worker only sets its own, unused flag instead of dying.
            self._previous_handler = signal.signal(self.signum, self._on_signal)
            self._installed = True
        env = getattr(trainer.strategy, "cluster_environment", None)
        info = attempt_info()
        retries = (
            f" crash_retries={info['crash_retries']}/{info['max_retries']}"
            if info["max_retries"] is not None
            else ""
        )
        print(
            f"[salt.resume] rank {trainer.global_rank}/{trainer.world_size} "
            f"SLURM_PROCID={os.environ.get('SLURM_PROCID')} job={slurm_job_key()} "
            f"restart={restart_count()} attempt={info['attempt']}{retries} "
            f"env={type(env).__name__} requeue_on_signal={self._installed}",
            flush=True,
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous_handler or signal.SIG_DFL)
        self._active = self._installed = False
        if self.requeue_error is not None:
            # every rank has finished the fit (checkpoints, barriers) by now: exiting here on
            # rank 0 alone cannot leave another rank waiting in a collective
            error, self.requeue_error = self.requeue_error, None
            print(
                f"[salt.requeue] scontrol requeue {slurm_job_key()} failed after "
                f"{SCONTROL_TRIES} tries ({error}). The checkpoint {self.saved_path} is saved, but "
                "Slurm will not restart this job: it ends FAILED (exit "
                f"{REQUEUE_FAILED_EXIT}) so that --dependency=afterok jobs do not start. "
                f"Continue it with: sbatch slurm/train.sbatch CONFIG --run_name "
                f"{Path(self.saved_path).parent.parent.name if self.saved_path else '<run>'} "
                "--ckpt_path auto",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(REQUEUE_FAILED_EXIT)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # the restored step on a resume
        if trainer.is_global_zero and self._active:
            # run/attempt itself comes from salt.tracking (salt.run_tags), once per attempt
            info = {k: v for k, v in attempt_info().items() if v is not None and k != "attempt"}
            metrics = {f"run/{k}": float(v) for k, v in info.items()}
            for logger in trainer.loggers:  # one point per attempt, at the step it starts from
                logger.log_metrics(metrics, step=trainer.global_step)

    def _time_votes(self, trainer: pl.Trainer) -> list[Any]:
        from salt.checkpoint_policy import SaltCheckpoint

        return [
            cb
            for cb in trainer.checkpoint_callbacks
            if isinstance(cb, SaltCheckpoint) and cb.every_minutes
        ]

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object, **kwargs: object) -> None:
        # act only where an optimizer step just ended (not inside a gradient-accumulation window),
        # the same batches on every rank
        step = trainer.global_step
        if not self._active or step == self._last_step:
            return
        self._last_step = step
        if step % self.check_every_n_steps:
            return
        # every rank must reach this all-reduce at the same step: a few ints on the CPU
        from salt.dist import any_rank

        timed = self._time_votes(trainer)
        agreed = any_rank([self.received] + [cb.time_due() for cb in timed])
        for cb, due in zip(timed, agreed[1:], strict=True):
            cb.time_vote = (step, due)  # SaltCheckpoint reads it later in this batch end
        if not agreed[0]:
            return
        self.saved_path = self.save(trainer)
        if self.requeue and trainer.is_global_zero:
            self._scontrol_requeue()
        trainer.should_stop = True

    def _checkpoint_dir(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        cb = trainer.checkpoint_callback
        if cb is not None and getattr(cb, "dirpath", None):
            return Path(cb.dirpath)
        return Path(trainer.default_root_dir) / "checkpoints"

    def save(self, trainer: pl.Trainer) -> Path:
        from salt.checkpoint_policy import SaltCheckpoint

        cb = trainer.checkpoint_callback
        if self.dirpath is None and isinstance(cb, SaltCheckpoint):
            path = cb.save_periodic(trainer, suffix="-requeue")  # also moves last.ckpt
        else:
            name = f"step={trainer.global_step:07d}-requeue{CKPT_SUFFIX}"
            path = self._checkpoint_dir(trainer) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_checkpoint(trainer, path)
        if trainer.is_global_zero:
            print(f"[salt.resume] signal {self.signum}: saved {path}", flush=True)
        return path

    def _scontrol_requeue(self) -> None:
        job = slurm_job_key()
        if job is None:
            log.warning("no SLURM_JOB_ID: cannot requeue")
            return
        marker = job_state_file(f"requeue-{restart_count()}")
        if marker is not None:  # before scontrol: once it succeeds, Slurm kills this process
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("requested\n")
        print(f"[salt.resume] scontrol requeue {job}", flush=True)
        error = scontrol_requeue(job)
        if error is not None:
            self.requeue_error = error
            if marker is not None:
                marker.write_text(f"failed: {error}\n")
