"""Readable ``salt fit`` output for batch jobs: plain progress lines and an end-of-fit summary.

``ProgressLines`` prints, on global rank 0, one ``salt.progress.ProgressLine`` every ``every``
optimizer steps instead of a redrawn bar (``salt fit`` installs it whenever the bar is off: stdout
is not a terminal, or ``--trainer.enable_progress_bar false``)::

    [fit] step 200/1000 (20.0%)  loss 0.4121  clips/s 161.3  data-wait 2%  ETA 4m10s

``clips/s`` is the whole job's rate (this rank's clips × world size) and ``data-wait`` the share
of wall time the loop spent waiting for the next batch, both since the previous line; ``loss`` is
the last logged ``train/loss`` (read once per line, so the host syncs with the device once per
``every`` steps, not per step).

``FitSummary`` prints a block when the fit ends (always, bar or not): steps, wall time, mean
clips/s, skipped samples by reason (the DataModule's counts), the last and the best-by-loss
checkpoint (lowest ``train_loss`` in the checkpoints' metadata), the MLflow run and the command
that opens it, and whether the tracking store was ever unreachable.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from salt.progress import ProgressLine, format_duration


def _loss(trainer: pl.Trainer) -> float | None:
    value = trainer.callback_metrics.get("train/loss")
    return None if value is None else float(value)


class _Clock:
    """Wall time and clips of the training loop, split into compute and data wait."""

    def __init__(self) -> None:
        self.clips = 0
        self.wait = 0.0
        self.last_end: float | None = None

    def batch_start(self) -> None:
        if self.last_end is not None:
            self.wait += time.perf_counter() - self.last_end

    def batch_end(self, batch: Any) -> None:
        video = batch.get("video") if isinstance(batch, dict) else None
        self.clips += int(video.shape[0]) if video is not None else 0
        self.last_end = time.perf_counter()


class ProgressLines(pl.Callback):
    """One plain line every ``every`` optimizer steps on global rank 0 (see module docstring).

    Args:
        every: steps between lines (the first and the last step always print).
        prefix: the bracketed tag at the start of each line.
    """

    def __init__(self, every: int = 50, prefix: str = "fit") -> None:
        self.every = max(1, int(every))
        self.prefix = prefix
        self.line: ProgressLine | None = None
        self._clock = _Clock()
        self._window: tuple[float, int, float] | None = None  # (time, clips, wait) at last line
        self._last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.line = ProgressLine(self.prefix, total, every=self.every)
        self._last_step = trainer.global_step
        self._window = (time.perf_counter(), 0, 0.0)
        self.line.update(trainer.global_step)  # start the ETA clock at the restored step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._clock.batch_start()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *a: Any
    ) -> None:
        self._clock.batch_end(batch)
        step = trainer.global_step
        if step == self._last_step or self.line is None:
            return  # inside a gradient-accumulation window
        self._last_step = step
        if not trainer.is_global_zero or not self.line.due(step):
            return
        now, clock = time.perf_counter(), self._clock
        t0, clips0, wait0 = self._window
        elapsed = max(now - t0, 1e-9)
        self._window = (now, clock.clips, clock.wait)
        text = self.line.update(
            step,
            loss=_loss(trainer),
            **{"clips/s": (clock.clips - clips0) * trainer.world_size / elapsed},
            **{"data-wait": f"{100.0 * (clock.wait - wait0) / elapsed:.0f}%"},
        )
        if text:
            print(text, flush=True)


def checkpoint_losses(checkpoint_dir: str | Path) -> list[tuple[Path, int | None, float | None]]:
    """``(path, step, train_loss)`` of every complete checkpoint in the folder (metadata only:
    memory-mapped, ``weights_only``); unreadable ones are left out."""
    import torch

    from salt.resume import list_checkpoints

    out = []
    for path in list_checkpoints(checkpoint_dir):
        try:
            source = path / "meta.pt" if path.is_dir() else path
            ckpt = torch.load(source, map_location="cpu", mmap=True, weights_only=True)
            meta = ckpt.get("salt") or {}
            step = meta.get("step", ckpt.get("global_step"))
            out.append((path, None if step is None else int(step), meta.get("train_loss")))
        except Exception:
            continue
    return out


def best_by_loss(found: list[tuple[Path, int | None, float | None]]) -> tuple | None:
    """The checkpoint with the lowest ``train_loss`` (ties: the later step; ``last`` only when
    no periodic file has that loss)."""
    scored = [f for f in found if f[2] is not None]
    if not scored:
        return None
    return min(scored, key=lambda f: (f[2], -(f[1] or 0), f[0].name.startswith("last")))


class FitSummary(pl.Callback):
    """The end-of-fit block on global rank 0 (see the module docstring).

    Args:
        checkpoint_dir: the run's checkpoint folder.
        prefix: the bracketed tag at the start of each line.
    """

    def __init__(self, checkpoint_dir: str | Path, prefix: str = "fit") -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.prefix = prefix
        self._clock = _Clock()
        self._t0: float | None = None
        self._train_s = 0.0
        self._start_step = 0
        self.lines: list[str] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = trainer.global_step
        self._train_t0 = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._clock.batch_start()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, *a: Any
    ) -> None:
        self._clock.batch_end(batch)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_s = time.perf_counter() - getattr(self, "_train_t0", time.perf_counter())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ended = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # After the DataModule's teardown (its final counts are logged) and before Lightning
        # finalizes the loggers: send what is queued so the summary says what reached the store.
        if stage != "fit" or not getattr(self, "_ended", False) or not trainer.is_global_zero:
            return
        self._ended = False
        from salt.tracking import SaltMLflowLogger

        for logger in trainer.loggers:
            if isinstance(logger, SaltMLflowLogger) and logger._writer is not None:
                logger._writer.flush(timeout=min(5.0, logger._writer.final_wait_s))
        self.lines = self.format(trainer)
        print("\n".join(self.lines), flush=True)

    def format(self, trainer: pl.Trainer) -> list[str]:
        """The summary lines (also kept in ``self.lines``)."""
        p = f"[{self.prefix}]"
        wall = time.perf_counter() - (self._t0 or time.perf_counter())
        steps = trainer.global_step - self._start_step
        rate = self._clock.clips * trainer.world_size / self._train_s if self._train_s > 0 else 0
        total = f" of max_steps {trainer.max_steps}" if trainer.max_steps > 0 else ""
        out = [
            f"{p} summary",
            f"{p}   steps        {trainer.global_step}{total} ({steps} in this attempt, "
            f"from step {self._start_step})",
            f"{p}   wall time    {format_duration(wall)} (training loop {format_duration(self._train_s)})",
            f"{p}   clips/s      {rate:.1f} mean over the attempt ({trainer.world_size} rank(s))",
            f"{p}   skipped      {_skipped(trainer)}",
        ]
        found = checkpoint_losses(self.checkpoint_dir)
        last = max(found, key=lambda f: (f[1] or -1, f[0].name.startswith("last")), default=None)
        best = best_by_loss(found)
        out.append(f"{p}   last ckpt    {_describe(last)}")
        out.append(f"{p}   best by loss {_describe(best)}")
        out.extend(_tracking_lines(trainer, p))
        return out


def _describe(found: tuple | None) -> str:
    if found is None:
        return "none"
    path, step, loss = found
    loss_text = "-" if loss is None else f"{loss:.4f}"
    return f"{path} (step {step}, train_loss {loss_text})"


def _skipped(trainer: pl.Trainer) -> str:
    stats = getattr(getattr(trainer, "datamodule", None), "data_stats", dict)()
    skipped = {
        k[len("data/skipped_") :]: int(v) for k, v in stats.items() if k.startswith("data/skipped_")
    }
    events = {
        k[len("data/") :]: int(v)
        for k, v in stats.items()
        if k.startswith("data/") and not k.startswith(("data/skipped_", "data/val_"))
    }
    text = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()) if v) or "none"
    extra = ", ".join(f"{k} {v}" for k, v in sorted(events.items()) if v)
    return f"{text} (rank 0){f'; events: {extra}' if extra else ''}"


def _tracking_lines(trainer: pl.Trainer, p: str) -> list[str]:
    from salt.tracking import SaltMLflowLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, SaltMLflowLogger)]
    if not loggers:
        return [f"{p}   mlflow       off"]
    logger = loggers[0]
    out = [
        f"{p}   mlflow       run {logger.version or '(pending: store unreachable)'} in "
        f"experiment {logger.name!r} at {logger.shown_uri}",
    ]
    if logger.shown_uri.startswith(("http://", "https://")):
        out.append(f"{p}                open {logger.shown_uri} in a browser")
    else:
        out.append(f"{p}                mlflow ui --backend-store-uri {logger.shown_uri}")
    stats = logger.tracking_stats()
    if stats.get("outages"):
        out.append(
            f"{p}   tracking     store unreachable {stats['outages']} time(s); "
            f"{stats['spooled']} operation(s) spooled, {stats['replayed']} replayed, "
            f"{stats['backlog']} waiting in {logger.save_dir}/tracking-spool.jsonl"
        )
    return out
