"""``salt fit`` end to end through the real CLI with the shipped demo configs (shrunk by flags):
teacher then ``--model.teacher <its last.ckpt>`` student, the run folder layout, the MLflow sqlite
store (params, metrics, tags: git commit, world size, global batch, precision, attempt; the
``config.yaml`` artifact; system metrics), refusal to overwrite a run, ``--ckpt_path`` resume into
the same folder and MLflow run, the plain progress lines and summary of a batch job, and
``salt-runs select --register`` of a real checkpoint, also after the whole ``runs/`` moved."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from train_helpers import one_thread, shards  # noqa: F401

from salt.cli import main
from salt.encoder_io import file_sha256
from salt.probes import runs_cli

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


SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
              "SLURM_PROCID", "SLURM_STEP_ID", "SALT_ATTEMPT")  # fmt: skip
LINE = re.compile(
    r"^\[fit\] step (\d+)/(\d+) \(\d+\.\d%\)  loss \d+\.?\d*  clips/s \d+\.?\d*"
    r"  data-wait \d+%(  ETA \S+)?$"
)


@pytest.fixture(scope="module")
def teacher_run(shards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        for var in SLURM_VARS:
            mp.delenv(var, raising=False)
        assert main(fit_args("teacher", root, shards, "--system_metrics=true")) == 0
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
    with pytest.MonkeyPatch.context() as mp:
        for var in SLURM_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("SLURM_JOB_ID", "4242")
        mp.setenv("SLURM_RESTART_COUNT", "2")
        mp.setenv("SALT_ATTEMPT", "3")
        argv = fit_args("student", teacher_run, shards, "--model.teacher", str(last))
        assert main([*argv, "--run_name=student"]) == 0
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


def test_runs_carry_environment_tags_config_and_system_metrics(teacher_run: Path) -> None:
    client, runs = runs_by_name(teacher_run)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    for stage, run in runs.items():
        tags = run.data.tags
        if head:  # the tests run from a checkout: the commit salt was imported from
            assert tags["mlflow.source.git.commit"] == tags["salt.git_commit"] == head
            assert tags["salt.git_dirty"] in ("true", "false")
        assert tags["salt.world_size"] == "1" and tags["salt.num_nodes"] == "1"
        assert tags["salt.global_batch"] == "4"  # batch 4 x 1 rank x no accumulation
        assert tags["salt.precision"] == "32-true"  # the demo configs' precision: 32
        assert tags["salt.run_relpath"] == f"cli/{stage}"
        # the resolved config is an artifact, byte for byte the run folder's config.yaml
        local = client.download_artifacts(run.info.run_id, "config.yaml", str(teacher_run / stage))
        assert Path(local).read_text() == (teacher_run / "cli" / stage / "config.yaml").read_text()
    teacher, student = runs["teacher"], runs["student"]
    assert "salt.slurm_job_id" not in teacher.data.tags and "salt.attempt" not in teacher.data.tags
    assert student.data.tags["salt.slurm_job_id"] == "4242"
    assert student.data.tags["salt.slurm_restart_count"] == "2"
    assert student.data.tags["salt.attempt"] == "3"
    attempt = client.get_metric_history(student.info.run_id, "run/attempt")
    assert [(m.step, m.value) for m in attempt] == [(0, 3.0)]
    # --system_metrics true on the teacher only: MLflow's psutil collectors, at training steps
    system = {k for k in teacher.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
    assert not any(k.startswith("system/") for k in student.data.metrics)


def test_batch_job_output_lines_and_summary(shards: str, tmp_path: Path, capsys) -> None:  # noqa: F811
    # stdout is captured (not a terminal) and the bar is off: plain lines every 2 steps
    argv = fit_args("teacher", tmp_path, shards, "--trainer.max_steps=6", "--progress_every=2")
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [ln for ln in out if ln.startswith("[fit] step ")]
    assert [LINE.match(ln).group(1, 2) for ln in lines] == [("2", "6"), ("4", "6"), ("6", "6")]
    summary = out[out.index("[fit] summary") :]
    text = "\n".join(summary)
    run_dir = tmp_path / "cli" / "teacher"
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    assert "steps        6 of max_steps 6 (6 in this attempt, from step 0)" in text
    assert re.search(r"clips/s      \d+\.\d mean over the attempt \(1 rank\(s\)\)", text)
    assert "skipped      none (rank 0)" in text
    assert f"last ckpt    {run_dir / 'checkpoints' / 'last.ckpt'} (step 6, train_loss" in text
    losses = {p.name: torch.load(p, weights_only=True)["salt"]["train_loss"]
              for p in (run_dir / "checkpoints").glob("step=*.ckpt")}  # fmt: skip
    best = min(losses, key=losses.get)
    assert f"best by loss {run_dir / 'checkpoints' / best} " in text
    assert f"mlflow       run {run_id} in experiment 'cli'" in text
    assert f"mlflow ui --backend-store-uri sqlite:///{(tmp_path / 'mlflow.db').resolve()}" in text


def test_select_registers_the_checkpoint_and_survives_moving_runs(
    teacher_run: Path, tmp_path: Path, capsys
) -> None:
    uri = f"sqlite:///{teacher_run / 'mlflow.db'}"
    sel = ["select", "--experiment", "cli", "--stage", "teacher", "--register", "salt-teacher"]
    out_json = tmp_path / "sel.json"
    assert runs_cli.main([*sel, "--tracking-uri", uri, "--output-json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    chosen = Path(result["selected"]["checkpoint"])
    assert chosen.parent == (teacher_run / "cli" / "teacher" / "checkpoints").resolve()
    reg = result["registered"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version("salt-teacher", str(reg["version"]))
    assert version.source == chosen.as_uri()  # the file itself: nothing copied
    _, runs = runs_by_name(teacher_run)
    assert version.run_id == runs["teacher"].info.run_id
    assert version.tags["salt.checkpoint_relpath"] == f"cli/teacher/checkpoints/{chosen.name}"
    assert float(version.tags["salt.train_loss"]) == result["selected"]["train_loss"]
    assert f"version {reg['version']} -> {chosen.as_uri()}" in capsys.readouterr().out

    # the whole root moves (store, artifacts, run folders): select and register still work
    moved = tmp_path / "elsewhere"
    shutil.copytree(teacher_run, moved)
    moved_uri = f"sqlite:///{moved / 'mlflow.db'}"
    assert runs_cli.main([*sel, "--tracking-uri", moved_uri, "--output-json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    assert (
        Path(result["selected"]["checkpoint"])
        == (moved / "cli/teacher/checkpoints" / chosen.name).resolve()
    )
    assert (
        result["registered"]["source"]
        == (moved / "cli/teacher/checkpoints" / chosen.name).resolve().as_uri()
    )


def test_refuses_to_overwrite_a_run(teacher_run: Path, shards: str, capsys) -> None:  # noqa: F811
    ckpts = teacher_run / "cli" / "teacher" / "checkpoints"
    before = {p.name: p.stat().st_mtime_ns for p in ckpts.iterdir()}
    assert main(fit_args("teacher", teacher_run, shards)) == 2  # usage error: never retried
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("salt: error: run folder "), err
    assert "already holds checkpoints" in err[0] and "--ckpt_path auto" in err[0], err
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
