"""Resume and checkpoint durability: a run resumed from a mid-run checkpoint continues at the same
global step with the same learning rate; a save that fails — by an exception or by SIGKILL in the
middle of writing — leaves the previous checkpoint loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from train_helpers import Recorder, datamodule, module_kwargs, one_thread, shards, trainer  # noqa: F401

from salt.checkpointing import AtomicCheckpointIO
from salt.teacher import TeacherModule

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resume_continues_at_same_step_and_lr(shards: str, tmp_path: Path) -> None:  # noqa: F811
    kw = module_kwargs("teacher", warmup_steps=2)
    full = Recorder()
    ckpt_cb = ModelCheckpoint(
        dirpath=tmp_path / "ckpts", filename="{step}", every_n_train_steps=3, save_top_k=-1
    )
    t = trainer(tmp_path, 8, callbacks=[full, ckpt_cb], enable_checkpointing=True)
    t.fit(TeacherModule(**kw), datamodule=datamodule(shards))
    mid = tmp_path / "ckpts" / "step=3.ckpt"
    assert mid.is_file() and full.steps == list(range(8))

    resumed = Recorder()
    model = TeacherModule(**kw)
    t2 = trainer(tmp_path, 8, callbacks=[resumed])
    t2.fit(model, datamodule=datamodule(shards), ckpt_path=str(mid))
    assert resumed.steps == [3, 4, 5, 6, 7]
    assert resumed.lrs == full.lrs[3:]
    assert t2.optimizers[0].param_groups[0]["lr"] == kw["final_lr"]
    state = t2.optimizers[0].state_dict()["state"]
    assert all(int(s["step"]) == 8 for s in state.values())  # AdamW moments continued, not reset
    assert t2.lr_scheduler_configs[0].scheduler.last_epoch == 8


class ExplodingPickle:
    """Raises while being pickled, i.e. after torch.save has started writing the file."""

    def __reduce__(self):
        raise OSError("simulated failure in the middle of a checkpoint write")


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    good = {"state_dict": {"w": torch.arange(10.0)}, "global_step": 1}
    io.save_checkpoint(good, path)
    bad = {"state_dict": {"w": torch.zeros(1 << 20)}, "global_step": 2, "boom": ExplodingPickle()}
    with pytest.raises(OSError, match="simulated failure"):
        io.save_checkpoint(bad, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["global_step"] == 1 and torch.equal(
        loaded["state_dict"]["w"], good["state_dict"]["w"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left behind


KILL_SCRIPT = """
import sys, torch
from salt.checkpointing import AtomicCheckpointIO
io = AtomicCheckpointIO()
big = {"state_dict": {f"w{i}": torch.randn(1 << 20) for i in range(16)}, "global_step": 2}
print("saving", flush=True)
while True:  # the parent kills us during one of these writes
    io.save_checkpoint(big, sys.argv[1])
"""


def test_kill_during_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    good = {"state_dict": {"w": torch.arange(10.0)}, "global_step": 1}
    AtomicCheckpointIO().save_checkpoint(good, path)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "saving"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill as soon as a temporary file has bytes in it
            partial = [p for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt.tmp")]
            if partial and partial[0].stat().st_size > 0:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
        else:
            pytest.fail("the child never started writing")
    finally:
        proc.kill()
        proc.wait()
    leftover = [p for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt.tmp")]
    assert leftover and leftover[0].stat().st_size > 0  # the kill did interrupt a write
    loaded = torch.load(path, weights_only=True)  # ...yet last.ckpt is a complete checkpoint
    assert loaded["global_step"] in (1, 2)
    if loaded["global_step"] == 1:
        assert torch.equal(loaded["state_dict"]["w"], good["state_dict"]["w"])
    else:
        assert len(loaded["state_dict"]) == 16
