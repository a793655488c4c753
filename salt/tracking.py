"""MLflow tracking for ``salt fit``: a sqlite store by default, and never a reason to stop training.

- Store: ``sqlite:///<root>/mlflow.db`` with artifacts in ``<root>/mlartifacts`` (root =
  ``trainer.default_root_dir``); ``--tracking_uri`` or ``MLFLOW_TRACKING_URI`` point elsewhere
  (``salt.tracking_uri``). Every URI salt writes down is redacted (no credentials).
- ``SaltMLflowLogger``: a Lightning logger whose writes go through a ``TrackingWriter`` (a queue
  sent by a background thread; retried with backoff and spooled to the run folder while the store
  is unreachable, replayed when it is back), so no training step waits on the store. The run is
  created (or, on resume, reopened) when the logger is first used; if the store is down then, the
  writer creates it later and the id reaches ``run.json`` and the checkpoints from then on.
  Parameters are logged once per key (a resumed run keeps its params; changed values are
  reported, not fatal).
- ``TrackingCallback``: tags (``salt.kind``, ``salt.stage``, teacher, paths, and
  ``salt.run_tags.environment_tags``: git commit, Slurm job, attempt, world size, global batch,
  precision), the resolved ``config.yaml`` as an artifact, system metrics on global rank 0 when
  enabled (``salt.system_metrics``), the run id for the module (stored in checkpoint metadata)
  and ``<run_dir>/run.json`` so a resumed job logs into the same MLflow run. Paths are recorded
  relative to the store's folder / the run folder as well (``salt.run_relpath``), so moving a
  whole ``runs/`` folder keeps ``salt-runs`` working.

Writer timings come from the environment (seconds): ``SALT_TRACKING_FLUSH_S`` (5),
``SALT_TRACKING_MAX_BACKOFF_S`` (60), ``SALT_TRACKING_FINAL_WAIT_S`` (10).

mlflow itself is imported lazily (only when a run is opened): the GPU machines that run the step
benchmark have no mlflow, and ``salt.step`` / ``salt.student`` never import this module.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from salt.tracking_uri import (  # noqa: F401  (re-exported: the public names of this module)
    default_tracking_uri,
    is_remote,
    redact_text,
    redact_uri,
    relative_to,
    resolve_tracking_uri,
    store_dir,
)
from salt.tracking_writer import TrackingWriter, is_permanent

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 500
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")


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


def write_run_file(run_dir: str | os.PathLike, info: Mapping[str, Any]) -> None:
    """Write ``run.json`` atomically (a reader never sees half a file)."""
    path = Path(run_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RUN_FILE}.tmp")
    tmp.write_text(json.dumps(dict(info), indent=2) + "\n")
    os.replace(tmp, path)


def _env_s(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another job
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class SaltMLflowLogger(Logger):
    """Lightning logger for one MLflow run, written in the background (see the module docstring).

    Args:
        experiment_name: MLflow experiment (created with ``artifact_location`` if new).
        run_name: MLflow run name (the run folder's name).
        tracking_uri: store URI (see ``resolve_tracking_uri``).
        run_dir: the run's folder (``save_dir``; holds the spool while the store is down).
        artifact_location: artifact root for a new experiment (None: the store's default).
        run_id: continue this MLflow run (resume) instead of starting one.
        open_attempts: tries to reach the store when the run is opened before training goes on
            without it (1 s, 2 s, ... apart).
    """

    def __init__(
        self,
        experiment_name: str,
        run_name: str,
        tracking_uri: str,
        run_dir: str | os.PathLike,
        artifact_location: str | None = None,
        run_id: str | None = None,
        open_attempts: int = 3,
    ) -> None:
        super().__init__()
        if is_remote(tracking_uri):
            # MLflow retries an unreachable server for minutes by default; the writer's own
            # backoff and spool take over after a few seconds instead.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            # MLflow prints the run's URL (from the URI, credentials and all) when it ends; the
            # summary of salt fit prints a redacted one.
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self._experiment_name, self._run_name = experiment_name, run_name
        self._tracking_uri, self.shown_uri = tracking_uri, redact_uri(tracking_uri)
        self._run_dir = Path(run_dir)
        self._artifact_location = artifact_location
        self._run_id = run_id
        self._resumed = run_id is not None
        self.open_attempts = max(1, int(open_attempts))
        self._client = None
        self._writer: TrackingWriter | None = None
        self._listeners: list[Callable[[str], None]] = []
        self.disabled = False  # kept for callers of the earlier API: tracking never turns off

    # ----------------------------------------------------------------- opening the run
    def _open_run(self, client: Any) -> str:
        """Create the run, or mark a resumed one RUNNING again; returns its id."""
        if self._run_id is not None:
            try:
                client.update_run(self._run_id, status="RUNNING")
                return self._run_id
            except Exception as e:
                if not is_permanent(e):
                    raise
                log.warning(
                    "MLflow run %s of run.json is not in %s (%s); starting a new run",
                    self._run_id,
                    self.shown_uri,
                    redact_text(str(e)),
                )
                self._run_id = None
        exp_id = _experiment_id(client, self._experiment_name, self._artifact_location)
        run = client.create_run(exp_id, run_name=self._run_name)
        return run.info.run_id

    def _adopt(self, run_id: str) -> None:
        """The writer created the run after an outage at start: tell everyone who asked."""
        self._run_id = run_id
        log.warning("MLflow run %s created at %s after the store came back", run_id, self.shown_uri)
        for listener in self._listeners:
            listener(run_id)

    def on_run_id(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(run_id)`` if the run gets created later by the background writer."""
        self._listeners.append(listener)

    def open(self) -> str | None:
        """Open the run now (a few short retries) and start the writer; returns the run id, or
        None while the store is unreachable (the writer keeps trying and spools meanwhile)."""
        if self._writer is not None:
            return self._run_id
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=self._tracking_uri)
        run_id, error = None, None
        for attempt in range(self.open_attempts):
            try:
                run_id = self._open_run(self._client)
                break
            except Exception as e:
                error = e
                if is_permanent(e) or attempt + 1 == self.open_attempts:
                    break
                time.sleep(2.0**attempt)
        if run_id is None and self._run_id is not None and not is_permanent(error):
            run_id = self._run_id  # resumed run, store down: reopen it when it is back
        if run_id is None:
            log.warning(
                "MLflow store %s unreachable when opening run %r (%s: %s); training goes on, "
                "metrics are spooled to %s and the run is created when the store is back",
                self.shown_uri,
                self._run_name,
                type(error).__name__,
                redact_text(str(error)),
                self._run_dir,
            )
        self._run_id = run_id
        self._writer = TrackingWriter(
            self._tracking_uri,
            self._run_dir,
            run_id,
            open_run=self._open_run,
            on_run_id=self._adopt,
            flush_every_s=_env_s("SALT_TRACKING_FLUSH_S", 5.0),
            max_backoff_s=_env_s("SALT_TRACKING_MAX_BACKOFF_S", 60.0),
            final_wait_s=_env_s("SALT_TRACKING_FINAL_WAIT_S", 10.0),
        ).start()
        if error is not None and run_id is not None:
            self._writer._put({"op": "running"})  # the status update that did not get through
        return run_id

    def _w(self) -> TrackingWriter:
        if self._writer is None:
            self.open()
        return self._writer

    # ----------------------------------------------------------------- Logger API
    @property
    def experiment(self) -> Any:
        """The ``MlflowClient`` of the store (the run is opened first)."""
        self._w()
        return self._client

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (None while the store has been unreachable since the start)."""
        self._w()
        return self._run_id

    @property
    def writer(self) -> TrackingWriter:
        return self._w()

    @property
    def name(self) -> str:
        return self._experiment_name

    @property
    def version(self) -> str | None:
        return self._run_id

    @property
    def save_dir(self) -> str:
        return str(self._run_dir)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Log params whose keys the run does not have yet; report changed values (no error)."""
        if params:
            params = params if isinstance(params, Mapping) else vars(params)
            self._w().log_params(flatten(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {_BAD_KEY_CHARS.sub("_", k): float(v) for k, v in metrics.items()}
        self._w().log_metrics(clean, step=0 if step is None else int(step))

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._w().set_tags(tags)

    @rank_zero_only
    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._w().log_artifact(local_path, artifact_path)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Mark the run finished and send everything (waiting a little for a store that is down;
        what is left stays in the spool for the next start)."""
        if self._writer is None:
            return
        self._writer.terminate(_STATUS.get(status, "FINISHED"))
        self._writer.close()
        self.last_stats = {**self._writer.stats, "backlog": self._writer.spool_backlog()}
        self.spool_path = self._writer.spool_path
        self._writer = None  # a later log call (another fit) reopens the run

    def tracking_stats(self) -> dict[str, Any]:
        """Writer counters (sent / spooled / replayed / dropped / outages / backlog)."""
        if self._writer is not None:
            return {**self._writer.stats, "backlog": self._writer.spool_backlog()}
        return dict(getattr(self, "last_stats", {}))


class TrackingCallback(pl.Callback):
    """Tags the MLflow run, logs the config, hands the run id to the module, writes ``run.json``.

    Args:
        run_dir: the run's folder (``<root>/<experiment>/<run_name>``).
        checkpoint_dir: where ``ModelCheckpoint`` writes (tag ``salt.checkpoint_dir``).
        experiment: MLflow experiment name.
        tracking_uri: store URI, or None when tracking is off.
        system_metrics: sample ``system/*`` metrics on global rank 0 (``salt.system_metrics``).
        system_metrics_every_s: seconds between samples.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        checkpoint_dir: str | os.PathLike,
        experiment: str,
        tracking_uri: str | None,
        system_metrics: bool = False,
        system_metrics_every_s: float = 10.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.experiment = experiment
        self.tracking_uri = tracking_uri
        self.system_metrics = system_metrics
        self.system_metrics_every_s = system_metrics_every_s
        self._sampler = None
        self._step = 0

    def _loggers(self, trainer: pl.Trainer) -> list[SaltMLflowLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, SaltMLflowLogger)]

    def run_info(self, run_id: str | None) -> dict[str, Any]:
        """The content of ``run.json`` (no credentials; paths relative where possible)."""
        return {
            "experiment": self.experiment,
            "run_name": self.run_dir.name,
            "tracking_uri": redact_uri(self.tracking_uri),
            "mlflow_run_id": run_id or read_run_file(self.run_dir).get("mlflow_run_id"),
            "checkpoint_dir": relative_to(self.checkpoint_dir, self.run_dir)
            or str(self.checkpoint_dir.resolve()),
            "run_relpath": relative_to(self.run_dir, store_dir(self.tracking_uri)),
        }

    def tags(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, str]:
        from salt.run_tags import environment_tags

        tags = {
            "salt.kind": "train",
            "salt.checkpoint_dir": str(self.checkpoint_dir.resolve()),
            "salt.run_dir": str(self.run_dir.resolve()),
            **environment_tags(trainer),
            **getattr(pl_module, "tracking_tags", dict)(),
        }
        rel = relative_to(self.run_dir, store_dir(self.tracking_uri))
        if rel is not None:
            tags["salt.run_relpath"] = rel
        return tags

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run_id = None
        for logger in self._loggers(trainer):
            run_id = logger.open()
            logger.set_tags(self.tags(trainer, pl_module))
            config = self.run_dir / CONFIG_FILE
            if config.is_file():
                logger.log_artifact(config)
            logger.on_run_id(lambda rid, m=pl_module: self._adopt(trainer, m, rid))
            if self.system_metrics and trainer.is_global_zero and self._sampler is None:
                from salt.system_metrics import SystemMetrics

                every = self.system_metrics_every_s
                self._sampler = SystemMetrics(logger.writer, lambda: self._step, every).start()
        if hasattr(pl_module, "mlflow_run_id"):
            pl_module.mlflow_run_id = run_id
        if trainer.is_global_zero:
            write_run_file(self.run_dir, self.run_info(run_id))

    def _adopt(self, trainer: pl.Trainer, pl_module: pl.LightningModule, run_id: str) -> None:
        if hasattr(pl_module, "mlflow_run_id"):
            pl_module.mlflow_run_id = run_id  # checkpoints written from now on carry it
        write_run_file(self.run_dir, self.run_info(run_id))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from salt.run_tags import attempt_metrics

        self._step = trainer.global_step
        metrics = attempt_metrics()
        if metrics:
            for logger in self._loggers(trainer):
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._step = trainer.global_step

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None


def replay_spool(run_dir: str | os.PathLike, tracking_uri: str | None = None) -> dict[str, Any]:
    """Send what a run folder's spool still holds (``salt-runs sync``); returns the counters.

    Args:
        run_dir: the run folder (its ``run.json`` names the run and the store).
        tracking_uri: the store, when ``run.json``'s (redacted) URI lacks credentials or moved.
    """
    info = read_run_file(run_dir)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or info.get("tracking_uri")
    if not uri:
        from salt.errors import UsageError

        raise UsageError(f"{run_dir}: no run.json with a tracking_uri; pass --tracking-uri")
    logger = SaltMLflowLogger(
        info.get("experiment", "salt"),
        info.get("run_name", Path(run_dir).name),
        uri,
        run_dir,
        run_id=info.get("mlflow_run_id"),
        open_attempts=1,
    )
    known = info.get("mlflow_run_id")
    open_run = (lambda client: known) if known else logger._open_run
    writer = TrackingWriter(uri, run_dir, None, open_run=open_run, final_wait_s=0.0)
    before = writer.spool_backlog()
    ok = writer._try_recover()
    run_id = writer.run_id
    if run_id and run_id != info.get("mlflow_run_id"):
        write_run_file(run_dir, {**info, "mlflow_run_id": run_id})
    return {"run_id": run_id, "replayed": writer.stats["replayed"], "backlog_before": before,
            "backlog": writer.spool_backlog(), "ok": ok, "error": writer.stats["last_error"]}  # fmt: skip
