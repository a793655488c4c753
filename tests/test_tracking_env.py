"""Opening a run's MLflow logger must not change where later runs in the same process log.

Lightning's ``MLFlowLogger`` calls ``mlflow.set_tracking_uri``, which exports
``MLFLOW_TRACKING_URI``; without salt's restore, a second in-process ``salt fit`` (as in
``salt demo``) would silently log into the first run's store.
"""

from __future__ import annotations

import os

from mlflow.tracking import MlflowClient

from salt.tracking import SaltMLflowLogger, resolve_tracking_uri


def _open(tmp_path, name: str) -> str:
    uri = resolve_tracking_uri(None, tmp_path / name)
    logger = SaltMLflowLogger("exp", name, uri, run_dir=tmp_path / name)
    assert logger.experiment is not None  # opens the run (the call that set the env var)
    logger.finalize("success")
    return uri


def test_logger_leaves_tracking_env_as_it_found_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri_a = _open(tmp_path, "a")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    uri_b = _open(tmp_path, "b")  # default store of root b, not a's
    assert uri_a != uri_b
    for uri in (uri_a, uri_b):
        exp = MlflowClient(uri).get_experiment_by_name("exp")
        assert len(MlflowClient(uri).search_runs([exp.experiment_id])) == 1


def test_logger_keeps_a_user_set_tracking_env(tmp_path, monkeypatch):
    user = f"sqlite:///{tmp_path / 'user.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", user)
    logger = SaltMLflowLogger("exp", "r", f"sqlite:///{tmp_path / 'other.db'}", run_dir=tmp_path)
    assert logger.experiment is not None
    logger.finalize("success")
    assert os.environ["MLFLOW_TRACKING_URI"] == user
