"""MLflow plumbing for probe runs and for reading them back (salt-runs).

Store (docs/architecture.md "MLflow conventions"): a sqlite file `mlflow.db` in the training run's
root, artifacts under `<root>/mlartifacts`. `salt-probe` picks the store in this order:
`--tracking-uri`, then `$MLFLOW_TRACKING_URI`, then the first `mlflow.db` found in the checkpoint's
directory or one of its parents (the training run's root: that is where `salt fit` put it, so probe
runs land beside the run that made the checkpoint), and else a new `mlflow.db` beside the
checkpoint. The experiment defaults to the one holding the pretraining run (from the checkpoint's
`mlflow_run_id`), so `salt-runs compare --experiment <training experiment>` finds the probe runs.

Everything goes through an explicit `MlflowClient`, never mlflow's global active run, so a probe
inside a training process (callback.py) cannot end up logging into the wrong run.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROBE_KIND = "probe"
DEFAULT_EXPERIMENT = "salt-probe"


def sqlite_uri(db_path: str | Path) -> str:
    return f"sqlite:///{Path(db_path).resolve()}"


def resolve_tracking_uri(
    explicit: str | None, near: str | Path | None = None, levels: int = 4
) -> str:
    """The tracking store: explicit > $MLFLOW_TRACKING_URI > nearest mlflow.db above `near`.

    Args:
        explicit: a `--tracking-uri` value.
        near: a checkpoint path; its directory and up to `levels` parents are searched.
        levels: how many parents to search.
    """
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if near is None:
        return sqlite_uri(Path("runs") / "mlflow.db")
    start = Path(near).resolve()
    start = start if start.is_dir() else start.parent
    for d in [start, *start.parents][: levels + 1]:
        if (d / "mlflow.db").is_file():
            return sqlite_uri(d / "mlflow.db")
    return sqlite_uri(start / "mlflow.db")


def _artifact_root(uri: str) -> str | None:
    # sqlite:////abs/root/mlflow.db -> /abs/root/mlartifacts (else mlflow's default)
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///") :]).parent / "mlartifacts")
    return None


def client(uri: str):
    """An MlflowClient on `uri` (creates the sqlite file's directory if needed)."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def experiment_id(c: Any, name: str, uri: str) -> str:
    """Id of experiment `name`, created (artifacts under `<root>/mlartifacts`) if missing."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=_artifact_root(uri))
    except Exception:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def pretrain_experiment(c: Any, run_id: str | None) -> str | None:
    """Name of the experiment that holds run `run_id` in this store, if it is there."""
    if not run_id:
        return None
    try:
        run = c.get_run(run_id)
    except Exception:
        return None
    exp = c.get_experiment(run.info.experiment_id)
    return exp.name if exp is not None else None


def log_run(
    uri: str,
    experiment: str,
    *,
    run_name: str,
    tags: Mapping[str, Any],
    params: Mapping[str, Any] = (),
    metrics: Mapping[str, float] = (),
    artifacts: Mapping[str, str | Path] = (),
    json_artifacts: Mapping[str, Any] = (),
) -> str:
    """Create one finished run with tags, params, metrics and files; returns its run id.

    Args:
        artifacts: {artifact sub-directory ("" = root): local file path}.
        json_artifacts: {file name: JSON-able object}, written and logged at the root.
    """
    import json

    from mlflow.entities import Metric, Param

    c = client(uri)
    exp_id = experiment_id(c, experiment, uri)
    run = c.create_run(exp_id, tags={k: str(v) for k, v in tags.items()}, run_name=run_name)
    rid = run.info.run_id
    try:
        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, 0) for k, v in dict(metrics).items() if v is not None]
        ps = [Param(k, str(v)[:6000]) for k, v in dict(params).items()]
        for i in range(0, max(len(ms), len(ps)), 100):  # log_batch caps entries per call
            c.log_batch(rid, metrics=ms[i : i + 100], params=ps[i : i + 100])
        for sub, path in dict(artifacts).items():
            c.log_artifact(rid, str(path), artifact_path=sub or None)
        if json_artifacts:
            with tempfile.TemporaryDirectory() as tmp:
                for name, obj in dict(json_artifacts).items():
                    p = Path(tmp) / name
                    p.write_text(json.dumps(obj, indent=2, default=str))
                    c.log_artifact(rid, str(p))
    except BaseException:
        c.set_terminated(rid, "FAILED")
        raise
    c.set_terminated(rid, "FINISHED")
    return rid


def search(uri: str, experiment: str, kind: str = PROBE_KIND) -> list[Any]:
    """Finished runs of `experiment` tagged `salt.kind=<kind>`, newest first."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r} in {uri}")
    runs, token = [], None
    while True:
        page = c.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`salt.kind` = '{kind}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


# --------------------------------------------------------------------------- long-running probe runs
def run_exists(c: Any, run_id: str | None) -> bool:
    """Whether run `run_id` is in this store."""
    if not run_id:
        return False
    try:
        c.get_run(run_id)
    except Exception:
        return False
    return True


def start_run(
    uri: str,
    experiment: str,
    *,
    run_name: str,
    tags: Mapping[str, Any],
    params: Mapping[str, Any] = (),
    parent_run_id: str | None = None,
) -> str:
    """Create a RUNNING run (nested under `parent_run_id` when that run is in this store)."""
    from mlflow.entities import Param

    c = client(uri)
    tags = {k: str(v) for k, v in tags.items()}
    if run_exists(c, parent_run_id):
        tags["mlflow.parentRunId"] = str(parent_run_id)
    run = c.create_run(experiment_id(c, experiment, uri), tags=tags, run_name=run_name)
    ps = [Param(k, str(v)[:6000]) for k, v in dict(params).items()]
    for i in range(0, len(ps), 100):
        c.log_batch(run.info.run_id, params=ps[i : i + 100])
    return run.info.run_id


def resume_run(uri: str, run_id: str) -> bool:
    """Mark an interrupted run RUNNING again (a resumed probe logs into it); False if it is gone."""
    c = client(uri)
    if not run_exists(c, run_id):
        return False
    c.update_run(run_id, status="RUNNING")
    return True


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float | None], step: int = 0) -> None:
    """Metrics at one step (None values are left out)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, int(step)) for k, v in dict(metrics).items() if v is not None]
    c = client(uri)
    for i in range(0, len(ms), 100):
        c.log_batch(run_id, metrics=ms[i : i + 100])


def finish_run(
    uri: str,
    run_id: str,
    *,
    tags: Mapping[str, Any] = (),
    metrics: Mapping[str, float | None] = (),
    artifacts: Mapping[str, str | Path] = (),
    json_artifacts: Mapping[str, Any] = (),
    status: str = "FINISHED",
) -> None:
    """Final tags, metrics and files of a run, then its end status."""
    import json

    c = client(uri)
    for k, v in dict(tags).items():
        c.set_tag(run_id, k, str(v))
    log_metrics(uri, run_id, metrics)
    for sub, path in dict(artifacts).items():
        c.log_artifact(run_id, str(path), artifact_path=sub or None)
    if json_artifacts:
        with tempfile.TemporaryDirectory() as tmp:
            for name, obj in dict(json_artifacts).items():
                p = Path(tmp) / name
                p.write_text(json.dumps(obj, indent=2, default=str))
                c.log_artifact(run_id, str(p))
    c.set_terminated(run_id, status)


def log_into_training_run(
    uri: str, run_id: str | None, metrics: Mapping[str, float], step: int | None
) -> bool:
    """Log probe metrics into the training run that wrote the checkpoint, at its global step, so
    a training run's page shows `probe/<task>/top1` against its loss; False if it is not here."""
    c = client(uri)
    if not run_exists(c, run_id):
        return False
    log_metrics(uri, run_id, metrics, step=step or 0)
    return True
