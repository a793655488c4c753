"""`salt-probe --mode online` end to end on real H.264 (shards and CSV lists), tiny encoder, CPU.

The frozen encoder runs on decoded, augmented clips every epoch; the head is chosen on the
held-out part of train (by key hash), scored on validation once, retrained on all of train and
scored once more. Bad input: an empty split or a missing CSV is a one-line error (exit 2) before
the checkpoint is even read; a label out of range names the file and label; unreadable videos are
skipped and counted in the JSON and MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from probe_helpers import probe_args, tiny_splits, write_encoder

from salt.probes import cli, tracking


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    torch.set_num_threads(1)
    return {
        "root": root,
        "splits": tiny_splits(root / "data"),
        "ckpt": write_encoder(root / "enc" / "encoder.safetensors"),
    }


def _run(data, tmp_path, train=None, val=None, *extra) -> tuple[int, dict | None]:
    s = data["splits"]
    out = tmp_path / "res.json"
    argv = probe_args(data["ckpt"], train or s["probe_train"], val or s["val"], "--mode", "online",
                      "--output-json", str(out), "--state-dir", str(tmp_path / "state"), *extra)  # fmt: skip
    rc = cli.main(argv)
    return rc, (json.loads(out.read_text()) if out.is_file() else None)


def test_online_probe_selects_scores_and_retrains(data, tmp_path, capsys):
    uri = tracking.sqlite_uri(tmp_path / "mlflow.db")
    rc, res = _run(data, tmp_path, None, None, "--tracking-uri", uri)
    assert rc == 0
    assert res["mode"] == "online" and res["retrained"] is True
    assert res["num_val"] == 12 and res["num_fit"] + res["num_heldout"] == 32 > res["num_fit"]
    assert len(res["grid"]) == 3 and res["selected_head"] in res["grid"]
    assert all(h["epochs"] == 2 for h in res["grid"].values())
    assert 0.0 <= res["top1"] <= 1.0 and 0.0 <= res["fit_head_top1"] <= 1.0
    phases = [(h["phase"], h["heads"]) for h in res["history"]]
    assert phases == [("select", 3), ("select", 3), ("retrain", 1), ("retrain", 1)]
    err = capsys.readouterr().err
    assert "[probe select] step" in err and "clips_s" in err and "[probe retrain]" in err
    run = tracking.client(uri).get_run(res["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["probe/top1"] == pytest.approx(res["top1"])
    assert run.data.metrics["probe/fit_head_top1"] == pytest.approx(res["fit_head_top1"])
    hist = tracking.client(uri).get_metric_history(run.info.run_id, "select/clips_per_s")
    assert [m.step for m in hist] == [1, 2]  # one point per finished epoch


def test_csv_lists_give_the_same_probe_as_shards(data, tmp_path):
    s = data["splits"]
    rc, res = _run(
        data, tmp_path, s["probe_train_csv"], s["val_csv"], "--no-mlflow", "--no-retrain"
    )
    assert rc == 0 and res["retrained"] is False
    assert res["num_val"] == 12 and res["num_fit"] + res["num_heldout"] == 32
    assert res["top1"] == res["fit_head_top1"]


def test_bad_splits_fail_in_one_line_before_the_checkpoint_is_read(data, tmp_path, capsys):
    s = data["splits"]
    missing_ckpt = tmp_path / "no.ckpt"  # never reached: the splits are checked first
    argv = probe_args(missing_ckpt, str(tmp_path / "nope.csv"), s["val"], "--no-mlflow")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--train" in err and "nope.csv" in err and len(err.splitlines()) == 1
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n")
    assert cli.main(probe_args(missing_ckpt, s["probe_train"], str(empty), "--no-mlflow")) == 2
    assert "--val" in capsys.readouterr().err
    assert cli.main(probe_args(missing_ckpt, str(tmp_path / "x-*.tar"), s["val"])) == 2
    assert "x-*.tar" in capsys.readouterr().err


def test_label_out_of_range_names_the_file_and_label(data, tmp_path, capsys):
    s = data["splits"]
    rows = Path(s["val_csv"]).read_text().splitlines()
    bad = tmp_path / "val.csv"
    rows[3] = rows[3].rsplit(",", 1)[0] + ",7"
    bad.write_text("\n".join(rows).replace("videos/", str(Path(s["val_csv"]).parent) + "/videos/"))
    rc, _ = _run(data, tmp_path, None, str(bad), "--no-mlflow")
    assert rc == 2
    err = capsys.readouterr().err
    assert "7" in err and rows[3].split(",")[0].split("/")[-1] in err


def test_unreadable_videos_are_skipped_and_counted(data, tmp_path):
    s = data["splits"]
    root = Path(s["val_csv"]).parent
    rows = Path(s["val_csv"]).read_text().splitlines()
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 20)
    rows += [f"{tmp_path / 'broken.mp4'},1", f"{tmp_path / 'gone.mp4'},2"]
    val = tmp_path / "val_bad.csv"
    val.write_text("\n".join(r if r.startswith(("path", "/")) else f"{root}/{r}" for r in rows))
    uri = tracking.sqlite_uri(tmp_path / "mlflow.db")
    rc, res = _run(data, tmp_path, None, str(val), "--tracking-uri", uri, "--no-retrain")
    assert rc == 0 and res["num_val"] == 12
    assert res["skipped"]["val"] == {"skipped_undecodable": 1, "skipped_missing_file": 1}
    metrics = tracking.client(uri).get_run(res["mlflow"]["run_id"]).data.metrics
    assert metrics["data/val_skipped_undecodable"] == 1.0
    assert metrics["data/val_skipped_missing_file"] == 1.0
