"""``salt fit`` end to end through the real CLI with the shipped demo configs (shrunk by flags):
teacher then ``--model.teacher <its last.ckpt>`` student, the run folder layout, the MLflow sqlite
store (params, metrics, tags), refusal to overwrite a run, ``--ckpt_path`` resume into the same
folder and MLflow run, and training through an unreachable tracking server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from train_helpers import one_thread, shards  # noqa: F401

from salt.cli import main
from salt.encoder_io import file_sha256

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def fit_args(stage: str, root: Path, train_shards: str, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(REPO / "configs" / "demo" / f"{stage}.yaml"),
        f"--trainer.default_root_dir={root}", f"--data.train_shards={train_shards}",
        "--data.crop_size=32", "--data.batch_size=4", "--data.num_workers=0",
        '--model.init_args.encoder_kwargs={"patch_size": 8}', "--model.init_args.warmup_steps=1",
        "--trainer.max_steps=4", "--checkpoint_every=2", "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false", "--experiment=cli", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def teacher_run(shards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("cli")
    main(fit_args("teacher", root, shards))
    return root


def runs_by_name(root: Path) -> dict:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cli")
    return client, {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_teacher_then_student(teacher_run: Path, shards: str) -> None:  # noqa: F811
    run_dir = teacher_run / "cli" / "teacher"
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "last.ckpt",
        "step=0000002.ckpt",
        "step=0000004.ckpt",
    ]
    saved = (run_dir / "config.yaml").read_text()
    assert "vit_test" in saved and "max_steps: 4" in saved and "frames_per_clip: 8" in saved
    last = ckpts / "last.ckpt"
    main(fit_args("student", teacher_run, shards, "--model.teacher", str(last)))
    assert (teacher_run / "cli" / "student" / "checkpoints" / "last.ckpt").is_file()

    client, runs = runs_by_name(teacher_run)
    assert set(runs) == {"teacher", "student"}
    for stage, run in runs.items():
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["salt.kind"] == "train" and tags["salt.stage"] == stage
        assert tags["salt.checkpoint_dir"] == str(
            (teacher_run / "cli" / stage / "checkpoints").resolve()
        )
        params = run.data.params
        assert (
            params["model.init_args.encoder"] == "vit_test" and params["trainer.max_steps"] == "4"
        )
        assert params["data.crop_size"] == "32" and params["model.class_path"].endswith(
            f"{stage.title()}Module"
        )
        for key in ("train/loss", "train/lr", "train/wd", "train/grad_norm"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [
                0,
                1,
                2,
                3,
            ], key
        for key in ("train/clips_per_s", "train/data_wait_s"):
            assert client.get_metric_history(run.info.run_id, key), key
        for key in ("train/rankme", "train/pred_std", "train/target_std"):  # health_every: 20
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [0] and history[0].value > 0, key
        run_file = json.loads((teacher_run / "cli" / stage / "run.json").read_text())
        assert run_file["mlflow_run_id"] == run.info.run_id
        meta = torch.load(
            teacher_run / "cli" / stage / "checkpoints" / "last.ckpt", weights_only=True
        )["salt"]
        assert meta["mlflow_run_id"] == run.info.run_id and meta["step"] == 4
    tags = runs["student"].data.tags
    assert tags["salt.teacher_path"] == str(last.resolve())
    assert tags["salt.teacher_sha256"] == file_sha256(last)
    assert runs["student"].data.params["model.init_args.teacher"] == str(last)


def test_refuses_to_overwrite_a_run(teacher_run: Path, shards: str, capsys) -> None:  # noqa: F811
    ckpts = teacher_run / "cli" / "teacher" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args("teacher", teacher_run, shards))
    assert exit_info.value.code == 2  # a usage error: one line, never retried by train.sbatch
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "--ckpt_path auto" in err, err
    assert "Traceback" not in err
    assert {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()} == before


def test_ckpt_path_resumes_into_same_folder_and_mlflow_run(teacher_run: Path, shards: str) -> None:  # noqa: F811
    run_dir = teacher_run / "cli" / "teacher"
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    mid = run_dir / "checkpoints" / "step=0000002.ckpt"
    main(
        fit_args(
            "teacher",
            teacher_run,
            shards,
            "--run_name=null",
            f"--ckpt_path={mid}",
            "--trainer.max_steps=6",
        )
    )
    assert json.loads((run_dir / "run.json").read_text())["mlflow_run_id"] == run_id
    assert "max_steps: 6" in (run_dir / "config.yaml").read_text()  # rewritten, not an error
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6 and last["salt"]["mlflow_run_id"] == run_id
    client, runs = runs_by_name(teacher_run)
    assert runs["teacher"].info.run_id == run_id  # no second teacher run
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == [0, 1, 2, 3, 2, 3, 4, 5]  # the resumed attempt continued at step 2


def test_unreachable_tracking_server(shards: str, tmp_path: Path, caplog, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with caplog.at_level(logging.WARNING, logger="salt.tracking"):
        main(
            fit_args(
                "teacher",
                tmp_path,
                shards,
                "--tracking_uri=http://127.0.0.1:9",
                "--trainer.max_steps=2",
            )
        )
    warnings = [r for r in caplog.records if r.name == "salt.tracking"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "MLflow tracking at http://127.0.0.1:9 failed" in warnings[0].getMessage()
    assert "training continues" in warnings[0].getMessage()
    last = torch.load(tmp_path / "cli" / "teacher" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and last["salt"]["mlflow_run_id"] is None
