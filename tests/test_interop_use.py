"""An imported encoder works everywhere a salt export does: ``salt fit`` stage 2 with it as the
frozen teacher (wider than the student, other nominal clip size), a Lightning fit with a VideoMAE
teacher, and ``salt-probe --ckpt`` on it. Real ``transformers`` sources, real shards, real
Trainer and LightningCLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_interop import save, videomae_model, vjepa2_model
from train_helpers import (
    Recorder,
    datamodule,
    module_kwargs,
    single_thread,
    trainer,
)

from salt.cli import main as salt_main
from salt.encoder_io import file_sha256
from salt.student import StudentModule

pytest.importorskip("transformers")
REPO = Path(__file__).resolve().parents[1]


def test_salt_fit_student_of_imported_vjepa2(tmp_path: Path, shards: str, capsys) -> None:
    """The README's `salt fit -c configs/student/... --model.teacher vjepa2.safetensors`, tiny:
    the teacher's nominal clip (64 × 256², as the public V-JEPA 2 ViT-L) differs from the
    student's (8 × 32²): fine for a RoPE teacher; its width 96 differs from vit_test's 64."""
    source = vjepa2_model(patch_size=16, crop_size=256, frames_per_clip=64)
    teacher = tmp_path / "vjepa2.safetensors"
    assert salt_main(["import", str(save(source, tmp_path / "hf")), str(teacher)]) == 0
    assert f"wrote {teacher}" in capsys.readouterr().out
    runs = tmp_path / "runs"
    salt_main([
        "fit", "-c", str(REPO / "configs/demo/student.yaml"), "--model.teacher", str(teacher),
        "--trainer.default_root_dir", str(runs), "--data.train_shards", shards,
        "--data.crop_size", "32", "--data.frames_per_clip", "8", "--data.num_workers", "0",
        "--data.batch_size", "4", "--trainer.max_steps", "2", "--checkpoint_every", "2",
        "--trainer.enable_progress_bar", "false", "--model.init_args.warmup_steps", "1",
        "--tracking", "false",
    ])  # fmt: skip
    raw = torch.load(runs / "salt-demo/student/checkpoints/last.ckpt", weights_only=True)
    meta = raw["salt"]
    assert meta["step"] == 2 and meta["stage"] == "student"
    assert meta["teacher"]["sha256"] == file_sha256(teacher)
    assert meta["teacher"]["source"] == "transformers-vjepa2"
    assert raw["state_dict"]["predictor.proj.weight"].shape == (96, 48)  # teacher width out
    assert not any(k.startswith(("teacher", "_teacher")) for k in raw["state_dict"])


def test_lightning_fit_with_videomae_teacher(tmp_path: Path, shards: str) -> None:
    teacher = tmp_path / "videomae.safetensors"
    assert salt_main(["import", str(save(videomae_model(), tmp_path / "hf")), str(teacher)]) == 0
    # teacher and student see one normalised clip: a VideoMAE teacher's 0.5/0.5 (transformers'
    # default) is not the student's ImageNet default, and is refused until the student uses it
    with pytest.raises(ValueError, match=r"mean: teacher \[0.5, 0.5, 0.5\] vs student \[0.485"):
        StudentModule(**module_kwargs("student", teacher=str(teacher)))
    norm = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    module = StudentModule(**module_kwargs("student", teacher=str(teacher), warmup_steps=1, **norm))
    assert module.predictor.proj.out_features == 80 and module.encoder.embed_dim == 64
    before = {k: v.clone() for k, v in module.teacher.encoder.state_dict().items()}
    rec = Recorder()
    with single_thread():
        t = trainer(tmp_path, max_steps=2, callbacks=[rec])
        t.fit(module, datamodule=datamodule(shards))
    assert t.global_step == 2 and len(rec.losses) == 2
    assert all(torch.isfinite(torch.tensor(rec.losses)))
    after = module.teacher.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen
    # VideoMAE's table numbers a fixed grid: a student at another clip size is refused
    with pytest.raises(ValueError, match=r"img_size \(data.crop_size\): teacher \[32, 32\] vs "):
        StudentModule(**module_kwargs("student", teacher=str(teacher), img_size=48, **norm))


def test_salt_probe_on_imported_encoder(tmp_path: Path) -> None:
    from salt.data.synthetic import write_synthetic_shards
    from salt.probes import cli as probe_cli

    data = write_synthetic_shards(
        str(tmp_path / "shards"), num_train=4, num_probe_train=16, num_val=8, num_classes=4,
        frames=16, size=32,
    )  # fmt: skip
    encoder_file = tmp_path / "vjepa2.safetensors"
    assert salt_main(["import", str(save(vjepa2_model(), tmp_path / "hf")), str(encoder_file)]) == 0
    out = tmp_path / "probe.json"
    rc = probe_cli.main([
        "--ckpt", str(encoder_file), "--train", data["probe_train"], "--val", data["val"],
        "--num-classes", "4", "-c", str(REPO / "configs/probe/tiny.yaml"), "--crop-size", "32",
        "--epochs", "2", "--lrs", "1e-3", "--wds", "0.01", "--linear-lrs", "1e-2",
        "--output-json", str(out), "--no-mlflow",
    ])  # fmt: skip
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["stage"] == "imported" and result["step"] is None
    assert 0.0 <= result["top1"] <= 1.0 and result["num_classes"] == 4
