"""Rank agreement on 2 CPU processes (gloo DDP, the real Lightning Trainer and StudentModule):

- a NaN in the teacher targets on rank 1 only (L1's gradient stays finite there) makes *every*
  rank skip that step: the replicas stay identical and both count one skipped step;
- `train/loss` is the mean over ranks, `train/nonfinite_losses` the sum, and the checkpoint's
  `train_loss` is the mean over every rank's finite losses;
- the teacher file is hashed once per job (rank 0), not once per rank;
- two ranks that picked different checkpoints to resume both restore rank 0's;
- a rank stuck in its forward: both ranks' watchdogs end their process (exit 124) naming the rank,
  the phase and the step, long before the (shortened) gloo timeout.

The ranks are plain processes (RANK / LOCAL_RANK / WORLD_SIZE set, as a launcher would), so each
one's exit code and output are checked on their own. This file is also the worker:
`python tests/test_train_ranks.py MODE OUT_DIR SHARDS [TEACHER]`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_helpers import datamodule, module_kwargs, shards, train_teacher_checkpoint  # noqa: E402, F401

HANG_TIMEOUT = 4.0


# --------------------------------------------------------------------------- launching


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(*args: str, timeout: float = 240.0) -> list[tuple[int, str]]:
    """Start this file as 2 ranks; (exit code, output) per rank."""
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "TORCHELASTIC_", "SALT_"))
        }
        env.update(
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", NODE_RANK="0",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1",
            PYTHONWARNINGS="ignore",
        )  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    out = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            texts = [q.communicate()[0] for q in procs]
            pytest.fail(f"ranks still running after {timeout:.0f} s (a hang):\n" + "\n".join(texts))
        out.append((p.returncode, text))
    return out


# --------------------------------------------------------------------------- the worker


class MemLogger(pl.loggers.Logger):
    """Keeps what Lightning logs, in memory (this process's view)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "mem"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))


class LocalLosses(pl.Callback):
    """Each rank's own loss per optimizer step, and the step each fit started from."""

    def __init__(self, save_at: Path | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.start_step: int | None = None
        self.save_at = save_at

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step - 1] = float(outputs["loss"])
        if self.save_at is not None and trainer.global_step == 3:
            trainer.save_checkpoint(self.save_at)  # every rank: a collective save


def _trainer(max_steps: int, callbacks: list, logger: Any = False) -> pl.Trainer:
    from salt.checkpointing import AtomicCheckpointIO

    return pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=max_steps, logger=logger,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, plugins=[AtomicCheckpointIO()], callbacks=callbacks,
    )  # fmt: skip


def worker_agree(out: Path, train_shards: str, teacher: str) -> None:
    import torch.distributed as dist

    import salt.student
    from salt.resume import ResumeAgreement
    from salt.step import gather_mask_targets, latent_targets, masked_regression_loss
    from salt.student import StudentModule

    calls = []
    real_sha = salt.student.file_sha256
    salt.student.file_sha256 = lambda p: calls.append(str(p)) or real_sha(p)

    class NaNTargets(StudentModule):
        """The real stage-2 module; on rank 1 at step 2 its teacher targets are NaN."""

        def training_loss(self, batch: dict, health: bool = False):
            if not (self.global_step == 2 and self.global_rank == 1):
                return super().training_loss(batch, health)
            video = self.normalize(batch["video"])
            targets = latent_targets(self.teacher_on(video.device).encoder, video, -1)
            per_mask = gather_mask_targets(targets * float("nan"), batch["masks"])
            return masked_regression_loss(
                self.encoder, self.predictor, video, batch["masks"], per_mask, loss="l1"
            )

    torch.manual_seed(0)
    kwargs = module_kwargs("student", teacher=teacher, max_nonfinite=5)
    model = NaNTargets(**kwargs)
    calls_at_init = len(calls)
    local, logger = LocalLosses(save_at=out / "step3.ckpt"), MemLogger()
    trainer = _trainer(5, [local], logger)
    trainer.fit(model, datamodule=datamodule(train_shards, batch_size=2))
    rank = trainer.global_rank
    digest = float(sum(p.detach().double().sum() for p in model.parameters()))
    trainer.save_checkpoint(out / "step5.ckpt")  # every rank (collective); rank 0 writes
    views: list[Any] = [None, None]
    mine = {
        "digest": digest,
        "skipped": model.guard.count(),
        "calls_at_init": calls_at_init,
        "calls": len(calls),
        "sha256": model.teacher_info["sha256"],
        "losses": local.losses,
    }
    dist.all_gather_object(views, mine)

    # resume: rank 1 "sees" an older newest checkpoint than rank 0
    chosen = str(out / ("step5.ckpt" if rank == 0 else "step3.ckpt"))
    resumed = LocalLosses()
    t2 = _trainer(7, [ResumeAgreement(chosen), resumed])
    t2.fit(
        NaNTargets(**kwargs), datamodule=datamodule(train_shards, batch_size=2), ckpt_path=chosen
    )
    starts: list[Any] = [None, None]
    dist.all_gather_object(starts, resumed.start_step)
    if rank == 0:
        meta = torch.load(out / "step5.ckpt", weights_only=True)["salt"]
        report = {
            "ranks": views,
            "logged": logger.rows,
            "train_loss": meta["train_loss"],
            "meta_skipped": meta["skipped_steps"],
            "resumed_from": starts,
            "real_sha256": real_sha(teacher),
        }
        (out / "report.json").write_text(json.dumps(report, indent=1))


def worker_hang(out: Path, train_shards: str) -> None:
    import torch.distributed as dist
    from faults import HangAt

    from salt.teacher import TeacherModule
    from salt.watchdog import HangWatchdog, set_collective_timeout

    class ReportTimeout(pl.Callback):
        def _report(self, when: str) -> None:
            backend = dist.group.WORLD._get_backend(torch.device("cpu"))
            seconds = backend.options._timeout.total_seconds()
            print(f"[test] gloo timeout {when} {seconds:g} s", flush=True)

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self._report("at start")

        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == 2:
                self._report("at step 2")

    model = TeacherModule(**module_kwargs("teacher"))
    callbacks = [
        ReportTimeout(),
        HangAt(step=2, seconds=120, ranks=[1]),
        HangWatchdog(HANG_TIMEOUT),
    ]
    trainer = _trainer(6, callbacks)
    set_collective_timeout(trainer.strategy, HANG_TIMEOUT)
    trainer.fit(model, datamodule=datamodule(train_shards, batch_size=2))
    print("[test] fit returned", flush=True)


# --------------------------------------------------------------------------- the tests


@pytest.mark.slow
def test_ranks_agree_on_skips_losses_teacher_hash_and_resume(tmp_path: Path, shards: str) -> None:  # noqa: F811
    teacher = train_teacher_checkpoint(tmp_path / "teacher", shards, steps=2)
    results = run_ranks("agree", str(tmp_path), shards, str(teacher))
    for rc, text in results:
        assert rc == 0, text[-6000:]
    report = json.loads((tmp_path / "report.json").read_text())
    r0, r1 = report["ranks"]

    # the NaN-target step was skipped on both ranks: the replicas are still identical
    assert r1["losses"]["2"] != r1["losses"]["2"]  # rank 1's loss at step 2 was NaN...
    assert r0["losses"]["2"] == r0["losses"]["2"]  # ...rank 0's finite
    assert r0["digest"] == r1["digest"], (r0["digest"], r1["digest"])
    assert r0["skipped"] == r1["skipped"] == 1 and report["meta_skipped"] == 1

    # logged values are over both ranks: mean of the finite losses, sum of the non-finite counts
    logged: dict[int, dict[str, float]] = {}
    for step, metrics in report["logged"]:
        logged.setdefault(step, {}).update(metrics)
    for step in (0, 1, 3, 4):
        want = (r0["losses"][str(step)] + r1["losses"][str(step)]) / 2
        assert logged[step]["train/loss"] == pytest.approx(want, rel=1e-5), step
    assert logged[2]["train/loss"] == pytest.approx(r0["losses"]["2"], rel=1e-5)
    assert logged[1]["train/nonfinite_losses"] == 0 and logged[2]["train/nonfinite_losses"] == 1
    assert logged[4]["train/skipped_steps"] == 1

    # the checkpoint's train_loss: mean of every rank's finite losses since step3.ckpt
    finite = [r[k] for r in (r0["losses"], r1["losses"]) for k in ("3", "4")]
    assert report["train_loss"] == pytest.approx(sum(finite) / len(finite), rel=1e-6)

    # the teacher was hashed once, by rank 0, and both ranks hold its true hash
    assert r0["calls_at_init"] == r1["calls_at_init"] == 0
    assert (r0["calls"], r1["calls"]) == (1, 0)
    assert r0["sha256"] == r1["sha256"] == report["real_sha256"]

    # rank 1 chose step3.ckpt, rank 0 step5.ckpt: both restored rank 0's
    assert report["resumed_from"] == [5, 5]


@pytest.mark.slow
def test_hanging_rank_ends_both_ranks_with_a_report(tmp_path: Path, shards: str) -> None:  # noqa: F811
    t0 = time.monotonic()
    (rc0, out0), (rc1, out1) = run_ranks("hang", str(tmp_path), shards, timeout=180)
    took = time.monotonic() - t0
    from salt.watchdog import HANG_EXIT_CODE

    # hang_timeout sets the process group's: 3x until the first step has finished, then 2x
    assert f"[test] gloo timeout at start {6 * HANG_TIMEOUT:g} s" in out0
    assert f"[test] gloo timeout at step 2 {2 * HANG_TIMEOUT:g} s" in out0
    assert rc1 == HANG_EXIT_CODE, out1[-4000:]
    assert (
        "[salt.watchdog] rank 1/2" in out1 and "phase 'forward (training_step)' at step 2" in out1
    )
    assert "Current thread" in out1 or "Thread 0x" in out1  # the stacks were dumped
    assert rc0 == HANG_EXIT_CODE, out0[-4000:]
    assert "[salt.watchdog] rank 0/2" in out0 and "at step 2" in out0
    assert "backward" in out0.split("[salt.watchdog] rank 0/2")[1].split("\n")[0]
    assert "fit returned" not in out0 + out1
    assert took < 120  # not the 120 s sleep, nor torch's 30-minute default


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    if mode == "agree":
        worker_agree(out_dir, sys.argv[3], sys.argv[4])
    elif mode == "hang":
        worker_hang(out_dir, sys.argv[3])
