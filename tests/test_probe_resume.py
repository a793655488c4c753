"""A probe run interrupted mid-epoch (a crash, or Slurm's SIGUSR1) resumes at its last finished
epoch and ends exactly where the uninterrupted run ends (online mode, real H.264, CPU).

The state of every finished epoch (heads, AdamW moments and step, halving record, results so far)
is written atomically; the data of an epoch depends only on (seed, epoch). So: run A straight
through; run B is killed in the selection phase's 2nd epoch, rerun; run C gets SIGUSR1 in the
retrain phase, stops cleanly (state kept, `Interrupted`), rerun. All three give the same grid
scores, choice and validation numbers.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from probe_helpers import tiny_splits

from salt.models import create_encoder
from salt.probes.config import load_config
from salt.probes.protocol import evaluate_encoder
from salt.probes.state import Interrupted, StateStore

CFG = dict(mode="online", frames_per_clip=4, frame_step=2, crop_size=32, num_workers=0,
           probe_depth=1, probe_heads=4, head_kinds=["attentive", "linear"], lrs=[3e-3, 1e-3],
           wds=[0.01], linear_lrs=[1e-2], epochs=3, batch_size=8, val_batch_size=8,
           heldout_fraction=0.25, crop_scale=[0.5, 1.0], progress_every_s=1e9,
           grid_schedule="halving", halving_epochs=[1])  # fmt: skip


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_splits(tmp_path_factory.mktemp("resume") / "data")


def _run(splits, state_dir=None, on_step=None):
    torch.manual_seed(0)
    enc = create_encoder("vit_test", img_size=32, num_frames=4)
    store = None if state_dir is None else StateStore(state_dir, "tag", 1, True, resume=True)
    return evaluate_encoder(enc, load_config(None, CFG), splits["probe_train"], splits["val"], 4,
                            log=lambda m: None, store=store, on_step=on_step)  # fmt: skip


def _same(a, b):
    assert a.selected_head == b.selected_head
    assert a.heldout == b.heldout  # every head's held-out scores, train loss, epochs: exact
    assert (a.top1, a.fit_head, a.num_heldout) == (b.top1, b.fit_head, b.num_heldout)
    assert torch.equal(a.confusion, b.confusion)
    assert [h["heads"] for h in a.history] == [h["heads"] for h in b.history]


def test_crash_and_signal_resume_to_the_uninterrupted_result(splits, tmp_path):
    ref = _run(splits)
    assert [h["heads"] for h in ref.history] == [3, 2, 2, 1, 1, 1]  # halved after epoch 1

    def crash(phase, epoch, step):
        if (phase, epoch, step) == ("select", 1, 1):
            raise Crash

    with pytest.raises(Crash):
        _run(splits, tmp_path / "b", on_step=crash)
    state = torch.load(tmp_path / "b" / "state.pt", weights_only=False)
    assert (state["phase"], state["epoch"]) == ("select", 1) and len(state["rungs"]) == 1
    _same(_run(splits, tmp_path / "b"), ref)

    def usr1(phase, epoch, step):
        if (phase, epoch, step) == ("retrain", 1, 0):
            os.kill(os.getpid(), signal.SIGUSR1)

    with pytest.raises(Interrupted) as stop:
        _run(splits, tmp_path / "c", on_step=usr1)
    assert (stop.value.phase, stop.value.requeued) == ("retrain", False)
    state = torch.load(tmp_path / "c" / "state.pt", weights_only=False)
    assert (state["phase"], state["epoch"]) == ("retrain", 2)  # the epoch in progress finished
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handler restored
    _same(_run(splits, tmp_path / "c"), ref)


def test_state_of_another_run_is_refused(splits, tmp_path):
    StateStore(tmp_path, "one", 1, True, resume=True).save({"phase": "done"})
    with pytest.raises(ValueError, match="another probe run"):
        StateStore(tmp_path, "two", 1, True, resume=True).load(torch.device("cpu"))
    with pytest.raises(ValueError, match="same number of GPUs"):
        StateStore(tmp_path, "one", 2, True, resume=True).load(torch.device("cpu"))
    assert StateStore(tmp_path, "two", 1, True, resume=False).load(torch.device("cpu")) is None
