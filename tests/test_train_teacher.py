"""Stage 1 on a real Trainer: the pixel loss falls, schedules end exactly at max_steps (with
gradient accumulation), and checkpoints carry the contract's metadata (written atomically)."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from train_helpers import (  # noqa: F401 - fixtures
    Recorder,
    datamodule,
    mean,
    module_kwargs,
    one_thread,
    shards,
    trainer,
)

from salt.models import ROPE_CONVENTION
from salt.teacher import TeacherModule

pytestmark = pytest.mark.usefixtures("one_thread")


def test_teacher_loss_falls(shards: str, tmp_path) -> None:  # noqa: F811
    rec = Recorder()
    model = TeacherModule(**module_kwargs("teacher"))
    trainer(tmp_path, 40, callbacks=[rec]).fit(model, datamodule=datamodule(shards))
    assert len(rec.losses) == 40 and all(math.isfinite(x) for x in rec.losses)
    first, last = mean(rec.losses[:5]), mean(rec.losses[-5:])
    assert last < 0.9 * first, (first, last, rec.losses)


def test_schedules_end_at_max_steps_with_accumulation(shards: str, tmp_path) -> None:  # noqa: F811
    """6 optimizer steps from 12 batches (accumulate 2): lr and wd reach their finals exactly,
    the lr is keyed on optimizer steps, and no-decay groups never decay."""
    rec = Recorder()
    kw = module_kwargs("teacher", warmup_steps=2, weight_decay=0.04, final_weight_decay=0.4)
    model = TeacherModule(**kw)
    t = trainer(tmp_path, 6, callbacks=[rec], accumulate_grad_batches=2)
    t.fit(model, datamodule=datamodule(shards, batch_size=2))
    assert t.global_step == 6 and len(rec.steps) == 12
    assert rec.steps == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert rec.lrs[0] == kw["start_lr"] and rec.lrs[4] == kw["lr"]  # warmup ends at step 2
    opt = t.optimizers[0]
    sched = t.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == 6
    decay, no_decay = opt.param_groups
    assert decay["apply_wd"] and not no_decay["apply_wd"]
    assert decay["lr"] == kw["final_lr"] and no_decay["lr"] == kw["final_lr"]
    assert decay["weight_decay"] == kw["final_weight_decay"] and no_decay["weight_decay"] == 0.0
    assert any("mask_tokens" in n for n in no_decay["names"])
    assert all(n.endswith(".weight") for n in decay["names"])
    assert opt.defaults["fused"]


def test_checkpoint_metadata(shards: str, tmp_path) -> None:  # noqa: F811
    model = TeacherModule(**module_kwargs("teacher"))
    t = trainer(tmp_path, 5)
    t.fit(model, datamodule=datamodule(shards))
    path = tmp_path / "x.ckpt"
    t.save_checkpoint(path)
    assert not list(tmp_path.glob(".x.ckpt.tmp*"))  # atomic write left nothing behind
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # plain types only
    meta = ckpt["salt"]
    assert meta["stage"] == "teacher" and meta["step"] == 5 and meta["teacher"] is None
    assert meta["encoder_prefix"] == "encoder." and meta["rope_convention"] == ROPE_CONVENTION
    assert meta["encoder_config"] == model.encoder.config
    assert meta["encoder_config"]["patch_size"] == 8 and meta["encoder_config"]["num_frames"] == 8
    assert meta["mean"] == list(model.mean) and meta["std"] == list(model.std)
    assert isinstance(meta["train_loss"], float) and 0 < meta["train_loss"] < 10
    assert any(k.startswith("decoder.") for k in ckpt["state_dict"])


class _CudnnSdpSeen(pl.Callback):
    """Records whether SDPA may pick cuDNN attention while training batches run."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(torch.backends.cuda.cudnn_sdp_enabled())


@pytest.mark.parametrize("allow", [False, True])
def test_cudnn_attention_excluded_while_fitting(shards: str, tmp_path, allow: bool) -> None:  # noqa: F811
    """cuDNN attention rebuilds a plan per new sequence length, so fitting turns it off by
    default; the process-wide flag comes back afterwards either way."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        seen = _CudnnSdpSeen()
        model = TeacherModule(**module_kwargs("teacher", warmup_steps=1, cudnn_attention=allow))
        trainer(tmp_path, 2, callbacks=[seen]).fit(model, datamodule=datamodule(shards))
        assert seen.seen == [allow, allow]
        assert torch.backends.cuda.cudnn_sdp_enabled()  # restored after fit
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
