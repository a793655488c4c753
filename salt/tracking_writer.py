"""Background writes to an MLflow store that survive the store going away.

Training never waits for the store: ``log_metrics`` / ``log_params`` / ``set_tags`` /
``log_artifact`` / ``terminate`` only append an operation to an in-memory queue. One daemon thread
sends the queue every ``flush_every_s`` seconds (metrics batched, ≤ 1000 per request, timestamps
taken when the value was logged, so a re-sent batch is deduplicated by the store's primary key).

When a write fails for a reason that may pass (connection refused, timeout, "database is locked",
5xx, ...), the thread appends that operation and every later one, in order, to the *spool*: an
append-only JSON-lines file in the run folder (``tracking-spool.jsonl``, one operation per line,
fsynced). It retries after a backoff (``first_backoff_s`` doubling up to ``max_backoff_s``); while
the store is down new operations go straight to the spool. Once a retry gets through, the spool is
replayed from the last replayed byte (kept in ``tracking-spool.offset``) before anything newer, so
the store receives every operation once and in order. ``close`` makes a last attempt (waiting up
to ``final_wait_s`` for the store); whatever is still spooled then is replayed by the next writer
of the same run folder (a requeued or resumed job) or by ``salt-runs sync RUN_DIR``.

An operation the store rejects as invalid (bad value, deleted run) is dropped, counted and warned
about once per kind; retrying it could never succeed. A run that could not be created at start
(store down) is created by the thread when the store comes back (``open_run``); its id is then
handed to ``on_run_id``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from salt.tracking_uri import redact_text, redact_uri

log = logging.getLogger("salt.tracking")

SPOOL_FILE = "tracking-spool.jsonl"
SPOOL_OFFSET_FILE = "tracking-spool.offset"
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
MAX_PARAMS_PER_BATCH = 100
# Error codes for which resending the same operation can never succeed.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE"}


def is_permanent(exc: BaseException) -> bool:
    """Whether the store rejected the operation itself (not a transient outage)."""
    return getattr(exc, "error_code", None) in PERMANENT_ERRORS


def _now_ms() -> int:
    return int(time.time() * 1000)


def coalesce(ops: Iterable[dict]) -> list[dict]:
    """Merge neighbouring metric operations into one (one request instead of one per call)."""
    out: list[dict] = []
    for op in ops:
        if op["op"] == "metrics" and out and out[-1]["op"] == "metrics":
            out[-1] = {"op": "metrics", "rows": out[-1]["rows"] + op["rows"]}
        else:
            out.append(op)
    return out


class TrackingWriter:
    """Queue + background sender + on-disk spool for one MLflow run (see the module docstring).

    Args:
        uri: the tracking store (credentials may be in it; it is never written anywhere).
        run_dir: the run folder that holds the spool.
        run_id: the MLflow run, or None when it is still to be created by ``open_run``.
        open_run: ``client -> run id``: creates (or reopens) the run; called from the thread
            while ``run_id`` is None.
        on_run_id: called with the run id once ``open_run`` succeeded in the thread.
        flush_every_s: seconds between sends of the queue.
        first_backoff_s: wait after the first failed send; doubles per failure.
        max_backoff_s: longest wait between retries while the store is down.
        final_wait_s: how long ``close`` keeps retrying for a store that is down.
    """

    def __init__(
        self,
        uri: str,
        run_dir: str | os.PathLike,
        run_id: str | None,
        *,
        open_run: Callable[[Any], str] | None = None,
        on_run_id: Callable[[str], None] | None = None,
        flush_every_s: float = 5.0,
        first_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        final_wait_s: float = 10.0,
    ) -> None:
        self.uri, self.run_id = uri, run_id
        self.shown_uri = redact_uri(uri)
        self.run_dir = Path(run_dir)
        self.spool_path = self.run_dir / SPOOL_FILE
        self.offset_path = self.run_dir / SPOOL_OFFSET_FILE
        self.open_run, self.on_run_id = open_run, on_run_id
        self.flush_every_s, self.final_wait_s = flush_every_s, final_wait_s
        self.first_backoff_s, self.max_backoff_s = first_backoff_s, max_backoff_s
        self._queue: deque[dict] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._flush_requested = False
        self._busy = False  # the thread is sending what it took off the queue
        self._thread: threading.Thread | None = None
        self._client = None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._through_since: float | None = None
        self._warned: set[str] = set()
        self.stats = {"sent": 0, "spooled": 0, "replayed": 0, "dropped": 0, "outages": 0,
                      "down_since": None, "down_s": 0.0, "back_after_s": None,
                      "last_error": None}  # fmt: skip

    # ----------------------------------------------------------------- producer side (any thread)
    def log_metrics(self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None):
        ts = _now_ms() if timestamp_ms is None else int(timestamp_ms)
        rows = [[str(k), float(v), ts, int(step)] for k, v in metrics.items()]
        if rows:
            self._put({"op": "metrics", "rows": rows})

    def log_params(self, params: Mapping[str, str]) -> None:
        if params:
            self._put({"op": "params", "params": {str(k): str(v) for k, v in params.items()}})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if tags:
            self._put({"op": "tags", "tags": {str(k): str(v) for k, v in tags.items()}})

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload ``local_path`` (as it is when the operation is sent) into the run's artifacts."""
        self._put({"op": "artifact", "path": str(Path(local_path).resolve()), "dir": artifact_path})

    def terminate(self, status: str = "FINISHED") -> None:
        self._put({"op": "terminate", "status": status, "end_time": _now_ms()})

    def _put(self, op: dict) -> None:
        with self._cv:
            self._queue.append(op)
            self._cv.notify()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> TrackingWriter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="salt-tracking", daemon=True)
            self._thread.start()
        return self

    def flush(self, timeout: float = 30.0) -> bool:
        """Send everything queued now (blocking up to ``timeout``); True if nothing is left."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._flush_requested = True
            self._cv.notify()
        while time.monotonic() < deadline:
            with self._cv:
                idle = not self._queue and not self._busy
            if idle and not self.pending_spool():
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        """Last send (retrying up to ``final_wait_s``), then stop the thread."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(self.final_wait_s + 120.0)  # bounded even if a request hangs
            self._thread = None
        else:  # never started: spool what is queued so nothing is lost
            self._spool(list(self._queue))
            self._queue.clear()

    # ----------------------------------------------------------------- the thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(
                    lambda: self._closing or self._flush_requested,
                    timeout=self.flush_every_s,
                )
                closing = self._closing
                self._flush_requested = False
                ops = coalesce(self._queue)
                self._queue.clear()
                self._busy = True
            try:
                self._process(ops)
                if closing:
                    self._finish()
                    return
            except Exception as e:  # never let the thread die with operations unspooled
                log.warning("MLflow writer error (%s: %s)", type(e).__name__, e)
            finally:
                with self._cv:
                    self._busy = False

    def _process(self, ops: list[dict]) -> None:
        """Send ``ops`` after any spooled backlog; spool them if the store is (still) down."""
        if (self.pending_spool() or self.run_id is None) and not self._try_recover():
            self._spool(ops)
            return
        for i, op in enumerate(ops):
            if not self._attempt(op):
                self._spool(ops[i:])
                return

    def _finish(self) -> None:
        """At close: retry a down store for up to ``final_wait_s``, then leave the spool."""
        deadline = time.monotonic() + self.final_wait_s
        while self.pending_spool() or self.run_id is None:
            self._retry_at = 0.0
            if self._try_recover() or time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        if self.pending_spool():
            log.warning(
                "MLflow store %s still unreachable at the end: %d operation(s) stay in %s; the "
                "next start of this run replays them (or: salt-runs sync %s)",
                self.shown_uri,
                self.spool_backlog(),
                self.spool_path,
                self.run_dir,
            )

    def _try_recover(self) -> bool:
        """Open the run if needed and replay the spool; False while the store is down."""
        if time.monotonic() < self._retry_at:
            return False
        try:
            if self.run_id is None:
                if self.open_run is None:
                    return False
                self.run_id = self.open_run(self._get_client())
                self._first_through()
                if self.on_run_id is not None:
                    self.on_run_id(self.run_id)
            self._replay()
        except Exception as e:
            self._down(e)
            return False
        self._up()
        return True

    def _attempt(self, op: dict) -> bool:
        """Send one operation; False (and backoff) on a transient failure."""
        try:
            self._send(op)
        except Exception as e:
            if is_permanent(e):
                self._drop(op, e)
                return True
            self._down(e)
            return False
        self.stats["sent"] += 1
        self._up()
        return True

    # ----------------------------------------------------------------- store state
    def _down(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._backoff = min(self.max_backoff_s, max(self.first_backoff_s, 2 * self._backoff))
        self._retry_at = now + self._backoff
        self.stats["last_error"] = redact_text(f"{type(exc).__name__}: {exc}")[:300]
        if self.stats["down_since"] is None:
            self.stats["down_since"] = now
            self.stats["outages"] += 1
            log.warning(
                "MLflow store %s unreachable (%s); training goes on, metrics are spooled to %s "
                "and replayed when it is back (retry every <= %.0f s)",
                self.shown_uri,
                self.stats["last_error"],
                self.spool_path,
                self.max_backoff_s,
            )

    def _first_through(self) -> None:
        """Record when the first write got through after the store went away."""
        since = self.stats["down_since"]
        if since is not None and self._through_since != since:
            self._through_since = since
            self.stats["back_after_s"] = round(time.monotonic() - since, 1)

    def _up(self) -> None:
        since = self.stats["down_since"]
        if since is not None:
            self.stats["down_s"] += time.monotonic() - since
            self.stats["down_since"] = None
            log.warning(
                "MLflow store %s reachable again (first write through %s s after it went away); "
                "spool replayed %.0f s after it went away",
                self.shown_uri,
                self.stats["back_after_s"],
                time.monotonic() - since,
            )
        self._backoff = 0.0

    def _drop(self, op: dict, exc: BaseException) -> None:
        self.stats["dropped"] += 1
        kind = f"{op['op']}:{getattr(exc, 'error_code', '')}"
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(
                "MLflow store rejected a %s operation, dropped: %s", op["op"], redact_text(str(exc))
            )

    # ----------------------------------------------------------------- spool
    def _spool(self, ops: list[dict]) -> None:
        if not ops:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.spool_path, "a") as f:
            for op in ops:
                f.write(json.dumps({**op, "store": self.shown_uri}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.stats["spooled"] += len(ops)

    def _offset(self) -> int:
        try:
            return int(self.offset_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _set_offset(self, offset: int) -> None:
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        tmp.write_text(f"{offset}\n")
        os.replace(tmp, self.offset_path)

    def pending_spool(self) -> bool:
        """Whether the spool holds operations not yet replayed."""
        try:
            return self.spool_path.stat().st_size > self._offset()
        except OSError:
            return False

    def spool_backlog(self) -> int:
        """Number of spooled operations not yet replayed."""
        if not self.pending_spool():
            return 0
        with open(self.spool_path, "rb") as f:
            f.seek(self._offset())
            return sum(1 for line in f if line.strip())

    def _replay(self) -> None:
        """Send spooled operations from the replay offset on; raise on a transient failure."""
        if not self.pending_spool():
            return
        offset = self._offset()
        with open(self.spool_path, "rb") as f:
            f.seek(offset)
            for line in f:
                offset += len(line)
                if not line.strip():
                    continue
                try:
                    op = json.loads(line)
                except ValueError:  # a line cut by a crash mid-write: nothing to send
                    self._set_offset(offset)
                    continue
                try:
                    self._send(op)
                    self._first_through()
                except Exception as e:
                    if not is_permanent(e):
                        raise
                    self._drop(op, e)
                self._set_offset(offset)
                self.stats["replayed"] += 1

    # ----------------------------------------------------------------- MLflow calls
    def _get_client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _send(self, op: dict) -> None:
        client, run_id = self._get_client(), self.run_id
        kind = op["op"]
        if kind == "metrics":
            from mlflow.entities import Metric

            rows = op["rows"]
            for i in range(0, len(rows), MAX_METRICS_PER_BATCH):
                batch = [
                    Metric(k, v, ts, step) for k, v, ts, step in rows[i : i + MAX_METRICS_PER_BATCH]
                ]
                client.log_batch(run_id, metrics=batch)
        elif kind == "params":
            self._send_params(client, run_id, op["params"])
        elif kind == "tags":
            from mlflow.entities import RunTag

            tags = [RunTag(k, v) for k, v in op["tags"].items()]
            for i in range(0, len(tags), MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, tags=tags[i : i + MAX_PARAMS_PER_BATCH])
        elif kind == "artifact":
            if Path(op["path"]).is_file():
                client.log_artifact(run_id, op["path"], artifact_path=op.get("dir"))
        elif kind == "terminate":
            client.set_terminated(run_id, op["status"], end_time=op.get("end_time"))
        elif kind == "running":  # a resumed run, reopened after the store was down at start
            client.update_run(run_id, status="RUNNING")
        else:
            raise ValueError(f"unknown tracking operation {kind!r}")

    def _send_params(self, client: Any, run_id: str, params: dict[str, str]) -> None:
        """Params the run does not have yet (MLflow refuses to change one); changes reported."""
        from mlflow.entities import Param

        existing = client.get_run(run_id).data.params
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            log.warning(
                "MLflow run %s keeps its original values of %d changed params (e.g. %s)",
                run_id,
                len(changed),
                ", ".join(changed[:5]),
            )
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=new[i : i + MAX_PARAMS_PER_BATCH])
