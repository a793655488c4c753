"""salt.watchdog on a real Trainer in one process (the 2-rank hang is tests/test_train_ranks.py):
a phase that outlasts the limit is reported with its rank, phase and step; the first step gets
the startup allowance; a checkpoint save and a live probe are phases of their own; the
process-group timeout is set from the same value."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from train_helpers import TinyModule

from salt.watchdog import HangWatchdog, phase, set_collective_timeout


class _Stall(pl.Callback):
    """Sleeps in the middle of the given steps (after the forward, before the backward)."""

    def __init__(self, at: dict[int, float], in_phase: str | None = None) -> None:
        self.at, self.in_phase = at, in_phase

    def on_before_backward(self, trainer: pl.Trainer, *args: Any) -> None:
        seconds = self.at.pop(trainer.global_step, 0.0)
        if seconds and self.in_phase:
            with phase(self.in_phase):
                time.sleep(seconds)
        elif seconds:
            time.sleep(seconds)


def _fit(callbacks: list, steps: int = 5) -> None:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(TinyModule(), torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=2))


def test_stuck_phase_is_reported_with_rank_phase_and_step() -> None:
    reports: list[str] = []
    # step 0 stalls 0.6 s: under the 3x startup allowance of a 0.4 s limit; step 3 stalls 1.2 s
    _fit([_Stall({0: 0.6, 3: 1.2}), HangWatchdog(0.4, poll_s=0.02, on_hang=reports.append)])
    assert reports, "no report"
    assert all("at step 3" in r for r in reports), reports
    first = reports[0]
    assert first.startswith("[salt.watchdog] rank 0/1 (") and "no progress for" in first
    assert "phase 'forward (training_step)' at step 3" in first
    assert "limit 0.4 s = hang_timeout 0.4 s" in first and "exit code 124" in first


def test_named_phases_and_off_switch() -> None:
    reports: list[str] = []
    _fit([_Stall({2: 0.5}, "live probe"), HangWatchdog(0.2, poll_s=0.02, on_hang=reports.append)])
    assert reports and "phase 'live probe' at step 2" in reports[0]
    quiet: list[str] = []
    _fit([_Stall({2: 0.3}), HangWatchdog(0, poll_s=0.02, on_hang=quiet.append)])
    assert quiet == []


def test_collective_timeout_follows_hang_timeout() -> None:
    from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

    ddp = DDPStrategy()
    assert set_collective_timeout(ddp, 300) == timedelta(seconds=600)  # after the first step
    # what Lightning passes to init_process_group: the rendezvous and first step get 3x
    assert ddp._timeout == timedelta(seconds=1800)
    assert set_collective_timeout(ddp, 0) is None and ddp._timeout == timedelta(seconds=1800)
    assert set_collective_timeout(SingleDeviceStrategy("cpu"), 300) is None


@pytest.mark.parametrize("value", [0.0, 600.0])
def test_salt_fit_option(value: float) -> None:
    from salt.resume import run_callbacks

    opts = {"hang_timeout": value, "checkpoint_every": 10, "checkpoint_minutes": None,
            "keep_checkpoints": None}  # fmt: skip
    dog = next(cb for cb in run_callbacks("ckpts", opts, None) if isinstance(cb, HangWatchdog))
    assert dog.timeout_s == value
