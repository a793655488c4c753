"""The non-finite guard on a real Trainer: a NaN loss skips the update (weights and AdamW state
untouched, training goes on); K NaN steps in a row abort with a message that says what happened."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from train_helpers import datamodule, module_kwargs, one_thread, params_snapshot, shards, trainer  # noqa: F401

from salt.health import NonFiniteLossError
from salt.teacher import TeacherModule

pytestmark = pytest.mark.usefixtures("one_thread")


class NaNAt(TeacherModule):
    """The real stage-1 module whose loss is NaN at the given optimizer steps."""

    nan_steps: set[int] = set()

    def training_loss(self, batch, health=False):
        loss, stats = super().training_loss(batch, health)
        if self.global_step in self.nan_steps:
            loss = loss * float("nan")
        return loss, stats


class Snapshots(pl.Callback):
    def __init__(self) -> None:
        self.at_start: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.at_start[trainer.global_step] = params_snapshot(pl_module)


def test_single_nan_step_is_skipped(shards: str, tmp_path) -> None:  # noqa: F811
    model = NaNAt(**module_kwargs("teacher", max_nonfinite=3))
    model.nan_steps = {2}
    snaps = Snapshots()
    t = trainer(tmp_path, 5, callbacks=[snaps])
    t.fit(model, datamodule=datamodule(shards))
    assert t.global_step == 5  # the loop went on
    before, after = snaps.at_start[2], snaps.at_start[3]
    assert all(torch.equal(before[k], after[k]) for k in before)  # step 2 changed nothing
    assert not torch.equal(snaps.at_start[1]["encoder.norm.weight"], before["encoder.norm.weight"])
    state = t.optimizers[0].state_dict()["state"]
    assert all(int(s["step"]) == 4 for s in state.values())  # 5 steps, one skipped
    assert int(model.guard.total) == 1


def test_consecutive_nan_steps_abort(shards: str, tmp_path) -> None:  # noqa: F811
    model = NaNAt(**module_kwargs("teacher", max_nonfinite=3))
    model.nan_steps = set(range(2, 100))
    snaps = Snapshots()
    t = trainer(tmp_path, 20, callbacks=[snaps])
    with pytest.raises(
        NonFiniteLossError, match=r"optimizer step 5: 3 consecutive steps .* max_nonfinite=3"
    ):
        t.fit(model, datamodule=datamodule(shards))
    first_bad = snaps.at_start[2]
    now = params_snapshot(model)
    assert all(torch.equal(first_bad[k], now[k]) for k in now)
