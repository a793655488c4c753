"""Every stage's options as LightningCLI sees them: the shared arguments are defined once on
``SaltModule`` and reach each stage through ``**kwargs``; jsonargparse (what ``salt fit`` parses
with) must still list each of them, with each stage's own defaults (the EMA baseline keeps V-JEPA
2's), parse them, and put them in the module's hyperparameters."""

from __future__ import annotations

import pytest
from jsonargparse import ArgumentParser

from salt.module_base import SaltModule

SHARED = (
    "img_size", "num_frames", "masks", "mean", "std", "lr", "start_lr", "final_lr",
    "warmup_steps", "weight_decay", "final_weight_decay", "betas", "eps", "compile",
    "compile_scope", "compile_mode", "cudnn_attention", "health_every", "max_nonfinite",
)  # fmt: skip
SALT_RECIPE = {"lr": 6.25e-4, "start_lr": 2e-4, "warmup_steps": 10_000, "betas": (0.9, 0.95)}
VJEPA2_RECIPE = {"lr": 5.25e-4, "start_lr": 1e-4, "warmup_steps": 12_000, "betas": (0.9, 0.999)}
CLASSES = {
    "salt.teacher.TeacherModule": ({"decoder_dim", "norm_pix_eps"}, SALT_RECIPE),
    "salt.student.StudentModule": ({"teacher", "predictor_dim"}, SALT_RECIPE),
    "salt.ema.EMAModule": ({"ema_momentum", "predictor_dim"}, VJEPA2_RECIPE),
}


def _parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(SaltModule, "model")  # as salt fit (subclass_mode_model)
    return parser


@pytest.mark.parametrize("class_path", sorted(CLASSES))
def test_every_shared_option_reaches_each_stage(class_path: str) -> None:
    own, recipe = CLASSES[class_path]
    cfg = _parser().parse_args([f"--model={class_path}", "--model.init_args.eps=1e-6"])
    init = vars(cfg.model.init_args)
    assert set(SHARED) | own <= set(init)
    assert init["eps"] == 1e-6  # parsed, not only listed
    for key, value in recipe.items():
        assert init[key] == value, key
    assert init["final_weight_decay"] == (0.04 if "ema" in class_path else 0.4)


@pytest.mark.parametrize("class_path", sorted(CLASSES))
def test_help_lists_the_shared_options(class_path: str, capsys) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args([f"--model.help={class_path}"])
    out = capsys.readouterr().out
    for key in ("lr", "warmup_steps", "masks", "betas", "img_size", "max_nonfinite"):
        assert f"--model.init_args.{key} " in out or f"--model.{key} " in out, key


def test_hyperparameters_hold_every_argument() -> None:
    from train_helpers import module_kwargs

    from salt.ema import EMAModule

    module = EMAModule(**module_kwargs("student"))
    hparams = dict(module.hparams)
    assert set(SHARED) <= set(hparams)
    assert hparams["lr"] == 3e-3  # given
    assert hparams["betas"] == (0.9, 0.999) and hparams["max_nonfinite"] == 20  # defaults
