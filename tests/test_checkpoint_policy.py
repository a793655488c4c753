"""Periodic checkpoints (salt.checkpoint_policy) and trusted loading (salt.checkpointing):

- a time-based interval beside the step interval, on a real Trainer (the policy's clock is
  driven by the test, so the steps at which it saves are exact);
- newest-K retention, `last.ckpt` a hard link to the newest file (a symlink to the newest sharded
  folder; a copy where links fail), an end-of-training checkpoint, no duplicate at a requeue step;
- every kind of checkpoint `salt fit` writes loads with weights_only=True and holds no unsafe
  globals; `--ckpt_path auto` discovery and FSDP consolidation never run code from a checkpoint.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from train_helpers import TinyModule

import salt.checkpoint_policy as policy
from salt.checkpoint_policy import SaltCheckpoint, link_last, prune_checkpoints
from salt.checkpointing import AtomicCheckpointIO, load_checkpoint_file
from salt.resume import find_latest_checkpoint, resolve_ckpt_path

REPO = Path(__file__).resolve().parents[1]


class _Clock:
    """The policy's clock: 25 s of "training" per optimizer step."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class _Advance(pl.Callback):
    def __init__(self, clock: _Clock) -> None:
        self.clock = clock

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.clock.now = 25.0 * trainer.global_step  # before SaltCheckpoint (always last) looks


def _fit(tmp: Path, steps: int, callbacks: list, accumulate: int = 1) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, plugins=[AtomicCheckpointIO()], callbacks=callbacks,
        accumulate_grad_batches=accumulate, default_root_dir=str(tmp),
    )  # fmt: skip
    trainer.fit(TinyModule(), torch.utils.data.DataLoader(torch.randn(256, 4), batch_size=2))
    return trainer


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("accumulate", [1, 2])
def test_time_interval_retention_and_last_link(
    tmp_path: Path, monkeypatch, accumulate: int
) -> None:
    clock = _Clock()
    monkeypatch.setattr(policy, "time", clock)
    ckpts = tmp_path / "checkpoints"
    cb = SaltCheckpoint(ckpts, every_n_train_steps=0, every_minutes=1.0, keep=2)
    saved: list[int] = []

    class Saves(pl.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            saved.append(trainer.global_step)

    _fit(tmp_path, 10, [_Advance(clock), Saves(), cb], accumulate)
    # 60 s every 25 s-step: due at steps 3, 6 and 9; step 10 at the end of training
    assert saved == [3, 6, 9, 10]
    assert _names(ckpts) == ["last.ckpt", "step=0000009.ckpt", "step=0000010.ckpt"]
    last, newest = ckpts / "last.ckpt", ckpts / "step=0000010.ckpt"
    assert os.path.samefile(last, newest) and last.stat().st_nlink == 2  # a hard link
    assert cb.last_kind == "hardlink"
    assert load_checkpoint_file(last)["global_step"] == 10
    assert find_latest_checkpoint(ckpts) == newest  # the step= name wins the tie


def test_step_and_time_intervals_together(tmp_path: Path, monkeypatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(policy, "time", clock)
    ckpts = tmp_path / "checkpoints"
    _fit(tmp_path, 8, [_Advance(clock), SaltCheckpoint(ckpts, 4, every_minutes=2.0)])
    # every 4 steps, or 120 s (4.8 steps) after the previous save: the step interval wins
    names = [n for n in _names(ckpts) if n.startswith("step=")]
    assert names == ["step=0000004.ckpt", "step=0000008.ckpt"]
    clock = _Clock()
    monkeypatch.setattr(policy, "time", clock)
    _fit(tmp_path / "b", 7, [_Advance(clock), SaltCheckpoint(tmp_path / "b" / "c", 5, 1.0)])
    # 60 s (2.4 steps) or 5 steps: time at 3, steps at 5, the end of training at 7
    names = [n for n in _names(tmp_path / "b" / "c") if n.startswith("step=")]
    assert names == ["step=0000003.ckpt", "step=0000005.ckpt", "step=0000007.ckpt"]


def test_link_last_kinds(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "step=0000002.ckpt"
    torch.save({"global_step": 2}, target)
    last = tmp_path / "last.ckpt"
    torch.save({"global_step": 1}, last)  # a full copy from an older salt: replaced
    assert link_last(target, last) == "hardlink" and os.path.samefile(target, last)
    sharded = tmp_path / "step=0000004.ckpt"
    sharded.mkdir()
    (sharded / "meta.pt").write_bytes(b"x")
    assert link_last(sharded, last) == "symlink"
    assert last.is_symlink() and os.readlink(last) == sharded.name  # relative: the run can move
    real = tmp_path / "b" / "last.ckpt"
    (real).mkdir(parents=True)  # an older sharded last.ckpt folder
    (tmp_path / "b" / "step=0000006.ckpt").mkdir()
    assert link_last(tmp_path / "b" / "step=0000006.ckpt", real) == "symlink"

    def no_links(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(1, "Operation not permitted")  # e.g. an object-store mount

    monkeypatch.setattr(policy.os, "link", no_links)
    monkeypatch.setattr(policy.os, "symlink", no_links)
    copy = tmp_path / "c" / "last.ckpt"
    copy.parent.mkdir()
    assert link_last(target, copy) == "copy"
    assert not os.path.samefile(target, copy) and copy.read_bytes() == target.read_bytes()
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]


def test_prune_keeps_newest_and_hides_before_deleting(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        torch.save({}, tmp_path / f"step={step:07d}.ckpt")
    (tmp_path / "step=0000004-requeue.ckpt").mkdir()  # a sharded requeue checkpoint
    torch.save({}, tmp_path / "last.ckpt")
    gone = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in gone] == ["step=0000001.ckpt", "step=0000002.ckpt"]
    assert _names(tmp_path) == ["last.ckpt", "step=0000003.ckpt", "step=0000004-requeue.ckpt"]
    assert prune_checkpoints(tmp_path, keep=None) == []


def test_requeue_checkpoint_is_not_saved_twice(tmp_path: Path, monkeypatch) -> None:
    """The Slurm signal's checkpoint goes through the policy: last.ckpt links to it and the end
    of training (the requeue stops it) does not write the same step again."""
    from salt.requeue import SlurmRequeue

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.delenv("SALT_JOB_STATE", raising=False)

    class Signal(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGUSR1)

    ckpts = tmp_path / "checkpoints"
    _fit(tmp_path, 20, [SlurmRequeue(requeue=False), Signal(), SaltCheckpoint(ckpts, 100)])
    assert _names(ckpts) == ["last.ckpt", "step=0000004-requeue.ckpt"]
    assert os.path.samefile(ckpts / "last.ckpt", ckpts / "step=0000004-requeue.ckpt")


# --------------------------------------------------------------------------- trusted loading


class _Payload:
    """Unpickling this runs code: it writes a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_auto_discovery_never_runs_code_from_a_checkpoint(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"global_step": 3, "state_dict": {}}, ckpts / "step=0000003.ckpt")
    torch.save({"global_step": 9, "x": _Payload(marker)}, ckpts / "last.ckpt")  # no step in name
    assert resolve_ckpt_path("auto", ckpts) == str(ckpts / "step=0000003.ckpt")  # skipped
    assert not marker.exists()
    io = AtomicCheckpointIO()
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        io.load_checkpoint(ckpts / "last.ckpt")  # what `--ckpt_path .../last.ckpt` resumes
    assert not marker.exists()


def test_consolidate_never_runs_code_from_meta_pt(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    from salt.strategies import consolidate_checkpoint

    marker = tmp_path / "pwned"
    sharded = tmp_path / "step=0000002.ckpt"
    dcp.save({"state_dict": {"w": torch.ones(3)}}, checkpoint_id=str(sharded), no_dist=True)
    torch.save({"global_step": 2, "x": _Payload(marker)}, sharded / "meta.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        consolidate_checkpoint(sharded, tmp_path / "out.ckpt")
    assert not marker.exists()


def test_salt_fit_checkpoints_hold_no_unsafe_globals(tmp_path: Path, shards: str) -> None:
    from salt.cli import main

    main([
        "fit", "-c", str(REPO / "configs/demo/teacher.yaml"), f"--data.train_shards={shards}",
        "--data.crop_size=32", "--data.batch_size=2", "--data.num_workers=0",
        '--model.init_args.encoder_kwargs={"patch_size": 8}', "--model.init_args.warmup_steps=1",
        "--trainer.max_steps=3", "--checkpoint_every=1", "--keep_checkpoints=2",
        "--checkpoint_minutes=30", f"--trainer.default_root_dir={tmp_path}", "--run_name=r",
        "--trainer.enable_progress_bar=false", "--tracking=false",
    ])  # fmt: skip
    ckpts = tmp_path / "salt-demo" / "r" / "checkpoints"
    assert _names(ckpts) == ["last.ckpt", "step=0000002.ckpt", "step=0000003.ckpt"]
    for p in ckpts.iterdir():
        assert torch.serialization.get_unsafe_globals_in_checkpoint(p) == [], p
        ckpt = load_checkpoint_file(p)
        assert ckpt["salt"]["stage"] == "teacher" and ckpt["salt"]["skipped_steps"] == 0
