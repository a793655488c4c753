"""The usual mistakes are one line on stderr and exit status 2, no traceback, one test each:
a missing input CSV or folder (``salt-shards make``), a shard pattern that matches nothing
(found before the model, the teacher or the Trainer are built), a config file that does not
exist, GPUs asked for where none is visible, a teacher checkpoint of the wrong stage or
architecture (or not a checkpoint at all), a negative decoded-clip cache, an unknown option, a
missing export input; and the console scripts themselves exit 2 without a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import (
    datamodule,
    module_kwargs,
    single_thread,
    train_teacher_checkpoint,
    trainer,
)

from salt.cli import main as salt_main
from salt.data.shards_cli import main as shards_main

REPO = Path(__file__).resolve().parents[1]


def one_error_line(capsys, prog: str) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"{prog}: error: ") and "Traceback" not in err[0]
    return err[0]


def fit_args(stage: str, root: Path, train_shards: str, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(REPO / "configs" / "demo" / f"{stage}.yaml"),
        f"--trainer.default_root_dir={root}", f"--data.train_shards={train_shards}",
        "--data.crop_size=32", "--data.batch_size=4", "--data.num_workers=0",
        '--model.init_args.encoder_kwargs={"patch_size": 8}', "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false", "--experiment=err", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def teacher_ckpt(shards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_teacher_checkpoint(tmp_path_factory.mktemp("teacher"), shards, steps=2)


# ------------------------------------------------------------------------- salt-shards
def test_shards_make_missing_csv_and_folder(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "s-%06d.tar")
    for missing in (tmp_path / "videos.csv", tmp_path / "videos"):
        assert shards_main(["make", "--input", str(missing), "--output", out]) == 2
        line = one_error_line(capsys, "salt-shards")
        assert f"--input {missing}: no such CSV file or folder" in line
    assert not list(tmp_path.iterdir())  # nothing written


def test_shards_make_bad_csv_row(tmp_path: Path, capsys) -> None:
    csv = tmp_path / "v.csv"
    csv.write_text("a.mp4,1\nb.mp4,dog\n")
    assert shards_main(["make", "--input", str(csv), "--output", str(tmp_path / "s-%06d.tar")]) == 2
    assert "label 'dog' is not an integer" in one_error_line(capsys, "salt-shards")


def test_shards_inspect_pattern_matching_nothing(tmp_path: Path, capsys) -> None:
    pattern = str(tmp_path / "train-*.tar")
    assert shards_main(["inspect", pattern]) == 2
    assert f"no shard matches {pattern!r}" in one_error_line(capsys, "salt-shards")


# ------------------------------------------------------------------------- salt fit
def test_fit_config_file_missing(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "teacher.yaml"
    assert salt_main(["fit", "-c", str(missing)]) == 2
    assert f"config file not found: {missing} (-c)" in one_error_line(capsys, "salt")


def test_fit_shard_pattern_matching_nothing_is_found_first(tmp_path: Path, capsys) -> None:
    pattern = str(tmp_path / "nowhere" / "train-*.tar")
    # the teacher does not exist either: the shard check comes before the model is built
    argv = fit_args("student", tmp_path, pattern, f"--model.teacher={tmp_path / 'no.ckpt'}")
    assert salt_main(argv) == 2
    line = one_error_line(capsys, "salt")
    assert f"--data.train_shards: no shard matches {pattern!r}" in line
    assert not (tmp_path / "err").exists()  # no run folder: nothing started


def test_fit_val_shard_missing(shards: str, tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "val-000000.tar")
    assert salt_main(fit_args("teacher", tmp_path, shards, f"--data.val_shards={missing}")) == 2
    assert f"--data.val_shards: shard {missing!r} does not exist" in one_error_line(capsys, "salt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a visible GPU")
def test_fit_gpu_requested_none_visible(shards: str, tmp_path: Path, capsys) -> None:
    assert salt_main(fit_args("teacher", tmp_path, shards, "--trainer.accelerator=gpu")) == 2
    assert "--trainer.accelerator gpu asks for GPUs but none is visible" in one_error_line(
        capsys, "salt"
    )


def test_fit_negative_decoded_cache(shards: str, tmp_path: Path, capsys) -> None:
    args = fit_args("teacher", tmp_path / "r", shards, "--data.decoded_cache_mb=-1")
    assert salt_main(args) == 2
    assert "decoded_cache_mb must be >= 0, got -1.0" in one_error_line(capsys, "salt")


def test_fit_unknown_option(shards: str, tmp_path: Path, capsys) -> None:
    assert salt_main(fit_args("teacher", tmp_path, shards, "--trainer.max_stepz=3")) == 2
    line = one_error_line(capsys, "salt")
    assert "max_stepz" in line and "salt fit --help lists the options" in line


def test_fit_teacher_of_the_wrong_stage(
    shards: str,
    teacher_ckpt: Path,
    tmp_path: Path,
    capsys,
) -> None:
    from salt.student import StudentModule

    with single_thread():  # a real stage-2 checkpoint
        student = StudentModule(
            **module_kwargs("student", teacher=str(teacher_ckpt), warmup_steps=1)
        )
        t = trainer(tmp_path, 2)
        t.fit(student, datamodule=datamodule(shards))
        student_ckpt = tmp_path / "student.ckpt"
        t.save_checkpoint(student_ckpt)
    argv = fit_args("student", tmp_path, shards, f"--model.teacher={student_ckpt}")
    assert salt_main(argv) == 2
    line = one_error_line(capsys, "salt")
    assert f"--model.teacher {student_ckpt} is a stage-2 (student) checkpoint" in line


def test_fit_teacher_of_another_architecture(
    shards: str,
    teacher_ckpt: Path,
    tmp_path: Path,
    capsys,
) -> None:
    argv = fit_args("student", tmp_path, shards, f"--model.teacher={teacher_ckpt}")
    assert salt_main([*argv, "--data.crop_size=64"]) == 2  # teacher saw 32-px clips
    line = one_error_line(capsys, "salt")
    assert "does not match this student" in line and "img_size (data.crop_size)" in line


def test_fit_teacher_that_is_not_a_checkpoint(shards: str, tmp_path: Path, capsys) -> None:
    junk = tmp_path / "teacher.ckpt"
    junk.write_text("not a checkpoint\n")
    assert salt_main(fit_args("student", tmp_path, shards, f"--model.teacher={junk}")) == 2
    assert "cannot read as a Lightning checkpoint" in one_error_line(capsys, "salt")


def test_export_missing_checkpoint(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "last.ckpt"
    assert salt_main(["export", str(missing), str(tmp_path / "e.safetensors")]) == 2
    assert f"checkpoint not found: {missing}" in one_error_line(capsys, "salt")


# ------------------------------------------------------------------------- console scripts
@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("salt.data.shards_cli", ["make", "--input", "missing.csv", "--output", "o-%06d.tar"],
         "salt-shards: error: --input missing.csv: no such CSV file or folder"),
        ("salt.probes.runs_cli", ["select", "--experiment", "x", "--tracking-uri",
                                  "sqlite:///missing/mlflow.db"],
         "salt-runs: error: no MLflow store at sqlite:///missing/mlflow.db"),
    ],
)  # fmt: skip
def test_console_scripts_exit_2_without_traceback(
    module: str, argv: list[str], message: str, tmp_path: Path
) -> None:
    done = subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith(message) and "Traceback" not in done.stderr
