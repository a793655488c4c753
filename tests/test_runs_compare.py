"""salt-runs over a real MLflow sqlite store: compare's R² / ρ match numpy + scipy; select refuses
to mix teachers and picks the lowest loss.

Probe runs are logged through the same helper salt-probe uses (tracking.log_run), with the
contract's tags and metrics, so these tests read exactly what a real probe run leaves behind.
"""

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from salt.probes import runs_cli, tracking
from salt.probes.compare import MixedTeachersError, check_one_teacher, fit_loss_accuracy

LOSSES = [0.61, 0.52, 0.47, 0.45, 0.40]
TOP1 = [0.31, 0.40, 0.38, 0.47, 0.52]


def _log_probe(uri, exp, step, loss, top1, teacher="a" * 64, stage="student", protocol="tiny-0000"):
    return tracking.log_run(
        uri,
        exp,
        run_name=f"probe-step{step}",
        tags={
            "salt.kind": "probe",
            "salt.pretrain_run_id": "train-run",
            "salt.checkpoint": f"/ckpts/step{step}.ckpt",
            "salt.checkpoint_step": step,
            "salt.stage": stage,
            "salt.teacher_sha256": teacher,
            "salt.probe_protocol": protocol,
        },
        metrics={"probe/top1": top1, "probe/top5": 1.0, "pretrain/train_loss": loss},
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlruns")
    uri = tracking.sqlite_uri(root / "mlflow.db")
    for i, (loss, top1) in enumerate(zip(LOSSES, TOP1, strict=True)):
        _log_probe(uri, "students", 100 * (i + 1), loss, top1)
    # a teacher checkpoint probe in the same experiment must not enter the student fit
    _log_probe(uri, "students", 999, 0.01, 0.9, teacher="", stage="teacher")
    for i, (loss, top1) in enumerate([(0.5, 0.3), (0.2, 0.6)]):
        _log_probe(uri, "mixed", i, loss, top1, teacher="a" * 64)
    _log_probe(uri, "mixed", 7, 0.9, 0.2, teacher="b" * 64)
    return root, uri


def test_compare_matches_numpy_and_scipy(store, tmp_path, capsys):
    root, uri = store
    out_json, plot = tmp_path / "cmp.json", tmp_path / "scatter.png"
    rc = runs_cli.main(
        ["compare", "--experiment", "students", "--tracking-uri", uri, "--plot", str(plot),
         "--output-json", str(out_json)]
    )  # fmt: skip
    assert rc == 0
    out = json.loads(out_json.read_text())
    x, y = np.array(LOSSES), np.array(TOP1)
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - np.sum((y - (slope * x + intercept)) ** 2) / np.sum((y - y.mean()) ** 2)
    rho = spearmanr(x, y).statistic
    fit = out["fit"]
    assert fit["n"] == 5  # the teacher-stage probe run is left out
    assert fit["slope"] == pytest.approx(slope, abs=1e-9)
    assert fit["r2"] == pytest.approx(r2, abs=1e-9)
    assert fit["spearman"] == pytest.approx(rho, abs=1e-6)
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"R² = {r2:.4f}" in printed and "/ckpts/step300.ckpt" in printed
    # the compare run is logged with its metrics and the plot
    runs = tracking.search(uri, "students", kind="compare")
    assert runs and runs[0].data.metrics["compare/r2"] == pytest.approx(r2, abs=1e-9)
    arts = {a.path for a in tracking.client(uri).list_artifacts(runs[0].info.run_id)}
    assert "scatter.png" in arts


def test_fit_on_ties_matches_scipy():
    x, y = [0.5, 0.4, 0.4, 0.3, 0.2, 0.2], [0.1, 0.3, 0.2, 0.2, 0.6, 0.5]
    assert fit_loss_accuracy(x, y)["spearman"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        fit_loss_accuracy([0.3], [0.5])


def test_select_picks_lowest_loss(store, tmp_path, capsys):
    _, uri = store
    out_json = tmp_path / "sel.json"
    rc = runs_cli.main(
        [
            "select",
            "--experiment",
            "students",
            "--tracking-uri",
            uri,
            "--output-json",
            str(out_json),
        ]
    )
    assert rc == 0
    sel = json.loads(out_json.read_text())["selected"]
    assert sel["checkpoint"] == "/ckpts/step500.ckpt" and sel["train_loss"] == pytest.approx(0.40)
    assert "selected: /ckpts/step500.ckpt" in capsys.readouterr().out


def test_select_and_compare_refuse_mixed_teachers(store, capsys):
    _, uri = store
    for extra in (["select"], ["compare", "--no-log"]):
        rc = runs_cli.main([*extra, "--experiment", "mixed", "--tracking-uri", uri])
        assert rc == 2
        assert "different teachers" in capsys.readouterr().err
    # --force overrides; --teacher picks one teacher's students
    assert runs_cli.main(["select", "--experiment", "mixed", "--tracking-uri", uri, "--force"]) == 0
    assert "step7.ckpt" not in capsys.readouterr().out.split("selected:")[1]
    assert (
        runs_cli.main(
            ["select", "--experiment", "mixed", "--tracking-uri", uri, "--teacher", "bbbb"]
        )
        == 0
    )
    assert "selected: /ckpts/step7.ckpt" in capsys.readouterr().out


def test_check_one_teacher_message_names_teachers():
    from salt.probes.compare import CheckpointRow

    rows = [
        CheckpointRow(f"/c{i}", i, "student", t, 0.5, 0.5, None, "p", "r", "")
        for i, t in enumerate(["x" * 64, "y" * 64])
    ]
    with pytest.raises(MixedTeachersError, match="xxxxxxxxxxxx.*yyyyyyyyyyyy"):
        check_one_teacher(rows)
    check_one_teacher(rows, force=True)


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    rc = runs_cli.main(
        [
            "compare",
            "--experiment",
            "x",
            "--tracking-uri",
            tracking.sqlite_uri(tmp_path / "none.db"),
        ]
    )
    assert rc == 2 and "no MLflow store" in capsys.readouterr().err
