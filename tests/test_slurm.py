"""slurm/train.sbatch on a real Slurm (single node, see .ci/slurm-up): a 2-task CPU DDP job (gloo)
that finishes, a job interrupted twice that resumes each time into the same run, and the faults
of a cluster (injected by tests/faults.py callbacks): one rank SIGKILLed mid-step (retried, resumed),
a hanging rank (reported, retried a bounded number of times), SIGUSR1 during a save (nothing
lost), a failing `scontrol requeue` (the job FAILS instead of COMPLETING), and a new job pointed at
an existing run folder (refused, not retried).

Skipped where `sbatch` is absent; with SALT_REQUIRE_SLURM=1 (CI) a missing Slurm is a failure.
Each job writes under the test's tmp dir: its Slurm log, the run folder and the MLflow sqlite store.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo" / "teacher.yaml"
POLL_S = 0.5


def _require_slurm() -> None:
    why = None
    if shutil.which("sbatch") is None:
        why = "sbatch not on PATH"
    elif subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode != 0:
        why = "sinfo fails: no reachable slurmctld"
    if why is None:
        return
    if os.environ.get("SALT_REQUIRE_SLURM") == "1":
        pytest.fail(f"SALT_REQUIRE_SLURM=1 but {why} (run .ci/slurm-up)")
    pytest.skip(f"no Slurm: {why}")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    _require_slurm()
    from salt.data.synthetic import write_synthetic_shards

    out = tmp_path_factory.mktemp("slurm_shards")
    info = write_synthetic_shards(
        str(out), num_train=32, num_val=4, frames=16, size=64, shard_size=16
    )
    return info["train"]


# --------------------------------------------------------------------------- helpers


def _submit(
    tmp: Path,
    shards: str,
    max_steps: int,
    checkpoint_every: int,
    *extra: str,
    sbatch: tuple[str, ...] = (),
    env_extra: dict[str, str] | None = None,
) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALT_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # our `salt`
    env["PYTHONPATH"] = str(REPO / "tests")  # fault-injection callbacks (tests/faults.py)
    env["OMP_NUM_THREADS"] = "1"
    env.update(env_extra or {})
    cmd = [
        "sbatch", "--parsable", f"--chdir={tmp}", f"--output={tmp}/slurm-%j.out", *sbatch,
        "--job-name=salt-test", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
        "--cpus-per-task=1", "--time=10",
        str(REPO / "slurm" / "train.sbatch"), str(CONFIG),
        f"--data.train_shards={shards}", "--data.batch_size=2", "--data.num_workers=1",
        f"--trainer.max_steps={max_steps}", "--model.init_args.warmup_steps=2",
        f"--checkpoint_every={checkpoint_every}", f"--trainer.default_root_dir={tmp}/runs",
        "--run_name=null", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
        *extra,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def _job(job: str) -> dict[str, str]:
    """`scontrol show job` as a dict ({} once Slurm has forgotten the job)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True)
    if out.returncode != 0:
        return {}
    return dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)


def _wait(what: str, cond, job: str, log: Path, timeout: float = 150.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = cond()
        if value:
            return value
        state = _job(job).get("JobState")
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        time.sleep(POLL_S)
    text = log.read_text() if log.exists() else "(no log)"
    subprocess.run(["scancel", job])
    pytest.fail(
        f"timed out / job ended waiting for {what}: {_job(job)}\n--- log ---\n{text[-6000:]}"
    )


def _node_idle() -> bool:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip().startswith("idle")


def _release(job: str, log: Path) -> None:
    """A requeued job waits ~2 minutes (BeginTime); start it now, once its previous instance has
    left the node (started earlier, Slurm kills it: "Job credential revoked")."""
    _wait("requeued job pending", lambda: _job(job).get("JobState") == "PENDING", job, log)
    deadline = time.monotonic() + 30
    while not _node_idle() and time.monotonic() < deadline:
        time.sleep(POLL_S)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


def _finished(job: str) -> bool:
    state = _job(job).get("JobState")
    return state in (None, "COMPLETED")


# the line salt.resume prints at each start: which checkpoint (if any) the attempt resumes
_START_RE = r"\[salt\.resume\] (?:restart \d+: resuming |\S+: )(.*)"


def _run_dir(tmp: Path, job: str) -> Path:
    return tmp / "runs" / "salt-demo" / f"teacher-{job}"


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _mlflow_runs(tmp: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("salt-demo")
    return client.search_runs([exp.experiment_id]), client


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("script", ["train.sbatch", "probe.sbatch"])
def test_sbatch_scripts_usage_errors(script: str, tmp_path: Path) -> None:
    """Without Slurm: the templates are valid bash and refuse bad arguments with a usage line."""
    path = REPO / "slurm" / script
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "usage: sbatch" in out.stderr
    if script == "train.sbatch":
        out = subprocess.run(
            ["bash", str(path), "missing.yaml"], capture_output=True, text=True, cwd=tmp_path
        )
        assert out.returncode == 2 and "config not found: missing.yaml" in out.stderr
    header = path.read_text()
    if script == "train.sbatch":  # the warning goes to the tasks (no B:), and the job requeues
        assert "#SBATCH --signal=SIGUSR1@90\n" in header and "#SBATCH --requeue\n" in header


@pytest.mark.slurm
@pytest.mark.slow
def test_two_task_cpu_ddp_job_completes(tmp_path: Path, shards: str) -> None:
    job = _submit(tmp_path, shards, 4, 2, "--tracking=false")  # MLflow: the requeue test
    log = tmp_path / f"slurm-{job}.out"
    _wait("job completion", lambda: log.exists() and "step finished" in log.read_text(), job, log)
    _wait("job state COMPLETED", lambda: _finished(job), job, log, timeout=30)
    text = log.read_text()

    # both ranks were Slurm tasks of this job in one 2-process gloo DDP group
    for rank in (0, 1):
        line = (
            f"[salt.resume] rank {rank}/2 SLURM_PROCID={rank} job={job} restart=0 attempt=1 "
            "crash_retries=0/3 env=SLURMEnvironment"
        )
        assert line in text, text[-4000:]
    assert "attempt 1 (crash retries used 0/3)" in text
    assert "distributed_backend=gloo" in text
    assert "`Trainer.fit` stopped: `max_steps=4` reached." in text
    assert "none: fresh start" in text
    last = _load(_run_dir(tmp_path, job) / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 4


@pytest.mark.slurm
@pytest.mark.slow
def test_requeued_job_resumes_same_step_and_mlflow_run(tmp_path: Path, shards: str) -> None:
    """Interrupted twice: (1) the Slurm warning signal (what `--signal=SIGUSR1@90` sends before
    the time limit; here via `scancel --signal`): SlurmRequeue checkpoints and requeues itself;
    (2) `scontrol requeue` from outside (preemption-like): resume from the last periodic checkpoint.
    """
    # restart 1 must still be training when the external requeue lands: it has to run
    # ~30 steps past the checkpoint the test reacts to (14 was ~5 steps, 0.7 s: under load the
    # job finished first and restart 2 only reloaded last.ckpt)
    max_steps = 40
    job = _submit(tmp_path, shards, max_steps=max_steps, checkpoint_every=3)
    log = tmp_path / f"slurm-{job}.out"
    ckpts = _run_dir(tmp_path, job) / "checkpoints"
    run_json = _run_dir(tmp_path, job) / "run.json"

    # (1) warning signal once the first periodic checkpoint exists
    _wait("first checkpoint", lambda: (ckpts / "step=0000003.ckpt").exists(), job, log)
    run_id = json.loads(run_json.read_text())["mlflow_run_id"]
    assert run_id
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    saved = _wait(
        "requeue checkpoint",
        lambda: re.search(r"signal 10: saved (\S+)", log.read_text()),
        job,
        log,
    )
    signal_ckpt = Path(saved.group(1))
    signal_step = _load(signal_ckpt)["global_step"]
    assert f"step={signal_step:07d}-requeue" in signal_ckpt.name
    _wait("restart count 1", lambda: _job(job).get("Restarts") == "1", job, log)
    _release(job, log)

    # (2) external requeue once the restarted job wrote a newer periodic checkpoint
    def newer_periodic() -> Path | None:
        steps = [
            int(m.group(1))
            for p in ckpts.glob("step=*.ckpt")
            if (m := re.fullmatch(r"step=(\d+)\.ckpt", p.name))
        ]
        newer = [s for s in steps if s > signal_step]
        return ckpts / f"step={max(newer):07d}.ckpt" if newer else None

    periodic = _wait("checkpoint after the first resume", newer_periodic, job, log)
    time.sleep(0.3)  # let a save that is right behind it land; the resume picks the newest anyway
    subprocess.run(["scontrol", "requeue", job], check=True)
    _wait("restart count 2", lambda: _job(job).get("Restarts") == "2", job, log)
    _release(job, log)

    _wait(
        "completion",
        lambda: log.read_text().count("step finished") >= 1 and _finished(job),
        job,
        log,
        200,
    )
    text = log.read_text()
    reached = f"`Trainer.fit` stopped: `max_steps={max_steps}` reached."
    assert text.count(reached) == 1 and text.index(reached) > text.index("restart 2 attempt"), (
        "restart 1 finished before the external requeue landed: the test raced the job"
    )
    starts = [m.group(1) for m in re.finditer(_START_RE, text)]
    assert len(starts) == 3, starts
    assert starts[0] == "none: fresh start"
    # restart 1 resumed exactly at the signal checkpoint
    assert starts[1] == f"{signal_ckpt} (step {signal_step})", starts
    # restart 2 resumed at the newest checkpoint on disk when it was killed (>= the one we saw)
    m = re.fullmatch(r"(\S+) \(step (\d+)\)", starts[2])
    assert m and int(m.group(2)) >= _load(periodic)["global_step"], starts
    for restart in (1, 2):
        assert f"SLURM_PROCID=0 job={job} restart={restart} attempt={restart + 1} " in text

    # same run folder, same MLflow run across all three attempts
    assert json.loads(run_json.read_text())["mlflow_run_id"] == run_id
    runs, client = _mlflow_runs(tmp_path)
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"
    logged = sorted({m.step for m in client.get_metric_history(run_id, "train/loss")})
    assert logged[-1] >= max_steps - 1 and logged[0] <= 1  # before and after both restarts
    last = _load(ckpts / "last.ckpt")
    assert last["global_step"] == max_steps
    assert last["salt"]["mlflow_run_id"] == run_id
    assert _load(signal_ckpt)["salt"]["mlflow_run_id"] == run_id
    # the data stream was resumed twice (re-seeded per resume; see slurm/README.md)
    dm_state = next(v for k, v in last.items() if isinstance(v, dict) and "resume_count" in v)
    assert dm_state["resume_count"] == 2


# --------------------------------------------------------------------------- faults


def _fault(name: str, **args: object) -> list[str]:
    out = [f"--trainer.callbacks+=faults.{name}"]
    for key, value in args.items():
        out.append(f"--trainer.callbacks.{key}={json.dumps(value)}")
    return out


def _state(job: str) -> tuple[str | None, str | None, str | None]:
    info = _job(job)
    return info.get("JobState"), info.get("ExitCode"), info.get("Restarts")


def _ended(job: str) -> bool:
    return _job(job).get("JobState") in (None, "COMPLETED", "FAILED", "CANCELLED")


@pytest.mark.slurm
@pytest.mark.slow
def test_killed_rank_is_retried_and_resumes_and_reused_folder_is_refused(
    tmp_path: Path, shards: str
) -> None:
    """SIGKILL of rank 1 in the middle of step 5 (attempt 1): srun ends the step, train.sbatch
    requeues the job (crash retry 1/3), the restart resumes the newest checkpoint (step 3) and
    finishes; MLflow records both attempts. Then a *new* job pointed at that run folder with
    --run_name is refused (exit 2), not retried."""
    job = _submit(tmp_path, shards, 8, 3, *_fault("KillAt", step=5, ranks=[1], attempts=[1]))
    log = tmp_path / f"slurm-{job}.out"
    _wait("restart count 1", lambda: _job(job).get("Restarts") == "1", job, log)
    _release(job, log)
    _wait("completion", lambda: "step finished" in log.read_text() and _finished(job), job, log)
    text = log.read_text()
    assert "[faults] attempt 1 rank 1: SIGKILL at step 5" in text
    assert re.search(r"attempt 1 failed \(exit \d+\): crash retry 1/3, scontrol requeue", text)
    assert "attempt 2 (crash retries used 1/3)" in text
    starts = [m.group(1) for m in re.finditer(_START_RE, text)]
    ckpts = _run_dir(tmp_path, job) / "checkpoints"
    assert starts == ["none: fresh start", f"{ckpts / 'step=0000003.ckpt'} (step 3)"], starts
    assert _load(ckpts / "last.ckpt")["global_step"] == 8
    runs, client = _mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "run/attempt")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (3, 2.0)]
    assert runs[0].data.tags["salt.attempt"] == "2"

    # a new job into that run folder (a reused --run_name / job id): refused, never retried
    again = _submit(tmp_path, shards, 8, 3, f"--run_name=teacher-{job}")
    log2 = tmp_path / f"slurm-{again}.out"
    _wait("refusal", lambda: _ended(again), again, log2, timeout=120)
    text2 = log2.read_text()
    assert "already holds checkpoints" in text2 and "--ckpt_path auto" in text2
    assert "usage error (exit 2); not retrying" in text2
    state, exit_code, restarts = _state(again)
    assert state in ("FAILED", None) and restarts in ("0", None), _job(again)
    if exit_code is not None:
        assert exit_code.startswith("2:")
    assert _load(ckpts / "last.ckpt")["global_step"] == 8  # the run is untouched


@pytest.mark.slurm
@pytest.mark.slow
def test_hanging_rank_is_reported_and_retries_are_bounded(tmp_path: Path, shards: str) -> None:
    """Rank 1 stops in the middle of step 4 on every attempt: its watchdog ends it after
    --hang_timeout (exit 124) naming the rank, phase and step; the job is retried once
    (SALT_MAX_RETRIES=1) and then ends FAILED instead of hanging to its time limit."""
    job = _submit(
        tmp_path, shards, 8, 3, "--hang_timeout=8",
        *_fault("HangAt", step=4, ranks=[1], attempts=[]),
        env_extra={"SALT_MAX_RETRIES": "1"},
    )  # fmt: skip
    log = tmp_path / f"slurm-{job}.out"
    _wait("restart count 1", lambda: _job(job).get("Restarts") == "1", job, log)
    _release(job, log)
    _wait("the job to fail", lambda: _job(job).get("JobState") == "FAILED", job, log, 200)
    text = log.read_text()
    reports = re.findall(r"\[salt\.watchdog\] rank 1/2 .*", text)
    assert len(reports) == 2, text[-6000:]
    assert all("phase 'forward (training_step)' at step 4" in r for r in reports), reports
    assert re.search(r"attempt 1 failed \(exit 124\): crash retry 1/1", text)
    assert "attempt 2 failed (exit 124); all 1 crash retries used: the job ends FAILED" in text
    starts = [m.group(1) for m in re.finditer(_START_RE, text)]
    assert starts[1].endswith("step=0000003.ckpt (step 3)"), starts  # the retry resumed
    assert _state(job)[1] == "124:0"


@pytest.mark.slurm
@pytest.mark.slow
def test_signal_during_a_save_loses_nothing(tmp_path: Path, shards: str) -> None:
    """SIGUSR1 (the time-limit warning) arrives while step 3's checkpoint is being written: the
    save completes, the next step end checkpoints step=4-requeue and requeues; the restart resumes
    exactly there."""
    job = _submit(tmp_path, shards, 7, 3, *_fault("SignalDuringSave", step=3))
    log = tmp_path / f"slurm-{job}.out"
    _wait("restart count 1", lambda: _job(job).get("Restarts") == "1", job, log)
    _release(job, log)
    _wait("completion", lambda: "step finished" in log.read_text() and _finished(job), job, log)
    text = log.read_text()
    ckpts = _run_dir(tmp_path, job) / "checkpoints"
    assert text.count("SIGUSR1 during a checkpoint save at step 3") == 2  # both ranks
    assert f"signal 10: saved {ckpts / 'step=0000004-requeue.ckpt'}" in text
    assert _load(ckpts / "step=0000003.ckpt")["global_step"] == 3  # the save it interrupted
    starts = [m.group(1) for m in re.finditer(_START_RE, text)]
    assert starts[1] == f"{ckpts / 'step=0000004-requeue.ckpt'} (step 4)", starts
    assert "crash retry" not in text
    assert _load(ckpts / "last.ckpt")["global_step"] == 7


@pytest.mark.slurm
@pytest.mark.slow
def test_failed_requeue_fails_the_job(tmp_path: Path, shards: str) -> None:
    """`--no-requeue`: the real `scontrol requeue` refuses. The checkpoint is written, the job
    ends FAILED (exit 3), so `--dependency=afterok` jobs never start on a half-trained model."""
    job = _submit(
        tmp_path, shards, 40, 3, *_fault("SignalDuringSave", step=3), sbatch=("--no-requeue",)
    )
    log = tmp_path / f"slurm-{job}.out"
    _wait("the job to end", lambda: _ended(job), job, log, 200)
    text = log.read_text()
    ckpts = _run_dir(tmp_path, job) / "checkpoints"
    assert (ckpts / "step=0000004-requeue.ckpt").is_file()
    assert f"[salt.requeue] scontrol requeue {job} failed after 3 tries" in text, text[-4000:]
    assert "the requeue failed (failed: exit" in text and "not retrying" in text
    state, exit_code, restarts = _state(job)
    assert state in ("FAILED", None) and restarts in ("0", None), _job(job)
    if exit_code is not None:
        assert exit_code == "3:0", exit_code
