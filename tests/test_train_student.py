"""Stage 2 on a real Trainer against a real stage-1 checkpoint: the loss falls; the teacher is
bit-identical afterwards, frozen, in eval mode throughout, absent from the optimizer and run once
per clip on all tokens; the student encoder only ever sees context tokens; mismatched teachers
fail with a message that names the mismatch; asking it for the EMA baseline names the module that
is (tests/test_ema.py)."""

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
    params_snapshot,
    shards,
    train_teacher_checkpoint,
    trainer,
)

from salt.errors import UsageError
from salt.student import StudentModule

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher_ckpt(shards: str, tmp_path_factory: pytest.TempPathFactory) -> str:  # noqa: F811
    return str(train_teacher_checkpoint(tmp_path_factory.mktemp("teacher"), shards, steps=3))


class Spy(pl.Callback):
    """Records each batch's masks, every student/teacher encoder call and the teacher's mode."""

    def __init__(self, model: StudentModule) -> None:
        self.masks: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        self.student_calls: list[tuple[tuple, torch.Tensor | None]] = []
        self.teacher_calls: list[tuple[tuple, torch.Tensor | None]] = []
        self.teacher_modes: list[bool] = []
        model.encoder.register_forward_pre_hook(self._hook(self.student_calls), with_kwargs=True)
        model.teacher.encoder.register_forward_pre_hook(
            self._hook(self.teacher_calls), with_kwargs=True
        )

    @staticmethod
    def _hook(calls: list):
        def hook(module, args, kwargs):
            idx = args[1] if len(args) > 1 else kwargs.get("token_indices")
            calls.append((tuple(args[0].shape), None if idx is None else idx.clone()))

        return hook

    def _mode(self, pl_module: StudentModule) -> None:
        self.teacher_modes.append(all(not m.training for m in pl_module.teacher.modules()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.masks.append([(c.clone(), t.clone()) for c, t in batch["masks"]])
        self._mode(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._mode(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._mode(pl_module)


def test_student_trains_against_a_frozen_teacher(shards: str, teacher_ckpt: str, tmp_path) -> None:  # noqa: F811
    model = StudentModule(teacher=teacher_ckpt, **module_kwargs("student"))
    teacher_before = params_snapshot(model.teacher)
    spy, rec = Spy(model), Recorder()
    steps = 30
    t = trainer(tmp_path, steps, callbacks=[spy, rec])
    t.fit(model, datamodule=datamodule(shards))

    # the loss falls
    assert all(math.isfinite(x) for x in rec.losses)
    first, last = mean(rec.losses[:5]), mean(rec.losses[-5:])
    assert last < 0.9 * first, (first, last, rec.losses)

    # the teacher: bit-identical, no grad, eval throughout, in no optimizer group, not a submodule
    after = params_snapshot(model.teacher)
    assert after.keys() == teacher_before.keys()
    assert all(torch.equal(after[k], teacher_before[k]) for k in after)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert spy.teacher_modes and all(spy.teacher_modes)
    optimised = {id(p) for g in t.optimizers[0].param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in model.teacher.parameters()}
    assert optimised == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(k.startswith("teacher") or "_teacher" in k for k in model.state_dict())

    # the teacher runs once per clip on every token; the student sees each mask's context only
    num_tokens = math.prod(model.grid())
    assert len(spy.teacher_calls) == steps and all(idx is None for _, idx in spy.teacher_calls)
    assert len(spy.student_calls) == 2 * steps
    for i, masks in enumerate(spy.masks):
        for m, (ctx, _) in enumerate(masks):
            shape, idx = spy.student_calls[2 * i + m]
            assert idx is not None and torch.equal(idx, ctx), (i, m)
            assert idx.shape[1] < num_tokens

    # checkpoints identify the teacher
    meta = model.checkpoint_metadata()
    assert meta["stage"] == "student" and meta["teacher"]["path"].endswith("teacher.ckpt")
    assert len(meta["teacher"]["sha256"]) == 64


def test_target_layer_option(shards: str, teacher_ckpt: str) -> None:  # noqa: F811
    """An intermediate teacher layer gives different (still parameter-free-LN'ed) targets."""
    model = StudentModule(teacher=teacher_ckpt, target_layer=0, **module_kwargs("student"))
    from salt.step import latent_targets

    video = torch.randn(2, 3, 8, 32, 32)
    last = latent_targets(model.teacher.encoder, video, -1)
    first = latent_targets(model.teacher.encoder, video, 0)
    assert last.shape == first.shape == (2, 64, 64) and not torch.allclose(last, first)
    assert torch.allclose(first.mean(-1), torch.zeros(2, 64), atol=1e-5)
    with pytest.raises(ValueError, match="target_layer 5 outside the teacher's 2 blocks"):
        StudentModule(teacher=teacher_ckpt, target_layer=5, **module_kwargs("student"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_frames": 16}, r"num_frames \(data.frames_per_clip\): teacher 8 vs student 16"),
        (
            {"img_size": 64},
            r"img_size \(data.crop_size\): teacher \[32, 32\] vs student \[64, 64\]",
        ),
        ({"encoder_kwargs": {"patch_size": 16}}, r"patch_size: teacher 8 vs student 16"),
        (
            {"encoder_kwargs": {"patch_size": 8, "tubelet_size": 4}},
            r"tubelet_size: teacher 2 vs student 4",
        ),
        (
            {"std": (0.5, 0.5, 0.5)},
            r"std: teacher \[0.229, 0.224, 0.225\] vs student \[0.5, 0.5, 0.5\]",
        ),
    ],
)
def test_mismatched_teacher_is_named(teacher_ckpt: str, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"does not match this student: .*{message}"):
        StudentModule(teacher=teacher_ckpt, **module_kwargs("student", **overrides))


def test_missing_or_absent_teacher(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="teacher checkpoint not found: .*nope.ckpt"):
        StudentModule(teacher=str(tmp_path / "nope.ckpt"), **module_kwargs("student"))
    with pytest.raises(ValueError, match="needs a teacher: pass --model.teacher PATH"):
        StudentModule(**module_kwargs("student"))
    for kw in (
        {"teacher": "ema"},
        {"teacher_mode": "ema"},
        {"teacher": "x.ckpt", "teacher_mode": "ema"},
    ):
        with pytest.raises(
            UsageError, match=r"its own module now: set model.class_path to salt\.ema\.EMAModule"
        ):
            StudentModule(**kw, **module_kwargs("student"))
