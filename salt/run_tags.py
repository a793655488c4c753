"""What a training run records about where and how it ran: MLflow tags and attempt metrics.

Tags (docs/architecture.md, "MLflow conventions"), each absent when it does not apply:

- ``mlflow.source.git.commit`` (shown by the MLflow UI), ``salt.git_commit``, ``salt.git_dirty``:
  the checkout salt was imported from (an editable install); a wheel install has none. ``git`` is
  asked with a timeout; a missing ``git`` or a folder outside a checkout just omits the tags.
- ``salt.slurm_job_id`` (``<array job>_<task>`` for arrays), ``salt.slurm_restart_count``
  (``SLURM_RESTART_COUNT``), ``salt.attempt`` (``SALT_ATTEMPT``, the retry wrapper's counter).
- ``salt.world_size``, ``salt.num_nodes``, ``salt.global_batch`` (clips per optimizer step:
  per-rank batch × world size × gradient accumulation), ``salt.precision``.

The restart and attempt numbers are also logged as metrics (``run/slurm_restart_count``,
``run/attempt``) at the step the attempt starts from, so the chart of a run shows where each
restart began; tags keep only the latest value.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any


def git_info(path: str | os.PathLike | None = None, timeout: float = 5.0) -> dict[str, str]:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: salt's source), or
    ``{}`` when there is none or ``git`` is unavailable."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": "true" if dirty else "false"}


def attempt_numbers(env: dict[str, str] | None = None) -> dict[str, int]:
    """``{"slurm_restart_count": n, "attempt": k}`` for the variables that are set."""
    env = os.environ if env is None else env
    out = {}
    for key, var in (("slurm_restart_count", "SLURM_RESTART_COUNT"), ("attempt", "SALT_ATTEMPT")):
        value = env.get(var, "").strip()
        if value.lstrip("-").isdigit():
            out[key] = int(value)
    return out


def global_batch(trainer: Any) -> int | None:
    """Clips per optimizer step over all ranks, if the DataModule says its batch size."""
    batch = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
    if not isinstance(batch, int):
        return None
    return batch * int(trainer.world_size) * int(trainer.accumulate_grad_batches or 1)


def environment_tags(trainer: Any) -> dict[str, str]:
    """Tags about the code, the cluster job and the parallel setup of this attempt."""
    from salt.resume import slurm_job_key

    tags: dict[str, str] = {}
    git = git_info()
    if git:
        tags["mlflow.source.git.commit"] = git["commit"]
        tags["salt.git_commit"] = git["commit"]
        tags["salt.git_dirty"] = git["dirty"]
    job = slurm_job_key()
    if job:
        tags["salt.slurm_job_id"] = job
    for key, value in attempt_numbers().items():
        tags[f"salt.{key}"] = str(value)
    tags["salt.world_size"] = str(trainer.world_size)
    tags["salt.num_nodes"] = str(trainer.num_nodes)
    batch = global_batch(trainer)
    if batch is not None:
        tags["salt.global_batch"] = str(batch)
    tags["salt.precision"] = str(trainer.precision)
    return tags


def attempt_metrics() -> dict[str, float]:
    """``run/<name>`` metrics of this attempt (logged at its starting step)."""
    return {f"run/{k}": float(v) for k, v in attempt_numbers().items()}
