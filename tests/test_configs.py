"""Every shipped ``salt fit`` config (configs/teacher, configs/student, configs/demo) parses as it
is and instantiates — model, DataModule and Trainer — through the real CLI with the tiny model.

configs/probe/*.yaml are ``salt-probe`` protocols and configs/strategy/*.yaml trainer fragments;
neither is a full LightningCLI config, so they are tested by their own test files
(tests/test_probe_configs.py, tests/test_strategies.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import module_kwargs

from salt.cli import SaltCLI
from salt.data import VideoDataModule
from salt.student import StudentModule
from salt.teacher import TeacherModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPECTED = {
    "teacher/vits16.yaml": "vit_small",
    "teacher/vitb16.yaml": "vit_base",
    "teacher/vitl16.yaml": "vit_large",
    "student/vitl16.yaml": "vit_large",
    "student/vith16.yaml": "vit_huge",
    "student/vitg16.yaml": "vit_giant",
    "student/vitgigantic16.yaml": "vit_gigantic",
    "demo/teacher.yaml": "vit_test",
    "demo/student.yaml": "vit_test",
}
SHIPPED = sorted(
    str(p.relative_to(CONFIGS))
    for d in ("teacher", "student", "demo")
    for p in (CONFIGS / d).glob("*.yaml")
)
TINY = {
    "teacher": ["decoder_dim=48", "decoder_depth=1", "decoder_heads=4", "decoder_mlp_hidden=96"],
    "student": [
        "predictor_dim=48",
        "predictor_depth=1",
        "predictor_heads=4",
        "predictor_mlp_hidden=96",
    ],
}


class ParseOnly(SaltCLI):
    """Parses and validates a config without building anything (the full-size models are big)."""

    def instantiate_classes(self) -> None:
        pass


def test_every_config_is_expected() -> None:
    assert sorted(EXPECTED) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_config_parses_as_shipped(name: str) -> None:
    cfg = ParseOnly(args=["-c", str(CONFIGS / name)], run=False).config
    stage = "student" if "Student" in cfg.model.class_path else "teacher"
    assert cfg.model.class_path == f"salt.{stage}.{stage.title()}Module"
    assert cfg.model.init_args.encoder == EXPECTED[name]
    assert cfg.trainer.max_steps > cfg.model.init_args.warmup_steps
    assert cfg.model.init_args.num_frames == cfg.data.frames_per_clip  # linked
    assert cfg.model.init_args.img_size == cfg.data.crop_size
    if stage == "student":
        assert cfg.model.init_args.teacher is None  # given on the command line
    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert "num_frames" not in raw["model"]["init_args"]  # the link sets it, not the file


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A stage-1 checkpoint (untrained) matching the tiny overrides below."""
    model = TeacherModule(**module_kwargs("teacher", warmup_steps=1))
    path = tmp_path_factory.mktemp("cfg") / "teacher.ckpt"
    torch.save({"state_dict": model.state_dict(), "salt": model.checkpoint_metadata()}, path)
    return str(path)


@pytest.mark.parametrize("name", SHIPPED)
def test_config_instantiates_with_tiny_model(name: str, tiny_teacher: str, tmp_path: Path) -> None:
    stage = name.split("/")[0] if not name.startswith("demo") else Path(name).stem
    args = [
        "-c", str(CONFIGS / name),
        "--model.init_args.encoder=vit_test", '--model.init_args.encoder_kwargs={"patch_size": 8}',
        "--data.crop_size=32", "--data.frames_per_clip=8", "--model.init_args.warmup_steps=1",
        f"--trainer.default_root_dir={tmp_path}", "--tracking=false", "--trainer.accelerator=cpu",
        *(f"--model.init_args.{a}" for a in TINY[stage]),
    ]  # fmt: skip
    if stage == "student":
        args += ["--model.teacher", tiny_teacher]
    cli = SaltCLI(args=args, run=False)
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    assert isinstance(model, StudentModule if stage == "student" else TeacherModule)
    assert isinstance(data, VideoDataModule) and data.cfg.crop_size == 32
    assert model.encoder.embed_dim == 64 and model.encoder.patch_size == 8
    assert model.num_frames == 8 and model.img_size == 32 and model.grid() == (4, 4, 4)
    assert trainer.max_steps == yaml.safe_load((CONFIGS / name).read_text())["trainer"]["max_steps"]
    assert (
        cli.run_path.parent == tmp_path / yaml.safe_load((CONFIGS / name).read_text())["experiment"]
    )
    if stage == "student":
        assert model.teacher_info["path"] == str(Path(tiny_teacher).resolve())
