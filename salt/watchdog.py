"""Hang detection: a stuck rank becomes an error that names the rank, the phase and the step.

Two limits come from one run option, ``salt fit --hang_timeout SECONDS`` (default 600; 0 = off):

- ``HangWatchdog``, a callback with a daemon thread. The training loop's hooks mark the phase the
  host thread is in (first batch, data wait, forward, backward with its gradient all-reduce,
  optimizer step, batch-end callbacks with the requeue vote, checkpoint save, live probe) and when
  it began: a time read and two assignments per hook, no device work, no collective. When one
  phase lasts longer than ``hang_timeout`` (×``startup_factor`` until the first optimizer step
  has finished: compilation, NCCL communicator set-up, cold page caches), the thread prints
  ``[salt.watchdog] rank R/W (host, pid): no progress for N s in phase P at step S``, dumps the
  Python stack of every thread and ends the process with exit code ``HANG_EXIT_CODE`` (124).
  Under srun (``--kill-on-bad-exit``) that ends the job step, and ``slurm/train.sbatch`` retries
  the job from its newest checkpoint. Every rank runs its own watchdog. Where one rank is stuck
  in its forward (a decoder spinning in C code, a dead file system) and the others wait for it in
  the gradient all-reduce, the stuck rank entered its phase first, so it reports first: its line
  names the culprit, the others' (if srun has not ended them yet) name the collective.
- the process-group (NCCL / gloo) timeout, ``COLLECTIVE_FACTOR × hang_timeout`` (×
  ``startup_factor`` until the first optimizer step has finished, then shortened on every rank:
  the rendezvous and the first step wait for the slowest rank to start, e.g. rank 0 opening the
  MLflow store). ``set_collective_timeout`` sets it on the strategy before the group exists. It is
  the backstop for hangs the host thread does not see where they are (a CUDA stream stuck in NCCL
  while the host has run ahead): torch's NCCL watchdog then aborts with the collective's name. It
  is longer than the watchdog's limit so that, where both would fire, the phase report comes first.

Where the GPU runs behind the host, "phase" is where the *host* waits (e.g. the logging step's
read of the loss), which is where a hang shows. A C call that never releases the GIL cannot be
interrupted by any Python thread; the process-group timeout still ends the collectives around it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

HANG_EXIT_CODE = 124  # like timeout(1); slurm/train.sbatch retries it as a crash
COLLECTIVE_FACTOR = 2.0  # process-group timeout = this × hang_timeout

_ACTIVE: HangWatchdog | None = None  # the watchdog of this process while a fit runs


def mark(phase: str) -> None:
    """Tell the running watchdog (if any) that the host thread entered ``phase`` now."""
    if _ACTIVE is not None:
        _ACTIVE.enter(phase)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Mark ``name`` for the duration of the block, then the phase that was current before."""
    before = _ACTIVE.current if _ACTIVE is not None else None
    mark(name)
    try:
        yield
    finally:
        if before is not None:
            mark(before)


STARTUP_FACTOR = 3.0  # limits before the first optimizer step = this × the steady ones
_STEADY: timedelta | None = None  # the process-group timeout after the first step


def set_collective_timeout(
    strategy: Any, hang_timeout: float, startup_factor: float = STARTUP_FACTOR
) -> timedelta | None:
    """Set the strategy's process-group timeout (Lightning's DDP / FSDP / ModelParallel keep it in
    ``_timeout``) before it creates the group: ``startup_factor × COLLECTIVE_FACTOR ×
    hang_timeout`` for the rendezvous and the first step, ``COLLECTIVE_FACTOR × hang_timeout``
    after it (``HangWatchdog`` shortens it). Returns the steady timeout, or None (off, or a
    strategy without a process group)."""
    global _STEADY
    from salt.dist import set_group_timeout

    _STEADY = None
    if hang_timeout <= 0 or not hasattr(strategy, "_timeout"):
        return None
    _STEADY = timedelta(seconds=COLLECTIVE_FACTOR * hang_timeout)
    startup = _STEADY * max(1.0, startup_factor)
    strategy._timeout = startup
    set_group_timeout(startup)  # the gloo group of host-side votes gets the same
    return _STEADY


class HangWatchdog(Callback):
    """Ends the process with a report when one training phase makes no progress for too long.

    Args:
        timeout_s: longest time one phase may take (seconds; ≤ 0 disables the watchdog).
        startup_factor: the limit is multiplied by this until the first optimizer step finished.
        poll_s: how often the thread looks (default: min(5 s, timeout/10)).
        on_hang: called with the report instead of dump-and-exit (tests).
    """

    def __init__(
        self,
        timeout_s: float = 600.0,
        startup_factor: float = STARTUP_FACTOR,
        poll_s: float | None = None,
        on_hang: Callable[[str], None] | None = None,
    ) -> None:
        self.timeout_s = float(timeout_s)
        self.startup_factor = float(startup_factor)
        self.poll_s = poll_s if poll_s is not None else max(0.05, min(5.0, self.timeout_s / 10))
        self.on_hang = on_hang
        self.current = "setup"
        self._since = time.monotonic()
        self._steps_done = 0
        self._step = 0
        self._who = "rank 0/1"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: str | None = None

    # ----------------------------------------------------------------- phase bookkeeping
    def enter(self, phase: str) -> None:
        # the hot path: two assignments and a clock read
        self.current = phase
        self._since = time.monotonic()

    def limit(self) -> float:
        return self.timeout_s * (self.startup_factor if self._steps_done == 0 else 1.0)

    def report(self, elapsed: float) -> str:
        return (
            f"[salt.watchdog] {self._who} ({socket.gethostname()}, pid {os.getpid()}): no progress "
            f"for {elapsed:.0f} s in phase '{self.current}' at step {self._step} "
            f"(limit {self.limit():g} s = hang_timeout {self.timeout_s:g} s"
            f"{f' x startup {self.startup_factor:g}' if self._steps_done == 0 else ''}); "
            f"ending this process with exit code {HANG_EXIT_CODE} (stacks follow)"
        )

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            elapsed = time.monotonic() - self._since
            if elapsed <= self.limit():
                continue
            self.fired = self.report(elapsed)
            if self.on_hang is not None:
                self.on_hang(self.fired)
                self.enter(self.current)  # re-arm: report again after another full limit
                continue
            print(self.fired, file=sys.stderr, flush=True)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
            os._exit(HANG_EXIT_CODE)

    # ----------------------------------------------------------------- Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        global _ACTIVE
        if stage != "fit" or self.timeout_s <= 0:
            return
        self._who = f"rank {trainer.global_rank}/{trainer.world_size}"
        self._steps_done = 0
        self.enter("setup (model, teacher, checkpoint restore)")
        _ACTIVE = self
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="salt-watchdog", daemon=True)
        self._thread.start()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        global _ACTIVE
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        if _ACTIVE is self:
            _ACTIVE = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step = trainer.global_step
        self.enter("data wait (first batch: workers start, shuffle buffer fills)")

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._step = trainer.global_step
        self.enter("forward (training_step)")

    def on_before_backward(self, *args: Any) -> None:
        self.enter("backward (gradient all-reduce / reduce-scatter)")

    def on_after_backward(self, *args: Any) -> None:
        self.enter("after backward (gradient sync wait)")

    def on_before_optimizer_step(self, *args: Any) -> None:
        self.enter("optimizer step (grad norm, clipping, AdamW)")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step != self._step:  # an optimizer step finished (not mid-accumulation)
            self._steps_done += 1
            if self._steps_done == 1 and _STEADY is not None:
                from salt.dist import shorten_timeouts

                shorten_timeouts(_STEADY)  # every rank, after the same step
        self._step = trainer.global_step
        self.enter("batch-end callbacks (requeue vote, checkpoints, probes, logging)")

    def on_save_checkpoint(self, *args: Any) -> None:
        self.enter("checkpoint save")

    def on_validation_batch_start(self, *args: Any) -> None:
        self.enter("validation batch")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, err: Any) -> None:
        self.teardown(trainer, pl_module, "fit")
