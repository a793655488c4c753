"""Resumable probe runs: the state of the last finished epoch on disk, and the stop signal.

`StateStore` keeps `<dir>/state.pt`: phase (selection / retrain / done), finished epochs, every
head's parameters and AdamW state (the step count is the schedule position), the halving record,
held-out scores, results so far, data counts and the MLflow run id. It is written by rank 0 at
the end of every epoch through a temporary file and `os.replace`, so a crash mid-write leaves the
previous epoch's file. Rerunning the same command (same protocol, data, checkpoint, world size)
continues after the last finished epoch: the data order of an epoch depends only on (seed, epoch),
so the result equals an uninterrupted run's.

`StopSignal` turns Slurm's warning signal (`#SBATCH --signal=SIGUSR1@90`) into a flag; the loop
checks it on every rank at the same step (one all-reduce over a gloo group), stops, and rank 0 runs
`scontrol requeue` inside an srun task (the state of the last finished epoch is already on disk).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import torch

from salt.errors import UsageError

STATE_VERSION = 1


class StateStore:
    """`<dir>/state.pt` of one probe run (see the module docstring).

    Args:
        directory: the run's state folder (created on first save).
        protocol: the run's protocol tag; a state written under another tag is an error.
        world_size: ranks of this run; resuming with another count is an error (the per-rank
            data split and the schedule length depend on it).
        is_main: whether this rank writes.
        resume: load an existing state (False: start over, the old file is replaced at the
            first save).
    """

    def __init__(
        self, directory: str | Path, protocol: str, world_size: int, is_main: bool, resume: bool
    ):
        self.dir, self.protocol, self.world_size = Path(directory), protocol, world_size
        self.is_main, self.resume = is_main, resume
        self.path = self.dir / "state.pt"

    def load(self, device: torch.device) -> dict[str, Any] | None:
        """The saved state (tensors on `device`) or None for a fresh start."""
        if not self.resume or not self.path.is_file():
            return None
        state = torch.load(self.path, map_location=device, weights_only=False)
        if state.get("version") != STATE_VERSION or state.get("protocol") != self.protocol:
            raise UsageError(
                f"{self.path} holds another probe run (protocol {state.get('protocol')!r}, this "
                f"one is {self.protocol!r}); use another --state-dir or --no-resume"
            )
        if state.get("world_size") != self.world_size:
            raise UsageError(
                f"{self.path} was written by {state.get('world_size')} rank(s), this run has "
                f"{self.world_size}: resume with the same number of GPUs, or --no-resume"
            )
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Atomic write by the main rank (every rank calls it; others return at once)."""
        if not self.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {**state, "version": STATE_VERSION, "protocol": self.protocol,
                 "world_size": self.world_size}  # fmt: skip
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


class StopSignal:
    """A flag set by `signum` (default SIGUSR1); `install()` in the main thread, `restore()` after."""

    def __init__(self, signum: int = int(signal.SIGUSR1)):
        self.signum, self.received, self._previous = signum, False, None
        self._installed = False

    def _handler(self, signum: int, frame: object) -> None:
        self.received = True  # only a flag: the loop acts on it at an agreed step

    def install(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._handler)
            self._installed = True
        return self

    def restore(self) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous or signal.SIG_DFL)
            self._installed = False


def requeue_slurm_job(log) -> bool:
    """`scontrol requeue <job>` when running inside an srun task; True if it was issued."""
    from salt.resume import in_slurm_task, slurm_job_key

    job = slurm_job_key()
    if not in_slurm_task() or job is None:
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        log(f"scontrol requeue {job} failed ({result.returncode}): {result.stderr.strip()}")
        return False
    log(f"scontrol requeue {job}")
    return True


class Interrupted(Exception):
    """The run stopped on the stop signal; its state of the last finished epoch is on disk."""

    def __init__(self, phase: str, epoch: int, requeued: bool):
        super().__init__(
            f"stopped on the signal in the {phase} phase; it resumes after epoch {epoch}"
            + (" (job requeued)" if requeued else ": rerun the same command to continue")
        )
        self.phase, self.epoch, self.requeued = phase, epoch, requeued
