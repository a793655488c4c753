"""salt-probe and salt-runs end to end on checkpoints written by a real (tiny) `salt fit`.

A 4-step teacher and a 4-step student are trained with the demo configs through the real
LightningCLI, so the checkpoints, their `ckpt["salt"]` metadata and the training runs in the
MLflow sqlite store are exactly what users get. salt-probe must write the JSON and a probe run in
the *training* store and experiment (found from the checkpoint's location and run id).
"""

import json
from pathlib import Path

import pytest
import torch

from salt.cli import main as salt_main
from salt.data.synthetic import write_synthetic_shards
from salt.probes import cli as probe_cli
from salt.probes import runs_cli, tracking

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--data.crop_size", "48", "--data.frames_per_clip", "8", "--data.num_workers", "0",
    "--data.batch_size", "4", "--trainer.max_steps", "4", "--checkpoint_every", "2",
    "--trainer.enable_progress_bar", "false", "--model.init_args.warmup_steps", "1",
]  # fmt: skip
PROBE = [
    "-c", str(REPO / "configs/probe/tiny.yaml"), "--crop-size", "48", "--epochs", "2",
    "--lrs", "1e-3", "--wds", "0.01", "--linear-lrs", "1e-2",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    shards = write_synthetic_shards(
        str(root / "shards"), num_train=16, num_probe_train=20, num_val=8, num_classes=4,
        frames=16, size=48,
    )  # fmt: skip
    runs = root / "runs"
    common = [
        "--trainer.default_root_dir",
        str(runs),
        "--data.train_shards",
        shards["train"],
        *TINY,
    ]
    torch.set_num_threads(1)
    salt_main(["fit", "-c", str(REPO / "configs/demo/teacher.yaml"), *common])
    teacher = runs / "salt-demo/teacher/checkpoints/last.ckpt"
    salt_main(
        [
            "fit",
            "-c",
            str(REPO / "configs/demo/student.yaml"),
            *common,
            "--model.teacher",
            str(teacher),
        ]
    )
    return {"root": root, "runs": runs, "shards": shards, "teacher": teacher,
            "student": runs / "salt-demo/student/checkpoints"}  # fmt: skip


def _probe(trained, ckpt, *extra):
    s = trained["shards"]
    argv = [
        "--ckpt",
        str(ckpt),
        "--train",
        s["probe_train"],
        "--val",
        s["val"],
        "--num-classes",
        "4",
    ]
    return probe_cli.main([*argv, *PROBE, *extra])


def test_salt_probe_writes_json_and_mlflow_run_beside_training(
    trained, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ckpt = trained["student"] / "last.ckpt"
    out = tmp_path / "res" / "student.json"
    assert _probe(trained, ckpt, "--output-json", str(out), "--baseline", "random") == 0
    res = json.loads(out.read_text())
    meta = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["salt"]
    assert res["checkpoint"] == str(ckpt.resolve()) and res["stage"] == "student"
    assert res["train_loss"] == pytest.approx(meta["train_loss"]) and res["step"] == 4
    assert 0.0 <= res["top1"] <= res["top5"] <= 1.0 and 0.0 <= res["random_top1"] <= 1.0
    assert res["selected_head"] in res["grid"] and len(res["grid"]) == 2  # 1 attentive + 1 linear
    assert res["num_val"] == 8 and res["num_fit"] + res["num_heldout"] == 20
    assert (out.parent / "student_confusion.png").is_file()
    printed = capsys.readouterr().out
    assert "random-init" in printed and "selected head" in printed

    # The probe run went into the training store (found by walking up from the checkpoint) and the
    # training run's experiment, tagged per the contract.
    ml = res["mlflow"]
    assert ml["tracking_uri"] == tracking.sqlite_uri(trained["runs"] / "mlflow.db")
    assert ml["experiment"] == "salt-demo"
    run = tracking.client(ml["tracking_uri"]).get_run(ml["run_id"])
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["salt.kind"] == "probe" and tags["salt.stage"] == "student"
    assert tags["salt.pretrain_run_id"] == meta["mlflow_run_id"] != ""
    assert tags["salt.checkpoint"] == str(ckpt.resolve()) and tags["salt.checkpoint_step"] == "4"
    assert tags["salt.teacher_sha256"] == meta["teacher"]["sha256"]
    assert metrics["probe/top1"] == pytest.approx(res["top1"])
    assert metrics["pretrain/train_loss"] == pytest.approx(meta["train_loss"])
    assert metrics["probe/random_top1"] == pytest.approx(res["random_top1"])
    assert any(k.startswith("probe/grid/") for k in metrics)
    # nested under the training run, which gets probe/<task>/top1 at the checkpoint's step
    assert tags["mlflow.parentRunId"] == meta["mlflow_run_id"]
    c = tracking.client(ml["tracking_uri"])
    hist = c.get_metric_history(meta["mlflow_run_id"], "probe/tiny/top1")
    assert [(m.step, m.value) for m in hist] == [(4, pytest.approx(res["top1"]))]
    assert res["task"] == "tiny" and ml["training_run_metric"] is True
    arts = {a.path for a in tracking.client(ml["tracking_uri"]).list_artifacts(ml["run_id"])}
    assert {"student_confusion.png", "probe_result.json"} <= arts


def test_salt_probe_teacher_checkpoint_and_bad_input(trained, tmp_path, capsys):
    uri = tracking.sqlite_uri(tmp_path / "other" / "mlflow.db")
    out = tmp_path / "teacher.json"
    assert (
        _probe(trained, trained["teacher"], "--output-json", str(out), "--tracking-uri", uri) == 0
    )
    res = json.loads(out.read_text())
    assert res["stage"] == "teacher" and res["teacher_sha256"] is None
    assert res["mlflow"]["experiment"] == "salt-probe"  # the pretraining run is not in this store
    run = tracking.client(uri).get_run(res["mlflow"]["run_id"])
    assert "mlflow.parentRunId" not in run.data.tags  # its parent is in another store
    assert res["mlflow"]["training_run_metric"] is False
    assert _probe(trained, tmp_path / "missing.ckpt", "--no-mlflow") == 2
    assert "not found" in capsys.readouterr().err
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("frames_per_clip: 8\nlearning_rate: 1.0\n")
    assert _probe(trained, trained["teacher"], "--no-mlflow", "-c", str(bad_cfg)) == 2
    assert "unknown probe setting" in capsys.readouterr().err


def test_salt_runs_over_real_runs(trained, tmp_path, capsys):
    uri = tracking.sqlite_uri(trained["runs"] / "mlflow.db")
    for name in ("step=0000002.ckpt", "step=0000004.ckpt"):
        assert _probe(trained, trained["student"] / name, "--tracking-uri", uri) == 0
    capsys.readouterr()
    # select reads the training run's checkpoint folder too (no probe needed for that)
    out = tmp_path / "sel.json"
    rc = runs_cli.main(
        ["select", "--experiment", "salt-demo", "--tracking-uri", uri, "--output-json", str(out)]
    )
    assert rc == 0
    sel = json.loads(out.read_text())
    losses = {Path(c["checkpoint"]).name: c["train_loss"] for c in sel["candidates"]}
    assert {"step=0000002.ckpt", "step=0000004.ckpt", "last.ckpt"} <= set(losses)
    assert sel["selected"]["train_loss"] == min(losses.values())
    plot = tmp_path / "scatter.png"
    rc = runs_cli.main(
        ["compare", "--experiment", "salt-demo", "--tracking-uri", uri, "--plot", str(plot)]
    )
    assert rc == 0 and plot.is_file()
    assert "R² =" in capsys.readouterr().out
