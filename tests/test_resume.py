"""Exact resume without Slurm: `salt fit --ckpt_path auto` after a crash continues the run.

The full path runs in-process through the real CLI (SaltCLI), real shards, real MLflow (sqlite):
a 6-step run crashing at step 4 (checkpoint at 3); `--ckpt_path auto` then resumes at step 3 with
the optimizer state, lr/wd schedule position (compared with the uninterrupted schedule), data-module
state and MLflow run of the checkpoint, and the data/mask streams continue fresh, not replayed.
Plus the helpers of salt.resume (newest checkpoint, truncated files, Slurm ids, the signal path).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import zipfile
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from train_helpers import TinyModule

from salt.cli import SaltCLI
from salt.errors import UsageError
from salt.requeue import SlurmRequeue
from salt.resume import (
    attempt_info,
    checkpoint_step,
    decide_ckpt_path,
    find_latest_checkpoint,
    in_slurm_task,
    list_checkpoints,
    resolve_ckpt_path,
    slurm_job_key,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def _fake_ckpt(path: Path, step: int) -> Path:
    torch.save({"global_step": step, "state_dict": {}}, path)
    return path


def test_latest_checkpoint_by_step_skipping_partial_files(tmp_path: Path) -> None:
    assert find_latest_checkpoint(tmp_path / "missing") is None
    assert resolve_ckpt_path("auto", tmp_path) is None  # fresh start
    _fake_ckpt(tmp_path / "step=0000003.ckpt", 3)
    _fake_ckpt(tmp_path / "step=0000010.ckpt", 10)
    _fake_ckpt(tmp_path / "last.ckpt", 12)  # no step in the name: read from the contents
    (tmp_path / ".step=0000020.ckpt.tmp-123").write_bytes(b"partial")  # an atomic save in flight
    truncated = tmp_path / "step=0000030.ckpt"  # a kill mid-write without the atomic plugin
    full = (tmp_path / "step=0000010.ckpt").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    assert not zipfile.is_zipfile(truncated)
    assert checkpoint_step(tmp_path / "last.ckpt") == 12
    assert checkpoint_step(tmp_path / "step=0000003.ckpt") == 3
    names = ["last.ckpt", "step=0000003.ckpt", "step=0000010.ckpt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == names
    assert find_latest_checkpoint(tmp_path) == tmp_path / "last.ckpt"
    assert resolve_ckpt_path("auto", tmp_path) == str(tmp_path / "last.ckpt")
    _fake_ckpt(tmp_path / "step=0000012.ckpt", 12)  # same step: the step= name wins over last
    assert find_latest_checkpoint(tmp_path) == tmp_path / "step=0000012.ckpt"
    # explicit values pass through untouched
    assert resolve_ckpt_path("last", tmp_path) == "last"
    assert resolve_ckpt_path(None, tmp_path) is None
    # a sharded (FSDP) folder counts once its metadata and DCP index exist
    sharded = tmp_path / "step=0000040.ckpt"
    sharded.mkdir()
    assert find_latest_checkpoint(tmp_path) == tmp_path / "step=0000012.ckpt"
    torch.save({"global_step": 40}, sharded / "meta.pt")
    (sharded / ".metadata").write_bytes(b"x")
    assert find_latest_checkpoint(tmp_path) == sharded


_RESTART_VARS = ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT", "SALT_ATTEMPT")


def test_resume_rule(tmp_path: Path, monkeypatch, capsys) -> None:
    """A restart resumes the run's newest checkpoint over --ckpt_path; a first start into a folder
    with checkpoints is refused unless --ckpt_path asks for one of them (or auto)."""
    for var in _RESTART_VARS:
        monkeypatch.delenv(var, raising=False)
    ckpts = tmp_path / "run" / "checkpoints"
    other = _fake_ckpt(tmp_path / "other.ckpt", 2)
    assert decide_ckpt_path(None, ckpts) is None  # a fresh start
    assert decide_ckpt_path("auto", ckpts) is None
    assert decide_ckpt_path(str(other), ckpts) == str(other)  # seeds the first attempt
    ckpts.mkdir(parents=True)
    step3 = _fake_ckpt(ckpts / "step=0000003.ckpt", 3)
    newest = _fake_ckpt(ckpts / "step=0000006.ckpt", 6)

    # first start of a job into a folder that holds checkpoints (reused job id or --run_name)
    with pytest.raises(UsageError, match=r"already holds checkpoints .*step 6.*--ckpt_path auto"):
        decide_ckpt_path(None, ckpts)
    with pytest.raises(UsageError, match="is not one of them"):
        decide_ckpt_path(str(other), ckpts)
    assert decide_ckpt_path("auto", ckpts) == str(newest)  # asking: continue it
    assert decide_ckpt_path(str(step3), ckpts) == str(step3)  # asking for one of them
    assert decide_ckpt_path("last", ckpts) == "last"  # Lightning's own keyword

    # a restart (Slurm requeue / crash retry, torchrun restart): the newest wins over the user's
    capsys.readouterr()
    for env in ({"SLURM_RESTART_COUNT": "1"}, {"TORCHELASTIC_RESTART_COUNT": "2"}):
        for requested in (str(other), str(step3), None, "auto"):
            assert decide_ckpt_path(requested, ckpts, env) == str(newest), (env, requested)
    assert f"wins over --ckpt_path {other}" in capsys.readouterr().out
    # a restart before the first checkpoint was written starts from the user's file again
    assert decide_ckpt_path(str(other), tmp_path / "new", {"SLURM_RESTART_COUNT": "1"}) == str(
        other
    )


def test_attempt_info() -> None:
    assert attempt_info({}) == {
        "attempt": 1,
        "restarts": 0,
        "crash_retries": None,
        "max_retries": None,
    }
    env = {"SLURM_RESTART_COUNT": "2", "SALT_ATTEMPT": "3", "SALT_CRASH_RETRIES": "1",
           "SALT_MAX_RETRIES": "3"}  # fmt: skip
    assert attempt_info(env) == {"attempt": 3, "restarts": 2, "crash_retries": 1, "max_retries": 3}


def test_slurm_ids() -> None:
    assert slurm_job_key({"SLURM_JOB_ID": "12"}) == "12"
    env = {"SLURM_JOB_ID": "13", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "3"}
    assert slurm_job_key(env) == "10_3"  # stable across requeues of one array task
    assert slurm_job_key({}) is None
    assert in_slurm_task({"SLURM_JOB_ID": "1", "SLURM_PROCID": "0"})
    assert not in_slurm_task({"SLURM_JOB_ID": "1"})  # the batch script itself, not an srun task
    assert not in_slurm_task({})


# --------------------------------------------------------------------------- the signal path


class _SendSignal(pl.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_signal_checkpoints_at_agreed_step_and_stops(
    tmp_path: Path, monkeypatch, accumulate: int
) -> None:
    """Inside an srun task, SIGUSR1 only flags; the end of the next optimizer step (never inside
    a gradient-accumulation window) saves `step=N-requeue.ckpt` and stops training (the scontrol
    call itself is exercised in tests/test_slurm.py)."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_PROCID", "0")
    before = signal.getsignal(signal.SIGUSR1)
    requeue = SlurmRequeue(dirpath=str(tmp_path / "ckpts"), requeue=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=20,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[requeue, _SendSignal(at_step=3)],
        accumulate_grad_batches=accumulate,
    )
    data = torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=2)
    trainer.fit(TinyModule(), data)
    assert trainer.global_step == 4  # the flagged step finished, then the trainer stopped
    assert requeue.saved_path == tmp_path / "ckpts" / "step=0000004-requeue.ckpt"
    assert torch.load(requeue.saved_path, weights_only=False)["global_step"] == 4
    assert trainer.fit_loop.epoch_loop.batch_progress.current.completed == 4 * accumulate
    assert signal.getsignal(signal.SIGUSR1) == before  # handler restored on teardown


def test_inactive_outside_slurm(monkeypatch) -> None:
    for var in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)
    requeue = SlurmRequeue()
    requeue.setup(None, None, "fit")  # type: ignore[arg-type]
    assert not requeue._active


# --------------------------------------------------------------------------- full CLI resume


class _Record(pl.Callback):
    """What each step used: step, lr, wd, a digest of the clips, the first mask config."""

    def __init__(self, crash_at: int | None = None) -> None:
        self.crash_at = crash_at
        self.rows: list[dict] = []
        self.at_start: dict = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        opt = trainer.optimizers[0]
        self.at_start = {
            "step": trainer.global_step,
            "optimizer": copy.deepcopy(opt.state_dict()),  # tensors change in place later
            "data": copy.deepcopy(trainer.datamodule.state_dict()),
        }

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch: dict, idx: int) -> None:
        if self.crash_at is not None and trainer.global_step == self.crash_at:
            raise RuntimeError("simulated preemption")
        group = trainer.optimizers[0].param_groups[0]
        ctx, _ = batch["masks"][0]
        self.rows.append(
            {
                "step": trainer.global_step,
                "lr": group["lr"],
                "wd": group["weight_decay"],
                "video": hashlib.sha1(batch["video"].cpu().numpy().tobytes()).hexdigest(),
                "ctx": ctx.clone(),
            }
        )


def _fit(
    root: Path,
    shards: str,
    run_name: str,
    rec: _Record,
    max_steps: int = 6,
    ckpt_path: str = "auto",
) -> SaltCLI:
    class CLI(SaltCLI):
        def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.append(rec)
            return trainer

    args = [
        "fit", "-c", str(REPO / "configs" / "demo" / "teacher.yaml"),
        f"--data.train_shards={shards}", "--data.crop_size=32", "--data.frames_per_clip=8",
        "--data.frame_step=2", "--data.batch_size=4", "--data.num_workers=0",
        "--data.shuffle_buffer=8", '--model.init_args.encoder_kwargs={"patch_size": 8}',
        "--model.init_args.warmup_steps=2", f"--trainer.max_steps={max_steps}",
        "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}", f"--run_name={run_name}", "--checkpoint_every=3",
        f"--ckpt_path={ckpt_path}",
    ]  # fmt: skip
    return CLI(args=args)


@pytest.mark.slow
def test_cli_resume_is_exact(tmp_path: Path, shards: str) -> None:
    # the uninterrupted schedule of configs/demo/teacher.yaml with 6 steps and 2 warmup steps
    import yaml

    from salt.schedules import cosine, warmup_cosine

    demo = yaml.safe_load((REPO / "configs/demo/teacher.yaml").read_text())["model"]["init_args"]
    lrs = (demo["start_lr"], demo["lr"], demo["final_lr"])
    ref_lr = [warmup_cosine(s, 6, 2, *lrs) for s in range(6)]
    ref_wd = [cosine(s, 6, demo["weight_decay"], demo["final_weight_decay"]) for s in range(6)]
    root = tmp_path / "runs"
    first = _Record(crash_at=4)
    with pytest.raises(RuntimeError, match="simulated preemption"):
        _fit(root, shards, "run", first)
    assert [r["step"] for r in first.rows] == [0, 1, 2, 3]
    assert [r["lr"] for r in first.rows] == pytest.approx(ref_lr[:4], rel=1e-12)
    assert [r["wd"] for r in first.rows] == pytest.approx(ref_wd[:4], rel=1e-12)
    run_dir = root / "salt-demo" / "run"
    ckpt_dir = run_dir / "checkpoints"
    # the periodic save at step 3 (and Lightning's last.ckpt beside it); nothing after the crash
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt", "step=0000003.ckpt"]
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"] == 3
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    ckpt = torch.load(ckpt_dir / "step=0000003.ckpt", weights_only=False)

    second = _Record()
    _fit(root, shards, "run", second)

    # restored: step, optimizer state (moments, step counters, lr/wd in the groups), data state
    start = second.at_start
    assert start["step"] == 3
    want, got = ckpt["optimizer_states"][0], start["optimizer"]
    assert want["param_groups"] == got["param_groups"]
    assert want["state"].keys() == got["state"].keys()
    for k, s in want["state"].items():
        for name, value in s.items():
            torch.testing.assert_close(got["state"][k][name], value, rtol=0, atol=0)
    assert start["data"]["resume_count"] == 1 and start["data"]["batches_seen"] == 3
    assert start["data"]["seed"] == ckpt["VideoDataModule"]["seed"]

    # the schedule continues exactly where the uninterrupted run was
    assert [r["step"] for r in second.rows] == [3, 4, 5]
    assert [r["lr"] for r in second.rows] == pytest.approx(ref_lr[3:], rel=1e-12)
    assert [r["wd"] for r in second.rows] == pytest.approx(ref_wd[3:], rel=1e-12)
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert last["global_step"] == 6
    assert all(int(s["step"]) == 6 for s in last["optimizer_states"][0]["state"].values())

    # data and masks: a fresh stream after the resume, not a replay of the run's first batches
    first_videos = {r["video"] for r in first.rows}
    assert second.rows[0]["video"] not in first_videos
    assert not torch.equal(second.rows[0]["ctx"], first.rows[0]["ctx"])

    # the same MLflow run before and after, and it holds the steps of both attempts
    from mlflow.tracking import MlflowClient

    assert json.loads((run_dir / "run.json").read_text())["mlflow_run_id"] == run_id
    assert last["salt"]["mlflow_run_id"] == run_id == ckpt["salt"]["mlflow_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("salt-demo")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    steps = {m.step for m in client.get_metric_history(run_id, "train/loss")}
    assert min(steps) < 3 <= max(steps)

    # a restart of the job (requeue / crash retry) given the user's --ckpt_path step=3 again:
    # the run's newest checkpoint (step 6) wins; the landed code went back to step 3
    os.environ["SLURM_RESTART_COUNT"] = "1"
    try:
        third = _Record()
        _fit(root, shards, "run", third, max_steps=7, ckpt_path=str(ckpt_dir / "step=0000003.ckpt"))
    finally:
        del os.environ["SLURM_RESTART_COUNT"]
    assert third.at_start["step"] == 6 and [r["step"] for r in third.rows] == [6]
