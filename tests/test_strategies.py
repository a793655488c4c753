"""salt.strategies on CPU: a real 2-process gloo run (torchrun) of DDP and FSDP2 on a tiny
student/teacher pair and on the real ``StudentModule``: the teacher, held outside the module tree
as ``salt.latent`` does, stays out of what DDP wraps and FSDP shards, out of the optimizer and
unchanged; FSDP ends at the same weights as DDP, a sharded checkpoint resumes and consolidates.

This file is also the worker: `torchrun --nproc-per-node 2 tests/test_strategies.py OUT_DIR`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from train_helpers import module_kwargs, shards, train_teacher_checkpoint  # noqa: F401

from salt.checkpointing import consolidate_checkpoint
from salt.models import create_encoder
from salt.models.block import Block
from salt.models.predictor import Predictor
from salt.strategies import (
    SaltDDPStrategy,
    SaltFSDPStrategy,
    build_strategy,
)

ENC = {"img_size": 32, "num_frames": 4}  # vit_test on a 2×2×2 token grid


class TinyStudent(pl.LightningModule):
    """Stage-2 shape in miniature: frozen teacher targets, student + predictor trained with L1.
    The teacher is held outside the module tree, as ``salt.latent.LatentTargetModule`` holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.student = create_encoder("vit_test", **ENC)
        self.predictor = Predictor(64, 64, embed_dim=32, depth=1, num_heads=2, mlp_hidden_dim=64)
        self._teacher = [create_encoder("vit_test", **ENC).requires_grad_(False).eval()]

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x = batch  # [B, 3, 4, 32, 32]
        b = x.shape[0]
        grid = self.student.grid(x)  # (2, 2, 2): 8 tokens
        ctx = torch.arange(0, 4).expand(b, 4)  # [B, 4]
        tgt = torch.arange(4, 8).expand(b, 4)  # [B, 4]
        with torch.no_grad():
            t = self.teacher.forward_features(x)  # [B, 8, 64]
            t = F.layer_norm(t, t.shape[-1:]).gather(1, tgt[..., None].expand(-1, -1, 64))
        pred = self.predictor(self.student.forward_features(x, ctx), ctx, tgt, grid)  # [B, 4, 64]
        return F.l1_loss(pred, t)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)


class Clips(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 4, 32, 32, generator=g)


# --------------------------------------------------------------------------- in-process tests


def test_build_strategy_and_validation() -> None:
    assert isinstance(build_strategy("ddp"), SaltDDPStrategy)
    fsdp = build_strategy("fsdp", param_dtype=None)
    assert isinstance(fsdp, SaltFSDPStrategy) and fsdp.wrap_classes == ["salt.models.block.Block"]
    assert build_strategy("auto") == "auto"
    with pytest.raises(ValueError, match="unknown strategy"):
        build_strategy("deepspeed")
    with pytest.raises(ValueError, match="param_dtype"):
        SaltFSDPStrategy(param_dtype="bf16")


def test_strategy_configs_parse() -> None:
    """configs/strategy/*.yaml instantiate through jsonargparse like `salt fit -c` does."""
    from jsonargparse import ArgumentParser

    root = Path(__file__).resolve().parents[1] / "configs" / "strategy"
    for name, cls in (("ddp", SaltDDPStrategy), ("fsdp", SaltFSDPStrategy)):
        parser = ArgumentParser()
        parser.add_argument("--trainer.strategy", type=pl.strategies.Strategy | str)
        parser.add_argument("--config", action="config")
        cfg = parser.parse_args(["--config", str(root / f"{name}.yaml")])
        strategy = parser.instantiate_classes(cfg)["trainer"]["strategy"]
        assert isinstance(strategy, cls), (name, strategy)


# --------------------------------------------------------------------------- 2-process run


class Inspect(pl.Callback):
    """What the wrapped model looks like while training (teardown unwraps it): whether any
    teacher tensor is among what the strategy wraps (DDP broadcasts, buckets and reduces those)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wrapped = trainer.strategy.model
        ids = {id(t) for t in [*wrapped.parameters(), *wrapped.buffers()]}
        teacher = [*pl_module.teacher.parameters(), *pl_module.teacher.buffers()]
        self.teacher_wrapped = any(id(t) in ids for t in teacher)
        self.wrapped_params = sum(1 for _ in wrapped.parameters())


def _fit(strategy: pl.strategies.Strategy, max_steps: int, ckpt: str | None = None) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    model = TinyStudent()
    model.init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.init_teacher = {k: v.detach().clone() for k, v in model.teacher.state_dict().items()}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Inspect()],
    )
    trainer.fit(model, DataLoader(Clips(), batch_size=2, shuffle=False), ckpt_path=ckpt)
    return trainer


def _full_state(trainer: pl.Trainer) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(trainer.lightning_module, options=opts)


def _fit_student(strategy: pl.strategies.Strategy, teacher: Path) -> tuple[pl.Trainer, dict]:
    """3 steps of the real ``StudentModule`` (synthetic clips, the module's own masks)."""
    from test_golden_loss import SyntheticClips

    from salt.student import StudentModule

    pl.seed_everything(0, verbose=False)
    model = StudentModule(**module_kwargs("student", teacher=str(teacher), warmup_steps=1))
    init_teacher = {k: v.detach().clone() for k, v in model.teacher.state_dict().items()}
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_steps=3, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[Inspect()], use_distributed_sampler=False, gradient_clip_val=1.0,
    )  # fmt: skip
    trainer.fit(model, datamodule=SyntheticClips(seed=4))
    m = trainer.lightning_module
    inspect = next(c for c in trainer.callbacks if isinstance(c, Inspect))
    opt_ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    now = m.teacher.state_dict()
    report = {
        "teacher_wrapped": inspect.teacher_wrapped,
        "wrapped_params": inspect.wrapped_params,
        "teacher_in_optimizer": any(id(p) in opt_ids for p in m.teacher.parameters()),
        "teacher_moved": max((now[k] - v).abs().max().item() for k, v in init_teacher.items()),
        "teacher_in_state_dict": any(k.startswith("teacher") for k in m.state_dict()),
        "global_step": trainer.global_step,
    }
    return trainer, report


def student_worker(out: Path) -> None:
    """The real stage-2 module under SaltDDPStrategy and SaltFSDPStrategy."""
    from torch.distributed.tensor import DTensor

    rank = int(os.environ["RANK"])
    teacher = out / "teacher.ckpt"
    trainer, ddp = _fit_student(SaltDDPStrategy(), teacher)
    ddp_state = {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}
    strategy = SaltFSDPStrategy(param_dtype=None, reduce_dtype=None)
    trainer, fsdp = _fit_student(strategy, teacher)
    m = trainer.lightning_module
    fsdp["roots"] = strategy.shard_report["roots"]
    fsdp["teacher_dtensor"] = any(isinstance(p, DTensor) for p in m.teacher.parameters())
    fsdp["encoder_all_dtensor"] = all(isinstance(p, DTensor) for p in m.encoder.parameters())
    full = _full_state(trainer)  # full tensors on rank 0 only
    if rank == 0:
        fsdp["vs_ddp_max_abs_diff"] = max(
            (full[k] - ddp_state[k]).abs().max().item() for k in ddp_state
        )
        (out / "student_report.json").write_text(json.dumps({"ddp": ddp, "fsdp": fsdp}, indent=1))


def worker(out: Path) -> None:
    from torch.distributed.tensor import DTensor

    rank = int(os.environ["RANK"])
    report: dict = {}

    trainer = _fit(SaltDDPStrategy(), max_steps=2)
    inspect = next(c for c in trainer.callbacks if isinstance(c, Inspect))
    report["ddp_teacher_wrapped"] = inspect.teacher_wrapped
    report["ddp_wrapped_params"] = inspect.wrapped_params
    ddp_state = {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}

    strategy = SaltFSDPStrategy(param_dtype=None, reduce_dtype=None)
    trainer = _fit(strategy, max_steps=2)
    m = trainer.lightning_module
    teacher_ids = {id(p) for p in m.teacher.parameters()}
    opt_ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    report["fsdp_units"] = strategy.shard_report
    report["teacher_dtensor"] = any(isinstance(p, DTensor) for p in m.teacher.parameters())
    report["student_all_dtensor"] = all(
        isinstance(p, DTensor) for p in [*m.student.parameters(), *m.predictor.parameters()]
    )
    report["teacher_in_optimizer"] = bool(teacher_ids & opt_ids)
    report["act_checkpoint"] = [m.student.act_checkpoint, m.predictor.act_checkpoint]
    report["n_blocks"] = sum(isinstance(x, Block) for x in m.modules())
    fsdp_state = _full_state(trainer)  # full tensors on rank 0 only (empty elsewhere)
    if rank == 0:
        diffs = [(fsdp_state[k] - ddp_state[k]).abs().max().item() for k in ddp_state]
        report["fsdp_vs_ddp_max_abs_diff"] = max(diffs)
        moved = {k: (fsdp_state[k] - v).abs().max().item() for k, v in m.init_state.items()}
        report["student_moved"] = max(d for k, d in moved.items() if k.startswith("student."))
        teacher_now = m.teacher.state_dict()
        report["teacher_moved"] = max(
            (teacher_now[k] - v).abs().max().item() for k, v in m.init_teacher.items()
        )
    trainer.save_checkpoint(out / "sharded.ckpt")
    report["global_step"] = trainer.global_step

    # resume from the sharded folder for one more step
    trainer = _fit(
        SaltFSDPStrategy(param_dtype=None, reduce_dtype=None), 3, str(out / "sharded.ckpt")
    )
    report["resumed_global_step"] = trainer.global_step
    if rank == 0:
        torch.save(fsdp_state, out / "fsdp_state.pt")
        (out / "report.json").write_text(json.dumps(report, indent=1))


@pytest.mark.slow
def test_ddp_and_fsdp_two_process_gloo(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           "--master-port=29531", __file__, str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())

    # DDP: the teacher is not among what DDP wraps (never broadcast or reduced)
    assert report["ddp_wrapped_params"] > 0 and not report["ddp_teacher_wrapped"]
    # FSDP: one unit per trainable block + one per trainable child; the teacher left whole
    units = report["fsdp_units"]
    assert sorted(units["roots"]) == ["predictor", "student"]
    assert len(units["blocks"]) == report["n_blocks"]  # the teacher's blocks are not in the tree
    assert not report["teacher_dtensor"] and report["student_all_dtensor"]
    assert not report["teacher_in_optimizer"]
    assert report["act_checkpoint"] == [True, True]
    # same data, same init → FSDP's sharded AdamW steps land where DDP's do
    assert report["student_moved"] > 1e-3 and report["teacher_moved"] == 0.0
    assert report["fsdp_vs_ddp_max_abs_diff"] < 1e-5, report["fsdp_vs_ddp_max_abs_diff"]
    # the sharded checkpoint resumes at its step
    assert report["global_step"] == 2 and report["resumed_global_step"] == 3

    # consolidation: one file, the same weights as the gathered full state
    sharded = tmp_path / "sharded.ckpt"
    assert sharded.is_dir() and (sharded / "meta.pt").is_file()
    full = consolidate_checkpoint(sharded, tmp_path / "full.ckpt")
    ckpt = torch.load(full, map_location="cpu", weights_only=False)
    want = torch.load(tmp_path / "fsdp_state.pt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert set(ckpt["state_dict"]) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(ckpt["state_dict"][k], v, msg=k)
    # the consolidated file rebuilds a plain module strictly
    fresh = TinyStudent()
    fresh.load_state_dict(ckpt["state_dict"], strict=True)


@pytest.mark.slow
def test_fsdp_salt_fit_student_sharded_checkpoint_exports(tmp_path: Path, shards: str) -> None:  # noqa: F811
    """The real stage-2 module under `salt fit -c configs/strategy/fsdp.yaml` on 2 gloo ranks:
    encoder and predictor sharded, the frozen teacher replicated, sharded checkpoint folders
    written atomically (`last.ckpt` a symlink to the newest, `meta.pt` weights_only-safe), the
    exported encoder loads strictly, and a LiveProbe runs with every rank joining the sharded
    encoder's forwards (on rank 0 alone it deadlocked in the first parameter all-gather)."""
    from salt.encoder_io import export_sharded_encoder, load_encoder

    teacher = train_teacher_checkpoint(tmp_path / "teacher", shards, steps=2)
    repo = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29533",
        shutil.which("salt") or str(Path(sys.executable).parent / "salt"), "fit",
        "-c", str(repo / "configs/demo/student.yaml"), "-c", str(repo / "configs/strategy/fsdp.yaml"),
        "--trainer.strategy.init_args.param_dtype=null", "--trainer.devices=2",
        f"--model.init_args.teacher={teacher}", '--model.init_args.encoder_kwargs={"patch_size": 8}',
        "--model.init_args.warmup_steps=1", f"--data.train_shards={shards}", "--data.crop_size=32",
        "--data.frames_per_clip=8", "--data.batch_size=2", "--data.num_workers=0",
        "--trainer.max_steps=3", "--checkpoint_every=2", f"--trainer.default_root_dir={tmp_path}",
        "--run_name=fsdp", "--trainer.enable_progress_bar=false", "--hang_timeout=60",
        "--trainer.callbacks+=salt.probes.callback.LiveProbe",
        f"--trainer.callbacks.train_shards={shards}", "--trainer.callbacks.num_classes=4",
        "--trainer.callbacks.every_n_steps=2", "--trainer.callbacks.max_samples=8",
        "--trainer.callbacks.frame_step=2", "--trainer.callbacks.epochs=2",
        "--trainer.callbacks.batch_size=4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "FSDP2: 4 block units, roots ['encoder', 'predictor']" in out
    ckpts = tmp_path / "salt-demo" / "fsdp" / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    # no temp folders left behind; the end of training saved step 3 and last.ckpt points at it
    assert names == ["last.ckpt", "step=0000002.ckpt", "step=0000003.ckpt"], names
    assert (ckpts / "last.ckpt").is_symlink() and os.readlink(ckpts / "last.ckpt") == names[2]
    assert (ckpts / "last.ckpt" / "meta.pt").is_file()
    meta_pt = ckpts / "step=0000003.ckpt" / "meta.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(meta_pt) == []

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("salt-demo").experiment_id])[0]
    probe = client.get_metric_history(run.info.run_id, "probe/live_top1")
    assert [m.step for m in probe] == [2] and 0.0 <= probe[0].value <= 1.0

    enc_file = export_sharded_encoder(ckpts / "last.ckpt", tmp_path / "student.safetensors")
    encoder, meta = load_encoder(enc_file)  # strict: every key present, none extra
    assert meta["stage"] == "student" and meta["step"] == 3
    full = torch.load(tmp_path / "student-consolidated.ckpt", weights_only=False)
    assert not any("teacher" in k for k in full["state_dict"])  # the teacher is not trained state
    assert any(k.startswith("predictor.") for k in full["state_dict"])


@pytest.mark.slow
def test_real_student_module_under_ddp_and_fsdp(tmp_path: Path, shards: str) -> None:  # noqa: F811
    """The real ``StudentModule`` on 2 gloo ranks: its frozen teacher (held outside the module
    tree) is not among what DDP wraps or FSDP shards, stays out of the optimizer and of the
    state dict, and does not move; FSDP's steps land where DDP's do."""
    shutil.copy(
        train_teacher_checkpoint(tmp_path / "t", shards, steps=2), tmp_path / "teacher.ckpt"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           "--master-port=29535", __file__, "student", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads((tmp_path / "student_report.json").read_text())
    for name in ("ddp", "fsdp"):
        r = report[name]
        assert r["global_step"] == 3, name
        assert r["wrapped_params"] > 0 and not r["teacher_wrapped"], name
        assert not r["teacher_in_optimizer"] and not r["teacher_in_state_dict"], name
        assert r["teacher_moved"] == 0.0, name
    fsdp = report["fsdp"]
    assert fsdp["roots"] == ["encoder", "predictor"]
    assert not fsdp["teacher_dtensor"] and fsdp["encoder_all_dtensor"]
    assert fsdp["vs_ddp_max_abs_diff"] < 1e-4, fsdp["vs_ddp_max_abs_diff"]


def test_consolidate_rejects_non_sharded(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a sharded checkpoint"):
        consolidate_checkpoint(tmp_path, tmp_path / "x.ckpt")


def test_fsdp_rejects_direct_trainable_params_and_ema_teacher() -> None:
    from salt.ema import EMAModule
    from salt.strategies import shard_module

    m = TinyStudent()
    m.mask_token = nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="mask_token"):
        shard_module(m, mesh=None)
    ema = EMAModule(**module_kwargs("student"))
    with pytest.raises(ValueError, match=r"EMA baseline \(salt.ema.EMAModule\): use DDP"):
        shard_module(ema, mesh=None)


if __name__ == "__main__":
    if sys.argv[1] == "student":
        student_worker(Path(sys.argv[2]))
    else:
        worker(Path(sys.argv[1]))
