"""Fault injection for the reliability tests: Lightning callbacks a test adds to a real `salt fit`
(`--trainer.callbacks+=faults.KillAt ...`, with this folder on PYTHONPATH; sbatch exports it to
the Slurm tasks). Each fault fires on the chosen rank(s), at the chosen optimizer step, in the
chosen attempts only (`SLURM_RESTART_COUNT` + 1), so a retried job can get past it.

They live in tests/, never in the package: salt has no fault hooks of its own.
"""

from __future__ import annotations

import os
import signal
import time

import pytorch_lightning as pl


def _attempt() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) + 1


class _Fault(pl.Callback):
    def __init__(
        self, step: int, ranks: list[int] | None = None, attempts: list[int] | None = None
    ):
        self.step = step
        self.ranks = ranks  # None: every rank
        self.attempts = attempts if attempts is not None else [1]  # []: every attempt
        self.fired = False

    def _armed(self, trainer: pl.Trainer) -> bool:
        return (
            not self.fired
            and trainer.global_step == self.step
            and (self.ranks is None or trainer.global_rank in self.ranks)
            and (not self.attempts or _attempt() in self.attempts)
        )

    def _log(self, trainer: pl.Trainer, what: str) -> None:
        print(
            f"[faults] attempt {_attempt()} rank {trainer.global_rank}: {what} at step "
            f"{trainer.global_step} pid {os.getpid()}",
            flush=True,
        )


class KillAt(_Fault):
    """SIGKILL this rank in the middle of the step (after the forward, before the backward)."""

    def on_before_backward(self, trainer: pl.Trainer, *args: object) -> None:
        if self._armed(trainer):
            self.fired = True
            self._log(trainer, "SIGKILL")
            os.kill(os.getpid(), signal.SIGKILL)


class HangAt(_Fault):
    """Stop this rank in the middle of the step for `seconds` (a stuck forward): the other ranks
    wait for it in the gradient all-reduce."""

    def __init__(
        self,
        step: int,
        seconds: float = 3600.0,
        ranks: list[int] | None = None,
        attempts: list[int] | None = None,
    ) -> None:
        super().__init__(step, ranks, attempts)
        self.seconds = seconds

    def on_before_backward(self, trainer: pl.Trainer, *args: object) -> None:
        if self._armed(trainer):
            self.fired = True
            self._log(trainer, f"hanging for {self.seconds:g} s")
            time.sleep(self.seconds)


class SignalDuringSave(_Fault):
    """Send SIGUSR1 (the Slurm time-limit warning) to this process while a checkpoint is being
    written at `step` (every rank by default, as srun delivers it to every task)."""

    def on_save_checkpoint(self, trainer: pl.Trainer, *args: object) -> None:
        if self._armed(trainer):
            self.fired = True
            self._log(trainer, "SIGUSR1 during a checkpoint save")
            os.kill(os.getpid(), signal.SIGUSR1)
