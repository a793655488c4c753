"""The V-JEPA EMA baseline as its own LightningModule (salt.ema.EMAModule) on a real Trainer.

Covered: the EMA update is exactly m·t0 + (1 − m)·s1 after a step, the target stays frozen and
outside the optimizer and state_dict, its weights travel in ``ckpt["salt_ema_teacher"]`` and are
restored; V-JEPA 2's recipe is the default (betas, warmup–stable–decay lr, constant weight decay,
momentum); the shipped config parses and instantiates; every consumer — ``load_encoder``,
``salt export``, ``salt-probe`` and ``LiveProbe`` — uses the EMA *target* encoder by default and
the online one with ``which="online"``, and records which in the metadata.
"""

# ruff: noqa: F811 - pytest fixtures imported from train_helpers are re-bound as arguments
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import (  # noqa: F401 - fixtures
    datamodule,
    module_kwargs,
    one_thread,
    params_snapshot,
    shards,
    train_teacher_checkpoint,
    trainer,
)

from salt.cli import SaltCLI
from salt.cli import main as salt_main
from salt.data import VideoDataModule
from salt.ema import EMA_STATE_KEY, EMAModule, WarmupStableDecaySchedule
from salt.encoder_io import load_encoder
from salt.schedules import WarmupCosineSchedule

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def ema_kwargs(**overrides):
    return module_kwargs("student", **{"ema_momentum": 0.9, "warmup_steps": 0, **overrides})


@pytest.fixture(scope="module")
def ema_ckpt(shards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-step EMA-baseline checkpoint whose target and online encoders differ."""
    root = tmp_path_factory.mktemp("ema")
    model = EMAModule(**ema_kwargs())
    t = trainer(root, 3)
    t.fit(model, datamodule=datamodule(shards))
    path = root / "ema.ckpt"
    t.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def probe_shards(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from salt.data.synthetic import write_synthetic_shards

    out = tmp_path_factory.mktemp("probe_shards")
    return write_synthetic_shards(
        str(out), num_train=4, num_probe_train=16, num_val=8, num_classes=4, frames=16, size=32
    )


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ema_update_formula_and_checkpoint(shards: str, tmp_path: Path) -> None:
    model = EMAModule(**ema_kwargs())
    assert model.stage == "ema" and model.target_encoder is model.teacher.encoder
    t0 = params_snapshot(model.target_encoder)
    assert _same(t0, model.encoder.state_dict())  # a copy of the encoder at init
    t = trainer(tmp_path, 1)
    t.fit(model, datamodule=datamodule(shards))
    s1, t1 = model.encoder.state_dict(), model.target_encoder.state_dict()
    for k in t0:
        assert torch.allclose(t1[k], 0.9 * t0[k] + 0.1 * s1[k], atol=1e-6), k
    assert not torch.equal(t1["blocks.0.mlp.fc1.weight"], t0["blocks.0.mlp.fc1.weight"])
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    assert not model.target_encoder.training
    optimised = {id(p) for g in t.optimizers[0].param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in model.target_encoder.parameters()}
    assert optimised == {id(p) for p in model.parameters()}
    assert not any("teacher" in k or "target" in k for k in model.state_dict())

    path = tmp_path / "ema.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["salt"]["stage"] == "ema" and ckpt["salt"]["teacher"] is None
    assert ckpt["salt"]["ema"] == {
        "momentum": 0.9,
        "final_momentum": None,
        "state_key": EMA_STATE_KEY,
    }
    fresh = EMAModule(**ema_kwargs())
    fresh.on_load_checkpoint(ckpt)
    assert _same(fresh.target_encoder.state_dict(), t1)
    with pytest.raises(ValueError, match="no EMA target encoder"):
        fresh.on_load_checkpoint({k: v for k, v in ckpt.items() if k != EMA_STATE_KEY})


def test_vjepa2_recipe_is_the_default() -> None:
    model = EMAModule(**module_kwargs("student", warmup_steps=10))
    assert model.hparams.betas == (0.9, 0.999) and model.ema == (0.99925, None)
    assert model.hparams.weight_decay == model.hparams.final_weight_decay == 0.04
    out = model.configure_optimizers(total_steps=100)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert isinstance(sched, WarmupStableDecaySchedule) and opt.defaults["betas"] == (0.9, 0.999)
    lr = model.optim_cfg["lr"]
    assert sched.lr_at(0) == pytest.approx(model.optim_cfg["start_lr"])
    assert sched.lr_at(10) == sched.lr_at(50) == sched.lr_at(95) == pytest.approx(lr)
    assert sched.lr_at(97) < lr and sched.lr_at(100) == pytest.approx(model.optim_cfg["final_lr"])
    assert sched.wd_at(0) == sched.wd_at(60) == pytest.approx(0.04)
    assert model.momentum_at(0) == model.momentum_at(100) == 0.99925
    linear = EMAModule(**module_kwargs("student", ema_momentum=0.998, ema_final_momentum=1.0))
    linear.configure_optimizers(total_steps=100)
    assert linear.momentum_at(0) == 0.998 and linear.momentum_at(50) == pytest.approx(0.999)
    cosine = EMAModule(**module_kwargs("student", lr_schedule="cosine"))
    assert type(cosine.configure_optimizers(total_steps=50)["lr_scheduler"]["scheduler"]) is (
        WarmupCosineSchedule
    )
    with pytest.raises(ValueError, match="must fit in total_steps"):
        WarmupStableDecaySchedule(opt, 10, 6, 5, 1e-4, 1e-3, 1e-6, 0.04, 0.04)


def test_shipped_config_and_old_student_flags(tmp_path: Path, shards: str) -> None:
    cfg = REPO / "configs/ema/vitl16.yaml"
    tiny = [
        "--model.init_args.encoder=vit_test", '--model.init_args.encoder_kwargs={"patch_size": 8}',
        "--data.crop_size=32", "--data.frames_per_clip=8", "--model.init_args.warmup_steps=1",
        f"--trainer.default_root_dir={tmp_path}", "--tracking=false", "--trainer.accelerator=cpu",
        "--model.init_args.predictor_dim=48", "--model.init_args.predictor_depth=1",
        "--model.init_args.predictor_heads=4", "--model.init_args.predictor_mlp_hidden=96",
    ]  # fmt: skip
    cli = SaltCLI(args=["-c", str(cfg), *tiny], run=False)
    assert isinstance(cli.model, EMAModule) and isinstance(cli.datamodule, VideoDataModule)
    assert cli.model.grid() == (4, 4, 4) and cli.model.encoder.embed_dim == 64
    assert cli.trainer.max_steps == 240000 and tuple(cli.model.hparams.betas) == (0.9, 0.999)
    # a student config asking for the old EMA mode gets the new class path in its message
    # (jsonargparse re-raises the constructor's UsageError inside its own ValueError)
    student = REPO / "configs/student/vitl16.yaml"
    with pytest.raises(ValueError, match=r"its own module now: set model.class_path to salt\.ema"):
        SaltCLI(args=["-c", str(student), *tiny, "--model.init_args.teacher_mode=ema"], run=False)


def test_load_and_export_use_the_target_encoder(
    ema_ckpt: Path,
    shards: str,
    tmp_path: Path,
) -> None:
    ckpt = torch.load(ema_ckpt, map_location="cpu", weights_only=True)
    target = ckpt[EMA_STATE_KEY]
    online = {
        k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")
    }
    assert not _same(target, online)

    enc, meta = load_encoder(ema_ckpt)  # default: the EMA target, as V-JEPA evaluates
    assert meta["which"] == "target" and _same(enc.state_dict(), target)
    enc, meta = load_encoder(ema_ckpt, which="online")
    assert meta["which"] == "online" and _same(enc.state_dict(), online)

    out = tmp_path / "ema.safetensors"
    salt_main(["export", str(ema_ckpt), str(out)])
    enc, meta = load_encoder(out)
    assert meta["which"] == "target" and _same(enc.state_dict(), target)
    with pytest.raises(ValueError, match="holds the target encoder, not the online one"):
        load_encoder(out, which="online")
    salt_main(["export", str(ema_ckpt), str(tmp_path / "online.safetensors"), "--which", "online"])
    enc, meta = load_encoder(tmp_path / "online.safetensors", which="online")
    assert meta["which"] == "online" and _same(enc.state_dict(), online)

    teacher = train_teacher_checkpoint(tmp_path / "t", shards, steps=2)
    assert load_encoder(teacher)[1]["which"] == "online"  # one encoder: "auto" reads it
    with pytest.raises(ValueError, match="has no EMA target encoder"):
        load_encoder(teacher, which="target")


def test_salt_probe_and_live_probe_use_the_target(
    ema_ckpt: Path,
    shards: str,
    probe_shards: dict,
    tmp_path: Path,
) -> None:
    from salt.probes import cli as probe_cli
    from salt.probes.callback import LiveProbe

    argv = [
        "--ckpt", str(ema_ckpt), "--train", probe_shards["probe_train"],
        "--val", probe_shards["val"], "--num-classes", "4",
        "-c", str(REPO / "configs/probe/tiny.yaml"), "--crop-size", "32", "--epochs", "1",
        "--lrs", "1e-3", "--wds", "0.01", "--linear-lrs", "1e-2", "--no-mlflow", "--device", "cpu",
    ]  # fmt: skip
    for which in ("auto", "online"):
        out = tmp_path / f"{which}.json"
        assert probe_cli.main([*argv, "--output-json", str(out), "--which", which]) == 0
        assert json.loads(out.read_text())["which"] == ("target" if which == "auto" else "online")

    model = EMAModule(**ema_kwargs())
    calls = {"target": [], "online": []}  # batch sizes seen by each encoder's forward_features

    def spy(name, encoder):  # the real method runs; only the batch size is noted
        real = encoder.forward_features

        def forward_features(x, *args, **kwargs):
            calls[name].append(x.shape[0])
            return real(x, *args, **kwargs)

        encoder.forward_features = forward_features

    spy("target", model.target_encoder)
    spy("online", model.encoder)
    probe = LiveProbe(
        probe_shards["probe_train"], num_classes=4, val_shards=probe_shards["val"],
        every_n_steps=1, frame_step=2, max_samples=3, epochs=1, batch_size=3,
    )  # fmt: skip
    assert probe._encoder(model) is model.target_encoder
    assert LiveProbe("x", 2, which="online")._encoder(model) is model.encoder
    t = trainer(tmp_path / "live", 1, callbacks=[probe])
    t.fit(model, datamodule=datamodule(shards))  # training batches are 4 clips, probe ones 3
    assert len(probe.history) == 1 and 3 in calls["target"] and 3 not in calls["online"]
