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
import pytorch_lightning as pl
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


class ScheduleProbe(pl.Callback):
    """Per optimizer step: the lr used and the EMA momentum the step really applied, measured
    from the weights (teacher_after − s = m · (teacher_before − s), s = student after the step)."""

    def __init__(self) -> None:
        self.lr: dict[int, float] = {}
        self.wd: dict[int, float] = {}
        self.momentum: dict[int, float] = {}
        self._before: torch.Tensor | None = None

    @staticmethod
    def _flat(module: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().double().flatten() for p in module.parameters()])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        groups = trainer.optimizers[0].param_groups
        self.lr[trainer.global_step] = groups[0]["lr"]
        self.wd[trainer.global_step] = next(g for g in groups if g.get("apply_wd", True))[
            "weight_decay"
        ]
        self._before = self._flat(pl_module.teacher.encoder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        student, after = self._flat(pl_module.encoder), self._flat(pl_module.teacher.encoder)
        d_before, d_after = self._before - student, after - student
        m = float(d_after @ d_before / (d_before @ d_before))
        self.momentum[trainer.global_step - 1] = m


@pytest.mark.slow
def test_longer_resume_rederives_lr_and_ema_together(shards: str, tmp_path: Path) -> None:  # noqa: F811
    """Train 40 steps, resume the run to 80: from step 40 on, lr, weight decay and the EMA
    momentum all follow the 80-step schedules (the landed code kept lr at final_lr)."""
    from salt.ema import EMAModule
    from salt.schedules import cosine, linear, warmup_cosine

    kw = module_kwargs(
        "student", ema_momentum=0.5, ema_final_momentum=1.0, warmup_steps=4,
        lr_schedule="cosine", final_weight_decay=0.4,
    )  # fmt: skip
    first = ScheduleProbe()
    t = trainer(tmp_path, 40, callbacks=[first])
    t.fit(EMAModule(**kw), datamodule=datamodule(shards, batch_size=2))
    ckpt = tmp_path / "step40.ckpt"
    t.save_checkpoint(ckpt)

    second = ScheduleProbe()
    t2 = trainer(tmp_path, 80, callbacks=[second])
    t2.fit(EMAModule(**kw), datamodule=datamodule(shards, batch_size=2), ckpt_path=str(ckpt))
    lrs = (kw["start_lr"], kw["lr"], kw["final_lr"])
    # the first run followed its own 40-step schedules (the momentum of step s is m(s))
    assert [first.lr[s] for s in range(40)] == pytest.approx(
        [warmup_cosine(s, 40, 4, *lrs) for s in range(40)], rel=1e-9
    )
    assert [first.momentum[s] for s in range(1, 40)] == pytest.approx(
        [linear(s, 40, 0.5, 1.0) for s in range(1, 40)], abs=2e-3
    )
    # after the resume both follow the 80-step ones (the 40-step ones are final_lr and 1.0 here)
    assert sorted(second.lr) == list(range(40, 80))
    assert [second.lr[s] for s in range(40, 80)] == pytest.approx(
        [warmup_cosine(s, 80, 4, *lrs) for s in range(40, 80)], rel=1e-9
    )
    assert second.lr[40] > 10 * kw["final_lr"]
    assert [second.momentum[s] for s in range(40, 80)] == pytest.approx(
        [linear(s, 80, 0.5, 1.0) for s in range(40, 80)], abs=2e-3
    )
    wds = (0.04, 0.4)  # SALT's weight-decay schedule (set above; EMAModule's default is flat)
    assert [second.wd[s] for s in range(40, 80)] == pytest.approx(
        [cosine(s, 80, *wds) for s in range(40, 80)], rel=1e-9
    )
