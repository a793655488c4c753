"""The MLflow store unreachable in the middle of a real ``salt fit``: what happens, what is lost.

A real ``mlflow server`` (sqlite backend, uvicorn) on 127.0.0.1 is stopped at step ``--kill-at``
of a real ``salt fit`` (``vit_test``, synthetic H.264 shards, CPU) and started again
``--outage-s`` seconds later; training goes on throughout and stops ``--after-s`` seconds after
the server answers again. Then the store is read back and compared with what training logged
(``train/loss`` at every step, params, tags, the ``config.yaml`` artifact, the run status) and one
row of the fault table is printed::

    python benchmarks/tracking_outage.py --outage-s 60          # the figure (about 3-4 min)
    python benchmarks/tracking_outage.py --outage-s 3 --after-s 5 --max-backoff-s 2   # smoke

The writer's settings come from the environment like in any run (``SALT_TRACKING_FLUSH_S``,
``SALT_TRACKING_MAX_BACKOFF_S``); ``--max-backoff-s`` sets the latter for this run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytorch_lightning as pl

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 in its own process group (stopped by that group's id).

    Args:
        db: the sqlite file of its backend store.
        port: TCP port on 127.0.0.1.
        log: file that collects the server's output.
    """

    def __init__(self, db: Path, port: int, log: Path) -> None:
        self.db, self.port, self.log = db, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait until ``/health`` answers; returns the seconds that took."""
        t0 = time.monotonic()
        mlflow = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.db}",
               "--default-artifact-root", (self.db.parent / "artifacts").as_uri(),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]  # fmt: skip
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"mlflow server not healthy after {timeout} s; see {self.log}")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 20 s."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the server's pid
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        self.proc = None


class OutageInjector(pl.Callback):
    """Stops the server at step ``kill_at``, restarts it ``outage_s`` later (in a thread, so the
    loop keeps training), and ends training ``after_s`` seconds after it answers again."""

    def __init__(self, server: MlflowServer, kill_at: int, outage_s: float, after_s: float):
        self.server, self.kill_at, self.outage_s, self.after_s = server, kill_at, outage_s, after_s
        self.events: dict[str, float | int] = {}
        self._t0 = time.monotonic()
        self._thread: threading.Thread | None = None
        self._step = 0
        self._last_end: float | None = None
        self.step_s: dict[str, list[float]] = {"before": [], "down": [], "after": []}

    def _restart(self) -> None:
        time.sleep(self.outage_s)
        self.events["restart_step"] = self._step
        self.events["restart_s"] = round(self.server.start(), 1)
        self.events["up_at_s"] = time.monotonic() - self._t0
        self.events["up_step"] = self._step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        self._step = step = trainer.global_step
        now = time.perf_counter()
        if self._last_end is not None:
            phase = ("before" if "down_step" not in self.events
                     else "down" if "up_at_s" not in self.events else "after")  # fmt: skip
            self.step_s[phase].append(now - self._last_end)
        self._last_end = now
        if step == self.kill_at and "down_step" not in self.events:
            self.server.stop()
            self._last_end = time.perf_counter()  # the stop itself is not a training step
            self.events["down_step"] = step
            self.events["down_at_s"] = time.monotonic() - self._t0
            if self.outage_s >= 0:
                self._thread = threading.Thread(target=self._restart, daemon=True)
                self._thread.start()
        up = self.events.get("up_at_s")
        if up is not None and time.monotonic() - self._t0 >= up + self.after_s:
            trainer.should_stop = True


def fit_args(root: Path, shards: str, uri: str, max_steps: int, log_every: int) -> list[str]:
    return [
        "fit", "-c", str(REPO / "configs" / "demo" / "teacher.yaml"),
        f"--trainer.default_root_dir={root}", f"--data.train_shards={shards}",
        "--data.crop_size=32", "--data.batch_size=4", "--data.num_workers=0",
        '--model.init_args.encoder_kwargs={"patch_size": 8}', "--model.init_args.warmup_steps=1",
        f"--trainer.max_steps={max_steps}", "--checkpoint_every=1000000",
        f"--trainer.log_every_n_steps={log_every}", "--trainer.enable_progress_bar=false",
        "--progress_every=100", "--experiment=outage", "--run_name=r", f"--tracking_uri={uri}",
    ]  # fmt: skip


def run_fit(args: list[str], callbacks: list[pl.Callback]) -> pl.Trainer:
    """``salt fit`` in-process with extra callbacks (the injector)."""
    import torch

    from salt.fit_cli import SaltCLI

    torch.set_num_threads(1)
    defaults = {"default_root_dir": "runs", "precision": "bf16-mixed", "callbacks": callbacks}
    return SaltCLI(args=args, trainer_defaults=defaults).trainer


def lost_metrics(uri: str, run_id: str, last_step: int, log_every: int) -> dict:
    """What the store holds of ``train/loss`` compared with the steps training logged."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    have = {m.step for m in client.get_metric_history(run_id, "train/loss")}
    expected = {s for s in range(last_step) if (s + 1) % log_every == 0}
    run = client.get_run(run_id)
    return {
        "expected": len(expected),
        "stored": len(have & expected),
        "missing_steps": sorted(expected - have)[:20],
        "status": run.info.status,
        "params": len(run.data.params),
        "tags": sorted(k for k in run.data.tags if k.startswith("salt.")),
        "artifacts": [a.path for a in client.list_artifacts(run_id)],
    }


def _spread(values: list[float]) -> dict[str, float]:
    """Median and max of step times (seconds)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {
        "n": len(values),
        "median": round(ordered[len(values) // 2], 4),
        "max": round(ordered[-1], 4),
    }


def run_outage(
    workdir: Path, outage_s: float, after_s: float, kill_at: int = 5, log_every: int = 1,
    max_steps: int = 100_000,
) -> dict:  # fmt: skip
    """Start a server, fit through an outage, read the store back; returns the findings."""
    from salt.data.synthetic import write_synthetic_shards

    workdir.mkdir(parents=True, exist_ok=True)
    shards = workdir / "shards"
    if not (shards / "synthetic.json").is_file():
        write_synthetic_shards(
            str(shards), num_train=32, num_val=4, num_probe_train=4, frames=16, size=32
        )
    server = MlflowServer(workdir / "mlflow.db", free_port(), workdir / "server.log")
    first_start = server.start()
    injector = OutageInjector(server, kill_at, outage_s, after_s)
    t0 = time.monotonic()
    try:
        trainer = run_fit(
            fit_args(
                workdir / "runs", str(shards / "train-*.tar"), server.url, max_steps, log_every
            ),
            [injector],
        )
        wall = time.monotonic() - t0
        logger = trainer.loggers[0]
        stats = logger.tracking_stats()
        found = lost_metrics(server.url, logger.version, trainer.global_step, log_every)
    finally:
        server.stop()
    run_dir = workdir / "runs" / "outage" / "r"
    spool = run_dir / "tracking-spool.jsonl"
    return {
        "outage_s": outage_s,
        "server_first_start_s": round(first_start, 1),
        **injector.events,
        "step_s": {k: _spread(v) for k, v in injector.step_s.items()},
        "final_step": trainer.global_step,
        "fit_wall_s": round(wall, 1),
        "writer": {k: v for k, v in stats.items() if k != "down_since"},
        "spool_lines": sum(1 for _ in open(spool)) if spool.is_file() else 0,
        "store": found,
    }


def table_row(r: dict) -> str:
    """The fault-table row: fault | what happened | what was lost."""
    w, s = r["writer"], r["store"]
    lost = s["expected"] - s["stored"]
    down, before = r["step_s"]["down"], r["step_s"]["before"]
    back = r["up_at_s"] - r["down_at_s"]
    happened = (
        f"server answered again {back:.0f} s after it stopped (its restart took "
        f"{r['restart_s']:.0f} s); "
        f"training went on: steps {r['down_step']}→{r['up_step']} ran while it was down "
        f"(median step {down.get('median', 0):.3f} s, max {down.get('max', 0):.3f} s; before "
        f"the outage {before.get('median', 0):.3f} / {before.get('max', 0):.3f} s); "
        f"{w['spooled']} operation(s) spooled to the run folder; the first retry to get through "
        f"came {w['back_after_s']} s after the outage began and the spool ({w['replayed']} "
        f"replayed) was clear {w['down_s']:.0f} s after it; run {s['status']}"
    )
    return (
        f"tracking store unreachable {r['outage_s']:.0f} s mid-run | {happened} | "
        f"{lost} of {s['expected']} train/loss points lost"
        + (f" (steps {s['missing_steps']})" if lost else "")
        + f"; params {s['params']}, config artifact {'config.yaml' in s['artifacts']}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--outage-s", type=float, default=60.0)
    p.add_argument("--after-s", type=float, default=75.0, help="training after the store is back")
    p.add_argument("--kill-at", type=int, default=5)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--max-backoff-s", type=float, default=None)
    p.add_argument("--workdir", default=None, help="default: a temporary folder")
    p.add_argument("--json", help="also write the findings here")
    args = p.parse_args()
    if args.max_backoff_s is not None:
        os.environ["SALT_TRACKING_MAX_BACKOFF_S"] = str(args.max_backoff_s)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_outage(
            Path(args.workdir or tmp), args.outage_s, args.after_s, args.kill_at, args.log_every
        )
    print(json.dumps(result, indent=2))
    print(table_row(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
