"""MLflow tracking for ``salt fit``: a sqlite store by default, and never a reason to stop training.

- Store: ``sqlite:///<root>/mlflow.db`` with artifacts in ``<root>/mlartifacts`` (root =
  ``trainer.default_root_dir``). MLflow ≥ 3.13 refuses the plain file store that Lightning's
  ``MLFlowLogger`` defaults to. ``--tracking_uri`` or ``MLFLOW_TRACKING_URI`` point elsewhere.
- ``SaltMLflowLogger``: Lightning's logger, guarded — the first failure to reach the store logs one
  warning and turns tracking off for the rest of the run; training goes on. Parameters are logged
  once per key (a resumed run keeps its params; changed values are reported, not fatal).
- ``TrackingCallback``: tags from docs/architecture.md (``salt.kind``, ``salt.stage``,
  ``salt.teacher_path``, ``salt.teacher_sha256``, ``salt.checkpoint_dir``), gives the module its
  run id (stored in checkpoint metadata) and writes ``<run_dir>/run.json`` so a resumed job logs
  into the same MLflow run.

mlflow itself is imported lazily (only when a logger is built): the GPU machines that run the
step benchmark have no mlflow, and ``salt.step`` / ``salt.student`` never import this module.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 500
RUN_FILE = "run.json"


def default_tracking_uri(root: str | os.PathLike) -> str:
    """``sqlite:///<abs root>/mlflow.db`` (the directory is created)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_tracking_uri(flag: str | None, root: str | os.PathLike) -> str:
    """The store to use: ``--tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the sqlite default."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → ``{"a.b.c": "value"}`` with string values cut to MLflow's param limit."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_CHARS]
    return out


def read_run_file(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``<run_dir>/run.json`` written by an earlier job of this run, or ``{}``."""
    path = Path(run_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _restore_tracking_uri(before: str | None) -> None:
    """Undo the process-wide side effect of Lightning's logger: ``MLFlowLogger`` calls
    ``mlflow.set_tracking_uri``, which also exports ``MLFLOW_TRACKING_URI`` to the environment, so
    every later run in the same process (``salt demo``, a notebook, a test) would silently log to
    this run's store instead of its own default."""
    if os.environ.get("MLFLOW_TRACKING_URI") == before:
        return
    import mlflow

    mlflow.set_tracking_uri(before)  # None unsets the variable and mlflow's global


class SaltMLflowLogger(MLFlowLogger):
    """``MLFlowLogger`` whose failures never stop training (one warning, then tracking is off).

    Args:
        experiment_name: MLflow experiment (created with ``artifact_location`` if new).
        run_name: MLflow run name (the run folder's name).
        tracking_uri: store URI (see ``resolve_tracking_uri``).
        run_dir: the run's folder, reported as ``save_dir`` so ``trainer.log_dir`` points there.
        artifact_location: artifact root for a new experiment.
        run_id: continue this MLflow run (resume) instead of starting one.
    """

    def __init__(
        self,
        experiment_name: str,
        run_name: str,
        tracking_uri: str,
        run_dir: str | os.PathLike,
        artifact_location: str | None = None,
        run_id: str | None = None,
    ) -> None:
        if tracking_uri.startswith(("http://", "https://")):
            # MLflow retries an unreachable server for minutes by default; give up after seconds.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=tracking_uri,
            artifact_location=artifact_location,
            run_id=run_id,
        )
        self._run_dir = str(run_dir)
        self.disabled = False

    def _fail(self, what: str, exc: BaseException) -> None:
        if not self.disabled:
            log.warning(
                "MLflow tracking at %s failed while %s (%s: %s); training continues without "
                "tracking for the rest of this run.",
                self._tracking_uri,
                what,
                type(exc).__name__,
                exc,
            )
        self.disabled = True

    @property
    def experiment(self) -> Any:
        """The MLflow client with the run opened; None once tracking is off. Lightning touches
        this during setup, so the first unreachable-store error surfaces (and is caught) here."""
        if self.disabled:
            return None
        before = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            return super().experiment
        except Exception as e:
            self._fail("opening the run", e)
            return None
        finally:
            _restore_tracking_uri(before)

    @property
    def run_id(self) -> str | None:
        if self.disabled or self.experiment is None:
            return None
        return self._run_id

    @property
    def version(self) -> str | None:
        return self._run_id

    @property
    def name(self) -> str | None:
        return self._experiment_id

    @property
    def save_dir(self) -> str:
        return self._run_dir

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Log params whose keys the run does not have yet; report changed values (no error)."""
        if self.disabled or not params:
            return
        from mlflow.entities import Param

        try:
            run_id = self.run_id
            if run_id is None:
                return
            params = flatten(params if isinstance(params, Mapping) else vars(params))
            existing = self.experiment.get_run(run_id).data.params
            changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
            if changed:
                log.warning(
                    "MLflow run %s keeps its original values of %d changed params (e.g. %s)",
                    run_id,
                    len(changed),
                    ", ".join(changed[:5]),
                )
            new = [Param(k, v) for k, v in params.items() if k not in existing]
            for i in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
                self.experiment.log_batch(run_id=run_id, params=new[i : i + 100])
        except Exception as e:
            self._fail("logging params", e)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.disabled:
            return
        try:
            super().log_metrics(metrics, step)
        except Exception as e:
            self._fail("logging metrics", e)

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.disabled:
            return
        try:
            run_id = self.run_id
            if run_id is not None:
                for key, value in tags.items():
                    self.experiment.set_tag(run_id, key, str(value))
        except Exception as e:
            self._fail("setting tags", e)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self.disabled:
            return
        try:
            super().finalize(status)
        except Exception as e:
            self._fail("closing the run", e)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self.disabled:
            return
        try:
            super().after_save_checkpoint(checkpoint_callback)
        except Exception as e:
            self._fail("recording a checkpoint", e)


class TrackingCallback(pl.Callback):
    """Tags the MLflow run, hands its id to the module and records it in ``run.json``.

    Args:
        run_dir: the run's folder (``<root>/<experiment>/<run_name>``).
        checkpoint_dir: where ``ModelCheckpoint`` writes (tag ``salt.checkpoint_dir``).
        experiment: MLflow experiment name.
        tracking_uri: store URI, or None when tracking is off.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        checkpoint_dir: str | os.PathLike,
        experiment: str,
        tracking_uri: str | None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.experiment = experiment
        self.tracking_uri = tracking_uri

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run_id = None
        for logger in trainer.loggers:
            if isinstance(logger, SaltMLflowLogger):
                tags = {
                    "salt.kind": "train",
                    "salt.checkpoint_dir": str(self.checkpoint_dir.resolve()),
                    "salt.run_dir": str(self.run_dir.resolve()),
                    **getattr(pl_module, "tracking_tags", dict)(),
                }
                logger.set_tags(tags)
                run_id = logger.run_id
        if hasattr(pl_module, "mlflow_run_id"):
            pl_module.mlflow_run_id = run_id
        if trainer.is_global_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            info = {
                "experiment": self.experiment,
                "run_name": self.run_dir.name,
                "tracking_uri": self.tracking_uri,
                "mlflow_run_id": run_id or read_run_file(self.run_dir).get("mlflow_run_id"),
                "checkpoint_dir": str(self.checkpoint_dir.resolve()),
            }
            (self.run_dir / RUN_FILE).write_text(json.dumps(info, indent=2) + "\n")
