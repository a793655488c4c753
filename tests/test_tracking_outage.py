"""Tracking-store outages through real ``salt fit`` runs: nothing is lost, nothing waits.

- Store down for the whole fit (a server URI where nothing listens, with credentials in it):
  training finishes, every operation lands in the run folder's spool, no credential is written
  anywhere, and ``salt-runs sync`` later creates the run in a real sqlite store with every
  metric, param, tag, the config artifact and the final status.
- The next start of the same run folder replays the previous attempt's spool first.
- A real ``mlflow server`` stopped mid-run and started again (slow): training goes on while it
  is down, the spool is replayed when it is back, every ``train/loss`` point reaches the store.
- The writer only queues on the training thread; ``redact_uri`` strips credentials.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from salt.cli import main
from salt.probes import runs_cli
from salt.tracking_uri import redact_uri
from salt.tracking_writer import SPOOL_FILE, TrackingWriter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def dead_port() -> int:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_args(root: Path, train_shards: str, *extra: str) -> list[str]:
    return [
        "fit", "-c", str(REPO / "configs" / "demo" / "teacher.yaml"),
        f"--trainer.default_root_dir={root}", f"--data.train_shards={train_shards}",
        "--data.crop_size=32", "--data.batch_size=4", "--data.num_workers=0",
        '--model.init_args.encoder_kwargs={"patch_size": 8}', "--model.init_args.warmup_steps=1",
        "--trainer.max_steps=4", "--checkpoint_every=2", "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false", "--experiment=outage", "--run_name=r", *extra,
    ]  # fmt: skip


@pytest.fixture
def fast_writer(monkeypatch) -> None:
    monkeypatch.setenv("SALT_TRACKING_FLUSH_S", "0.2")
    monkeypatch.setenv("SALT_TRACKING_MAX_BACKOFF_S", "1")
    monkeypatch.setenv("SALT_TRACKING_FINAL_WAIT_S", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_store_down_for_the_whole_fit_then_sync(
    shards: str,
    tmp_path: Path,
    fast_writer: None,
    caplog,
    capsys,
) -> None:
    uri = f"http://alice:s3cret@127.0.0.1:{dead_port()}"
    with caplog.at_level(logging.WARNING, logger="salt.tracking"):
        assert main(fit_args(tmp_path, shards, f"--tracking_uri={uri}")) == 0
    out = capsys.readouterr()
    run_dir = tmp_path / "outage" / "r"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and last["salt"]["mlflow_run_id"] is None  # run never made
    messages = [r.getMessage() for r in caplog.records if r.name == "salt.tracking"]
    assert any("unreachable when opening run 'r'" in m for m in messages)
    assert any("still unreachable at the end" in m for m in messages)
    # nothing recorded anywhere holds the password
    run_json = json.loads((run_dir / "run.json").read_text())
    assert run_json["mlflow_run_id"] is None
    assert run_json["tracking_uri"] == redact_uri(uri) == uri.replace("alice:s3cret@", "")
    spool = (run_dir / SPOOL_FILE).read_text()
    written = [spool, (run_dir / "run.json").read_text(), (run_dir / "config.yaml").read_text()]
    for text in [*written, out.out, out.err, *messages]:
        assert "s3cret" not in text and "alice" not in text
    ops = [json.loads(line)["op"] for line in spool.splitlines()]
    assert ops.count("terminate") == 1 and {"params", "tags", "artifact", "metrics"} <= set(ops)

    # the store is reachable now (a real sqlite store): sync creates the run and replays
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sync = ["sync", str(run_dir), "--tracking-uri", store]
    assert runs_cli.main(sync) == 0
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    assert run_id
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [0, 1, 2, 3]
    assert run.data.params["trainer.max_steps"] == "4"
    assert run.data.params["tracking_uri"] == redact_uri(uri)
    assert run.data.tags["salt.kind"] == "train" and run.data.tags["salt.stage"] == "teacher"
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.yaml"]
    assert "replayed" in capsys.readouterr().out
    # replaying again sends nothing twice
    assert runs_cli.main(sync) == 0
    assert "replayed 0 spooled operation(s)" in capsys.readouterr().out
    assert len(client.get_metric_history(run_id, "train/loss")) == 4


def test_next_start_replays_the_previous_attempts_spool(
    shards: str,
    tmp_path: Path,
    fast_writer: None,
) -> None:
    down = f"http://127.0.0.1:{dead_port()}"
    assert main(fit_args(tmp_path, shards, f"--tracking_uri={down}")) == 0
    run_dir = tmp_path / "outage" / "r"
    assert (run_dir / SPOOL_FILE).stat().st_size > 0
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resume = [
        f"--tracking_uri={store}",
        f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        "--trainer.max_steps=6",
    ]
    assert main(fit_args(tmp_path, shards, *resume)) == 0
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    client = MlflowClient(store)
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == [0, 1, 2, 3, 4, 5]  # attempt 1 (spooled) + attempt 2
    assert client.get_run(run_id).info.status == "FINISHED"


def test_writer_only_queues_on_the_caller_thread(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("w")
    run_id = client.create_run(exp).info.run_id
    writer = TrackingWriter(uri, tmp_path / "run", run_id, flush_every_s=3600)
    for step in range(200):
        writer.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    assert len(writer._queue) == 200 and writer.stats["sent"] == 0  # not started: only queued
    assert client.get_metric_history(run_id, "train/loss") == []
    writer.start()
    assert writer.flush(timeout=60)
    assert writer.stats["sent"] == 1  # 200 calls, one batched request
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(200))
    writer.close()
    assert not (tmp_path / "run" / SPOOL_FILE).exists()  # never down: no spool


def test_redact_uri() -> None:
    assert redact_uri("sqlite:////abs/run@x/mlflow.db") == "sqlite:////abs/run@x/mlflow.db"
    assert redact_uri("https://u:p@host:5000/x?token=t&a=1") == "https://host:5000/x?token=***&a=1"
    assert redact_uri("postgresql://user:pw@db:5432/mlflow") == "postgresql://db:5432/mlflow"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact_uri(None) is None


@pytest.mark.slow
def test_real_server_stopped_mid_run_loses_nothing(tmp_path: Path, fast_writer: None) -> None:
    from tracking_outage import run_outage, table_row

    r = run_outage(tmp_path, outage_s=2.0, after_s=3.0, kill_at=3)
    assert r["up_step"] > r["down_step"]  # training went on while the server was down
    assert r["step_s"]["down"]["n"] > 0
    w, s = r["writer"], r["store"]
    assert w["outages"] >= 1 and w["spooled"] > 0
    assert w["replayed"] == r["spool_lines"] and w["backlog"] == 0
    assert s["stored"] == s["expected"] == r["final_step"] and s["missing_steps"] == []
    assert s["status"] == "FINISHED" and "config.yaml" in s["artifacts"]
    assert "0 of" in table_row(r)
