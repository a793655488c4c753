"""Which checkpoint a `salt fit` start resumes, agreed by every rank; which attempt this is.

The rule (``decide_ckpt_path``), applied on every start of ``salt fit``:

1. **A restart resumes the run's newest checkpoint.** When Slurm (``SLURM_RESTART_COUNT``) or
   torchrun (``TORCHELASTIC_RESTART_COUNT``) restarts the job and its run folder holds a
   complete checkpoint, the newest one (highest step; ``find_latest_checkpoint``) wins over any
   ``--ckpt_path``: a user's ``--ckpt_path X`` only seeds the *first* attempt, so a requeued or
   retried job never starts again from X.
2. **A first start never trains into someone else's run.** If the run folder already holds
   checkpoints, the start is refused with a ``UsageError`` unless the user asked to continue
   it: ``--ckpt_path auto`` (the newest), or a path to one of that folder's checkpoints. A reused
   Slurm job id or ``--run_name`` therefore fails loudly instead of silently continuing another
   run (the refusal exits 2, which ``slurm/train.sbatch`` does not retry).
3. Otherwise ``--ckpt_path auto`` is a fresh start and any other value is passed to Lightning.

Each rank applies the rule to its own view of the shared filesystem; ``ResumeAgreement`` then
makes rank 0's choice the job's choice once the process group exists (a file system with
attribute caching can show ranks different newest files): a rank that picked another file loads
rank 0's instead, and a rank that disagrees on *whether* to resume stops the job with an error
naming both views (the retry then sees a consistent filesystem).

The run folder is named after the Slurm job id (``salt.cli.default_run_name``) and holds
``run.json`` with the MLflow run id (``salt.tracking``), so a restarted job logs into the same
MLflow run. The requeue on the time-limit warning is ``salt.requeue.SlurmRequeue``; the bounded
crash retry is in ``slurm/train.sbatch``, which exports the attempt number (``attempt_info``).
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from salt.errors import UsageError

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


def restart_count(env: dict[str, str] | None = None) -> int:
    """Restarts of this job by Slurm (requeue, crash retry) or torchrun (``--max-restarts``)."""
    env = os.environ if env is None else env
    return max(slurm_restart_count(env), int(env.get("TORCHELASTIC_RESTART_COUNT") or 0))


def attempt_info(env: dict[str, str] | None = None) -> dict[str, int | None]:
    """This job's attempt: ``attempt`` (1 = first start), ``restarts`` (Slurm/torchrun restarts
    so far), ``crash_retries`` / ``max_retries`` (used / allowed by ``slurm/train.sbatch``'s
    bounded retry; None outside it). ``train.sbatch`` exports ``SALT_ATTEMPT``,
    ``SALT_CRASH_RETRIES`` and ``SALT_MAX_RETRIES``; tracking logs them from here."""
    env = os.environ if env is None else env
    restarts = restart_count(env)

    def num(key: str) -> int | None:
        value = env.get(key)
        return int(value) if value not in (None, "") else None

    return {
        "attempt": num("SALT_ATTEMPT") or restarts + 1,
        "restarts": restarts,
        "crash_retries": num("SALT_CRASH_RETRIES"),
        "max_retries": num("SALT_MAX_RETRIES"),
    }


# --------------------------------------------------------------------------- checkpoints


def checkpoint_step(path: str | Path) -> int | None:
    """Global step of a checkpoint: from `step=N` in its name, else from its (mmap-loaded) contents."""
    path = Path(path)
    match = _STEP_RE.search(path.name)
    if match:
        return int(match.group(1))
    from salt.checkpointing import load_checkpoint_file

    try:
        if path.is_dir():
            meta = load_checkpoint_file(path / _SHARDED_META)
        else:
            meta = load_checkpoint_file(path, mmap=True)
    except Exception as err:  # unreadable or not a plain checkpoint: the caller skips it
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


def _describe(path: Path | None) -> str:
    return f"{path} (step {checkpoint_step(path)})" if path else "none: fresh start"


def _log(msg: str) -> None:
    rank = os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))
    if rank == "0":  # one line per job start, for the job log
        print(f"[salt.resume] {msg}", flush=True)


def resolve_ckpt_path(ckpt_path: str | None, dirpath: str | Path | None) -> str | None:
    """`auto` → the newest checkpoint in `dirpath` (None when there is none: a fresh start);
    anything else is returned unchanged (a path, Lightning's "last"/"hpc", or None)."""
    if ckpt_path != "auto":
        return ckpt_path
    if dirpath is None:
        return None
    latest = find_latest_checkpoint(dirpath)
    _log(f"--ckpt_path auto in {dirpath}: {_describe(latest)}")
    return None if latest is None else str(latest)


_KEYWORDS = ("last", "hpc", "best", "registry")  # Lightning's own ckpt_path values


def _inside(path: str, dirpath: Path) -> bool:
    try:
        return Path(path).resolve().parent == dirpath.resolve()
    except OSError:
        return False


def decide_ckpt_path(
    requested: str | None, checkpoint_dir: str | Path, env: dict[str, str] | None = None
) -> str | None:
    """The checkpoint this start resumes (None: fresh), by the rule in the module docstring.

    Args:
        requested: the user's ``--ckpt_path`` (a path, ``auto``, a Lightning keyword or None).
        checkpoint_dir: the run folder's ``checkpoints/``.
        env: environment to read the restart count from (default ``os.environ``).

    Raises:
        UsageError: a first start into a run folder that holds checkpoints the user did not ask
            to resume.
    """
    checkpoint_dir = Path(checkpoint_dir)
    latest = find_latest_checkpoint(checkpoint_dir)
    restarts = restart_count(env)
    where = f"run folder {checkpoint_dir.parent}"
    if restarts > 0 and latest is not None:
        if requested not in (None, "auto") and not (
            requested not in _KEYWORDS and Path(requested).resolve() == latest.resolve()
        ):
            _log(
                f"restart {restarts}: the run's newest checkpoint wins over --ckpt_path {requested}"
            )
        _log(f"restart {restarts}: resuming {_describe(latest)}")
        return str(latest)
    if requested == "auto":
        _log(f"--ckpt_path auto in {checkpoint_dir}: {_describe(latest)}")
        return None if latest is None else str(latest)
    if latest is not None and requested not in _KEYWORDS:
        if requested is None:
            raise UsageError(
                f"{where} already holds checkpoints (newest: {_describe(latest)}) and this is not "
                "a restart of the job that wrote them; continue that run with --ckpt_path auto, "
                "or start a new one with another --run_name / --trainer.default_root_dir"
            )
        if not _inside(requested, checkpoint_dir):
            raise UsageError(
                f"{where} already holds checkpoints (newest: {_describe(latest)}); --ckpt_path "
                f"{requested} is not one of them, so this would train one run into another's "
                "folder; pick a new --run_name, or resume the folder with --ckpt_path auto"
            )
    if requested is not None:
        _log(f"--ckpt_path {requested}")
    elif restarts == 0:
        _log(f"{checkpoint_dir}: none: fresh start")
    else:
        _log(f"restart {restarts}: {checkpoint_dir}: none: fresh start")
    return requested


class ResumeAgreement(Callback):
    """Makes rank 0's resume choice every rank's, before anything is restored (see the module
    docstring). One ``all_gather_object`` over the gloo group, once per fit.

    Args:
        chosen: this rank's ``decide_ckpt_path`` result (what ``trainer.fit`` was given).
    """

    def __init__(self, chosen: str | None) -> None:
        self.chosen = chosen
        self.agreed: str | None = chosen

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from salt.dist import all_gather, is_distributed

        if stage != "fit" or not is_distributed():
            return
        views = all_gather(self.chosen)
        self.agreed = views[0]
        odd = {r: v for r, v in enumerate(views) if v != views[0]}
        if not odd:
            return
        if views[0] is None or any(v is None for v in odd.values()):
            raise RuntimeError(
                "ranks disagree on whether to resume: rank 0 chose "
                f"{views[0] or 'a fresh start'}, "
                + ", ".join(f"rank {r} {v or 'a fresh start'}" for r, v in odd.items())
                + " (the run folder looks different from different nodes: a shared filesystem "
                "that has not caught up yet); stopping so that the retry starts consistently"
            )
        if trainer.global_rank in odd:
            io = trainer.strategy.checkpoint_io
            if not hasattr(io, "redirect"):
                raise RuntimeError(
                    f"rank {trainer.global_rank} sees {self.chosen}, rank 0 {views[0]}, and the "
                    f"checkpoint IO {type(io).__name__} cannot be redirected"
                )
            io.redirect[str(self.chosen)] = views[0]
            print(
                f"[salt.resume] rank {trainer.global_rank}: resuming rank 0's choice {views[0]} "
                f"(this rank saw {self.chosen})",
                flush=True,
            )


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


# --------------------------------------------------------------------------- salt fit wiring

RUN_OPTIONS = ("checkpoint_minutes", "keep_checkpoints", "hang_timeout")


def add_run_arguments(parser: Any) -> None:
    """The fault-handling run options of ``salt fit`` (a LightningArgumentParser)."""
    parser.add_argument(
        "--checkpoint_minutes",
        type=float | None,
        default=None,
        help="also write a periodic checkpoint every this many minutes of wall time",
    )
    parser.add_argument(
        "--keep_checkpoints",
        type=int | None,
        default=None,
        help="keep only the newest K step=N checkpoints (default: all)",
    )
    parser.add_argument(
        "--hang_timeout",
        type=float,
        default=600.0,
        help="seconds one training phase may take before the rank reports a hang and exits "
        "(the NCCL/gloo timeout is 2x this; 0 = off)",
    )


def run_callbacks(
    checkpoint_dir: str | Path, opts: dict[str, Any], ckpt_path: str | None
) -> list[Callback]:
    """The callbacks every ``salt fit`` adds: periodic checkpoints, the resume agreement, the
    Slurm requeue owner and the hang watchdog."""
    from salt.checkpoint_policy import SaltCheckpoint
    from salt.requeue import SlurmRequeue
    from salt.watchdog import HangWatchdog

    return [
        ResumeAgreement(ckpt_path),
        SlurmRequeue(),
        HangWatchdog(opts["hang_timeout"]),
        SaltCheckpoint(
            dirpath=checkpoint_dir,
            every_n_train_steps=opts["checkpoint_every"],
            every_minutes=opts["checkpoint_minutes"],
            keep=opts["keep_checkpoints"],
        ),
    ]
