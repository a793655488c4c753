"""Requeue and exact resume on Slurm: who requeues, which checkpoint to resume, which MLflow run.

One owner of the requeue: `SlurmRequeue` (this file), not Lightning's `SLURMEnvironment`
auto-requeue, which it switches off. Why: Lightning saves the checkpoint *inside* the SIGUSR1
handler on every rank, i.e. at whatever point each rank happens to be (one may be inside a gradient
all-reduce while the other enters the save barrier), a collective mismatch that can hang DDP and
certainly hangs FSDP's sharded save. Here the handler only sets a flag; at the next batch end all
ranks agree on it with one all-reduce, save together at the same global step (atomically), then
rank 0 runs `scontrol requeue` and the trainer stops. Slurm puts the job back in the queue with
the same job id; on restart `salt fit --ckpt_path auto` resumes from the newest checkpoint in the
same folder (`find_latest_checkpoint`). The run folder is named after the Slurm job id
(`salt.cli.default_run_name`) and holds `run.json` with the MLflow run id (`salt.tracking`), so the
restarted job logs into the same MLflow run. Preemption or `scontrol requeue` from outside
(SIGTERM, no warning) loses at most the steps since the last periodic checkpoint.

The signal comes from `#SBATCH --signal=SIGUSR1@90` *without* `B:`, so srun forwards it to the
training tasks rather than to the batch shell (see slurm/train.sbatch).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import zipfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)

CKPT_SUFFIX = ".ckpt"
_STEP_RE = re.compile(r"step=(\d+)")
# Lightning's sharded (FSDP) checkpoints are folders holding this file next to the DCP shards.
_SHARDED_META = "meta.pt"


# --------------------------------------------------------------------------- Slurm environment


def slurm_job_key(env: dict[str, str] | None = None) -> str | None:
    """The id that survives a requeue: `<array job>_<task>` for array jobs, else the job id."""
    env = os.environ if env is None else env
    array_id, task_id = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_id and task_id:
        return f"{array_id}_{task_id}"
    return env.get("SLURM_JOB_ID") or None


def in_slurm_task(env: dict[str, str] | None = None) -> bool:
    """True inside a task launched by srun (not a bare `salloc` shell or the batch script)."""
    env = os.environ if env is None else env
    return bool(env.get("SLURM_JOB_ID")) and bool(
        env.get("SLURM_STEP_ID") or env.get("SLURM_PROCID")
    )


def slurm_restart_count(env: dict[str, str] | None = None) -> int:
    """How many times Slurm has restarted this job (0 on the first run)."""
    env = os.environ if env is None else env
    return int(env.get("SLURM_RESTART_COUNT") or 0)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_step(path: str | Path) -> int | None:
    """Global step of a checkpoint: from `step=N` in its name, else from its (mmap-loaded) contents."""
    path = Path(path)
    match = _STEP_RE.search(path.name)
    if match:
        return int(match.group(1))
    try:
        if path.is_dir():
            meta = torch.load(path / _SHARDED_META, map_location="cpu", weights_only=False)
        else:
            meta = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # unreadable: the caller skips and reports it
        log.warning("cannot read global step from %s: %s", path, err)
        return None
    step = meta.get("global_step")
    return int(step) if step is not None else None


def is_complete_checkpoint(path: str | Path) -> bool:
    """A finished checkpoint: a full zip archive (torch.save format, central directory intact),
    or a sharded folder whose metadata and DCP index were both written."""
    path = Path(path)
    if path.is_dir():
        return (path / _SHARDED_META).is_file() and (path / ".metadata").is_file()
    return path.is_file() and zipfile.is_zipfile(path)


def list_checkpoints(dirpath: str | Path) -> list[Path]:
    """Every complete checkpoint in `dirpath` (files or sharded folders named `*.ckpt`); temp and
    hidden names are ignored, truncated ones are skipped with a warning."""
    dirpath = Path(dirpath)
    if not dirpath.is_dir():
        return []
    found = []
    for p in sorted(dirpath.iterdir()):
        if p.name.startswith(".") or not p.name.endswith(CKPT_SUFFIX):
            continue
        if not is_complete_checkpoint(p):
            log.warning("skipping incomplete checkpoint %s", p)
            continue
        found.append(p)
    return found


def find_latest_checkpoint(dirpath: str | Path) -> Path | None:
    """The checkpoint with the highest global step in `dirpath`, or None. Ties prefer a
    `step=N` name over `last*` (written once, never overwritten in place), then the newest."""
    best: tuple[int, bool, float, Path] | None = None
    for p in list_checkpoints(dirpath):
        step = checkpoint_step(p)
        if step is None:
            continue
        key = (step, not p.name.startswith("last"), p.stat().st_mtime, p)
        if best is None or key[:3] > best[:3]:
            best = key
    return None if best is None else best[3]


def resolve_ckpt_path(ckpt_path: str | None, dirpath: str | Path | None) -> str | None:
    """`auto` → the newest checkpoint in `dirpath` (None when there is none: a fresh start);
    anything else is returned unchanged (a path, Lightning's "last"/"hpc", or None)."""
    if ckpt_path != "auto":
        return ckpt_path
    if dirpath is None:
        return None
    latest = find_latest_checkpoint(dirpath)
    rank = os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))
    if rank == "0":  # one line per job start, for the job log
        found = f"{latest} (step {checkpoint_step(latest)})" if latest else "none: fresh start"
        print(f"[salt.resume] --ckpt_path auto in {dirpath}: {found}", flush=True)
    return None if latest is None else str(latest)


def atomic_save_checkpoint(trainer: pl.Trainer, path: str | Path) -> Path:
    """`trainer.save_checkpoint` to a temp name, then rename on rank 0, so a kill mid-write never
    leaves a truncated file that `find_latest_checkpoint` would pick. Every rank must call it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    trainer.save_checkpoint(tmp)  # collective for sharded strategies; rank 0 writes for DDP
    trainer.strategy.barrier("salt.atomic_save_checkpoint")
    if trainer.is_global_zero:
        if path.is_dir():  # sharded folders cannot be replaced by os.replace
            import shutil

            shutil.rmtree(path)
        os.replace(tmp, path)
    trainer.strategy.barrier("salt.atomic_save_checkpoint.done")
    return path


# --------------------------------------------------------------------------- the requeue owner


class SlurmRequeue(Callback):
    """On the Slurm warning signal: checkpoint at a step every rank agrees on, requeue, stop.

    Inactive outside an srun task. Switches off Lightning's own SLURM auto-requeue so there is
    exactly one owner.

    Args:
        dirpath: where the requeue checkpoint goes; None = the ModelCheckpoint's folder.
        signum: the warning signal (`#SBATCH --signal=SIGUSR1@90`).
        requeue: run `scontrol requeue` after saving (False: save and stop only).
        check_every_n_steps: how often ranks all-reduce the flag (one int per check, over a
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
        self._active = False  # inside an srun task: takes part in the flag all-reduce
        self._installed = False  # the signal handler is ours (main thread only)
        self._last_step: int | None = None
        self._previous_handler = None
        self._group = None  # gloo group for the flag (None: the default group is gloo already)

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only a flag: saving here would run collectives at an arbitrary point of the step.
        self.received = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not in_slurm_task():
            return
        from lightning_fabric.plugins.environments import SLURMEnvironment

        for env in (
            getattr(trainer.strategy, "cluster_environment", None),
            getattr(trainer._accelerator_connector, "cluster_environment", None),
        ):
            if isinstance(env, SLURMEnvironment):
                env.auto_requeue = False  # this callback is the only requeue owner
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_backend() != "gloo":
            # every rank runs setup: a collective call, in the same order everywhere
            self._group = dist.new_group(backend="gloo")
        self._active = True  # on every rank alike: they all join the flag all-reduce
        if threading.current_thread() is threading.main_thread():
            # DataLoader workers forked later inherit this handler (the signal reaches every
            # process of the step), so a worker only sets its own, unused flag instead of dying.
            self._previous_handler = signal.signal(self.signum, self._on_signal)
            self._installed = True
        env = getattr(trainer.strategy, "cluster_environment", None)
        print(
            f"[salt.resume] rank {trainer.global_rank}/{trainer.world_size} "
            f"SLURM_PROCID={os.environ.get('SLURM_PROCID')} job={slurm_job_key()} "
            f"restart={slurm_restart_count()} env={type(env).__name__} "
            f"requeue_on_signal={self._installed}",
            flush=True,
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous_handler or signal.SIG_DFL)
        self._active = self._installed = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # the restored step on a resume

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object, **kwargs: object) -> None:
        # act only where an optimizer step just ended (not inside a gradient-accumulation window),
        # the same batches on every rank
        step = trainer.global_step
        if not self._active or step == self._last_step:
            return
        self._last_step = step
        if step % self.check_every_n_steps:
            return
        # every rank must reach this all-reduce at the same step: one int on the CPU, every k steps
        if not self._any_rank_received():
            return
        self.saved_path = self.save(trainer)
        if self.requeue and trainer.is_global_zero:
            self._scontrol_requeue()
        trainer.should_stop = True

    def _any_rank_received(self) -> bool:
        import torch.distributed as dist

        flag = torch.tensor([int(self.received)], dtype=torch.int32)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def _checkpoint_dir(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        cb = trainer.checkpoint_callback
        if cb is not None and getattr(cb, "dirpath", None):
            return Path(cb.dirpath)
        return Path(trainer.default_root_dir) / "checkpoints"

    def save(self, trainer: pl.Trainer) -> Path:
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
        print(f"[salt.resume] scontrol requeue {job}", flush=True)
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode != 0:
            # e.g. submitted with --no-requeue: training stops after the checkpoint, job ends
            log.warning(
                "scontrol requeue %s failed (%s): %s", job, result.returncode, result.stderr
            )
