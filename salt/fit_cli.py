"""``salt fit``: the LightningCLI that trains either stage, its run folder, and its help/errors.

``salt fit -c CONFIG [--model.teacher PATH] [--data.* …] [--ckpt_path CKPT]`` is a LightningCLI
(subclass mode: the YAML names ``salt.teacher.TeacherModule`` or ``salt.student.StudentModule``;
the DataModule is always ``salt.data.VideoDataModule``). ``data.frames_per_clip`` and
``data.crop_size`` are linked to the model's ``num_frames`` / ``img_size``. Extra run options:
``--experiment``, ``--run_name``, ``--tracking_uri`` (alias ``--tracking-uri``), ``--tracking``,
``--system_metrics``, ``--checkpoint_every``, ``--progress_every``, ``--checkpoint_minutes``,
``--keep_checkpoints``, ``--hang_timeout``.

A run lives in ``<trainer.default_root_dir>/<experiment>/<run_name>/``: ``config.yaml`` (the
resolved config, rewritten on resume, tracking URI redacted), ``checkpoints/``
(``step=NNNNNNN.ckpt`` every ``checkpoint_every`` optimizer steps and/or ``checkpoint_minutes``,
written atomically, ``last.ckpt`` a link to the newest; ``salt.checkpoint_policy``) and
``run.json`` (the MLflow run id, reused on resume). ``--ckpt_path <run>/checkpoints/last.ckpt``
without ``--run_name`` resumes into that checkpoint's run folder and MLflow run. Which checkpoint
a start resumes is ``salt.resume.decide_ckpt_path``: a restart resumes the run's newest
checkpoint, and a first start into a folder that already holds checkpoints is a usage error
unless ``--ckpt_path`` (``auto`` or one of them) asks to continue it. Default run names are
``<stage>-<Slurm job id>`` (stable across requeues and identical on every rank), else
``<stage>-<timestamp>``.

Output: with a terminal, Lightning's progress bar; without one (a batch job's log), or with
``--trainer.enable_progress_bar false``, a plain line every ``--progress_every`` steps
(``salt.log_lines``); a summary block at the end either way.

Usage errors (a config file that does not exist, a shard pattern that matches nothing, GPUs
asked for where none is visible, a wrong teacher, a bad option) are ``UsageError``: one line and
exit status 2, all found before the Trainer starts processes or DataLoader workers. Plain
``salt fit --help`` is served from a cache (``salt.help_cache``), since building the parser
imports torch and Lightning.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import Logger

from salt.checkpointing import AtomicCheckpointIO
from salt.data import VideoDataModule
from salt.errors import MissingInputError, UsageError
from salt.module_base import SaltModule


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config to ``<run_dir>/config.yaml`` (overwriting: a resumed run
    rewrites it; the tracking URI without credentials) and logs it, flattened, as MLflow params
    (``TrackingCallback`` logs the file itself as an artifact)."""

    def __init__(
        self, parser: LightningArgumentParser, config: Any, run_dir: str, **kwargs: Any
    ) -> None:
        super().__init__(parser, config, overwrite=True, save_to_log_dir=False, **kwargs)
        self.run_dir = Path(run_dir)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import yaml

        from salt.tracking import redact_uri

        config = self.config.clone()
        if config.get("tracking_uri"):
            config["tracking_uri"] = redact_uri(config["tracking_uri"])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.parser.save(
            config, self.run_dir / self.config_filename, skip_none=False, overwrite=True
        )
        resolved = yaml.safe_load(self.parser.dump(config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(resolved)


def default_run_name(stage: str) -> str:
    """``<stage>-<id>``: the Slurm job (stable across requeues and ranks), else a timestamp."""
    import os

    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    job = job or os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    return f"{stage}-{job or time.strftime('%Y%m%d-%H%M%S')}"


def resolve_run_dir(
    root: str, experiment: str, run_name: str | None, ckpt_path: str | None, stage: str
) -> Path:
    """The run folder: explicit ``run_name``; else the folder of a resumed ``.../checkpoints/x.ckpt``;
    else a new ``<stage>-<id>`` folder."""
    if run_name is None and ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return Path(ckpt_path).resolve().parent.parent
    return Path(root) / experiment / (run_name or default_run_name(stage))


def check_shards(flag: str, spec: Any) -> None:
    """Raise ``MissingInputError`` naming ``flag`` if a shard spec matches no file."""
    from salt.data.samples import expand_shards

    for one in [spec] if isinstance(spec, str) else list(spec or []):
        try:
            expand_shards(one)
        except (FileNotFoundError, ValueError) as e:
            raise MissingInputError(f"{flag}: {e}") from None


def check_accelerator(trainer_cfg: Any) -> None:
    """Raise ``UsageError`` when GPUs are asked for and none is visible (or too few)."""
    import os

    accelerator = trainer_cfg.get("accelerator")
    if not isinstance(accelerator, str) or accelerator.lower() not in ("gpu", "cuda"):
        return
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    if not torch.cuda.is_available():
        raise UsageError(
            f"--trainer.accelerator {accelerator} asks for GPUs but none is visible{where}; "
            "use --trainer.accelerator cpu, or run on a GPU node"
        )
    devices, count = trainer_cfg.get("devices"), torch.cuda.device_count()
    in_slurm = bool(os.environ.get("SLURM_PROCID"))  # Slurm binds GPUs per task: trust it
    if isinstance(devices, int) and devices > count and not in_slurm:
        raise UsageError(f"--trainer.devices {devices} but only {count} GPU(s) are visible{where}")


class SaltCLI(LightningCLI):
    """LightningCLI for both stages; see the module docstring for options and the run layout."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault(
            "trainer_defaults", {"default_root_dir": "runs", "precision": "bf16-mixed"}
        )
        super().__init__(
            model_class=SaltModule,
            subclass_mode_model=True,
            datamodule_class=VideoDataModule,
            save_config_callback=RunConfigSaver,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--experiment", type=str, default="salt", help="MLflow experiment and run-folder group"
        )
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="run folder name (default <stage>-<job id or time>)",
        )
        parser.add_argument(
            "--tracking_uri",
            "--tracking-uri",
            type=str | None,
            default=None,
            help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db); "
            "recorded without credentials: pass those as MLFLOW_TRACKING_USERNAME/PASSWORD",
        )
        parser.add_argument("--tracking", type=bool, default=True, help="log to MLflow")
        parser.add_argument(
            "--system_metrics",
            type=bool | None,
            default=None,
            help="log system/* GPU, CPU and memory metrics from global rank 0 every 10 s "
            "(default: MLflow's MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING, off if unset)",
        )
        parser.add_argument(
            "--checkpoint_every",
            type=int,
            default=1000,
            help="optimizer steps between periodic checkpoints",
        )
        parser.add_argument(
            "--progress_every",
            type=int,
            default=0,
            help="steps between plain progress lines when the bar is off (0: log_every_n_steps)",
        )
        from salt.resume import add_run_arguments

        add_run_arguments(parser)  # checkpoint minutes / retention, hang timeout
        parser.link_arguments("data.frames_per_clip", "model.init_args.num_frames")
        parser.link_arguments("data.crop_size", "model.init_args.img_size")

    # ----------------------------------------------------------------- checks before any work
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check what needs the parsed config but no model: the shard patterns match
        files, GPUs asked for exist. Before the seed, the teacher and the Trainer's processes."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:  # run=False: parse (and instantiate) only, as tests and tools do
            return
        cfg = self.config[subcommand]
        data = cfg.get("data") or {}
        check_shards("--data.train_shards", data.get("train_shards"))
        if data.get("val_shards"):
            check_shards("--data.val_shards", data.get("val_shards"))
        check_accelerator(cfg.get("trainer") or {})

    # ----------------------------------------------------------------- run folder
    def run_options(self) -> dict[str, Any]:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        from salt.resume import RUN_OPTIONS

        keys = ("experiment", "run_name", "tracking_uri", "tracking", "checkpoint_every",
                "system_metrics", "progress_every")  # fmt: skip
        return {k: cfg.get(k) for k in keys + RUN_OPTIONS}

    def run_dir(self) -> Path:
        """This run's folder (hook point for resume logic; see ``resolve_run_dir``)."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        opts = self.run_options()
        ckpt_path = cfg.get("ckpt_path") if self.subcommand else None
        stage = getattr(self.model, "stage", "run")
        return resolve_run_dir(
            cfg["trainer"]["default_root_dir"] or "runs",
            opts["experiment"],
            opts["run_name"],
            ckpt_path,
            stage,
        )

    def build_loggers(
        self, run_dir: Path, checkpoint_dir: Path, resuming: bool
    ) -> tuple[list[Logger], list[pl.Callback]]:
        """The MLflow logger (unless ``--tracking false``) and the callback that tags the run. A
        resumed run continues the MLflow run recorded in ``run.json``."""
        import os

        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        from salt.tracking import (
            SaltMLflowLogger,
            TrackingCallback,
            is_remote,
            read_run_file,
            redact_uri,
            resolve_tracking_uri,
        )

        opts = self.run_options()
        root = Path(self._get(self.config_init, "trainer")["default_root_dir"] or "runs")
        system = opts["system_metrics"]
        if system is None:
            system = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() == "true"
        # Only global rank 0 opens the store (rank from SLURM_PROCID/RANK/LOCAL_RANK at this point):
        # every rank opening a fresh sqlite store at once races in MLflow's schema migration.
        if not opts["tracking"] or rank_zero_only.rank != 0:
            return [], [TrackingCallback(run_dir, checkpoint_dir, opts["experiment"], None)]
        uri = resolve_tracking_uri(opts["tracking_uri"], root)
        previous = read_run_file(run_dir) if resuming else {}
        same_store = previous.get("tracking_uri") == redact_uri(uri)
        run_id = previous.get("mlflow_run_id") if same_store else None
        logger = SaltMLflowLogger(
            experiment_name=opts["experiment"],
            run_name=run_dir.name,
            tracking_uri=uri,
            run_dir=run_dir,
            artifact_location=None if is_remote(uri) else (root.resolve() / "mlartifacts").as_uri(),
            run_id=run_id,
        )
        callback = TrackingCallback(
            run_dir, checkpoint_dir, opts["experiment"], uri, system_metrics=bool(system)
        )
        return [logger], [callback]

    def output_callbacks(self, trainer_cfg: dict, checkpoint_dir: Path) -> list[pl.Callback]:
        """Plain progress lines when the bar is off (chosen here: off without a terminal unless
        a progress-bar callback was configured), and the end-of-fit summary."""
        from salt.log_lines import FitSummary, ProgressLines
        from salt.progress import is_interactive

        configured = trainer_cfg.get("callbacks") or []
        has_bar = any(isinstance(cb, ProgressBar) for cb in configured)
        if trainer_cfg.get("enable_progress_bar") is None:
            trainer_cfg["enable_progress_bar"] = has_bar or is_interactive()
        out: list[pl.Callback] = [FitSummary(checkpoint_dir)]
        if not trainer_cfg["enable_progress_bar"]:
            every = self.run_options()["progress_every"] or trainer_cfg.get("log_every_n_steps")
            out.append(ProgressLines(every or 50))
        return out

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        from salt.resume import decide_ckpt_path, run_callbacks  # resume, requeue, hang limits

        run_dir = self.run_dir()
        checkpoint_dir = run_dir / "checkpoints"
        ckpt_path = None
        if self.subcommand:  # a restart resumes the newest; never a foreign run folder afresh
            ckpt_path = decide_ckpt_path(
                self.config[self.subcommand].get("ckpt_path"), checkpoint_dir
            )
            self.config_init[self.subcommand]["ckpt_path"] = ckpt_path
        resuming = ckpt_path is not None
        self.save_config_kwargs["run_dir"] = str(run_dir)
        loggers, callbacks = self.build_loggers(run_dir, checkpoint_dir, resuming)
        trainer_cfg = self._get(self.config_init, "trainer")
        configured = trainer_cfg.get("logger")
        if isinstance(configured, Logger):
            loggers.append(configured)
        elif isinstance(configured, list):
            loggers.extend(lg for lg in configured if isinstance(lg, Logger))
        callbacks.extend(self.output_callbacks(trainer_cfg, checkpoint_dir))
        callbacks += run_callbacks(checkpoint_dir, self.run_options(), ckpt_path)
        trainer_cfg["callbacks"] = list(trainer_cfg.get("callbacks") or []) + callbacks
        plugins = trainer_cfg.get("plugins")
        plugins = (
            [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        )
        kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        kwargs.setdefault("logger", loggers or False)
        self.run_path = run_dir
        trainer = super().instantiate_trainer(**kwargs)
        from salt.watchdog import set_collective_timeout

        set_collective_timeout(trainer.strategy, self.run_options()["hang_timeout"])
        return trainer


def _config_files(argv: list[str]) -> list[str]:
    """The values of ``-c`` / ``--config`` in ``argv``."""
    out = []
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith(("--config=", "-c=")):
            out.append(arg.split("=", 1)[1])
    return out


def check_config_files(argv: list[str]) -> None:
    """Raise ``MissingInputError`` for a ``-c`` file that does not exist (before any import)."""
    for path in _config_files(argv):
        if not Path(path).is_file():
            raise MissingInputError(f"config file not found: {path} (-c)")


def render_help() -> str:
    """``salt fit --help`` as Lightning prints it (imports torch and Lightning)."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
        fit(["--help"])
    return buffer.getvalue()


def fit(argv: list[str]) -> SaltCLI:
    """``salt fit …`` in-process: train either stage (returns the CLI, whose ``.trainer`` ran).
    Parse errors raise ``UsageError`` instead of printing the whole usage and exiting."""
    from jsonargparse import ArgumentError

    check_config_files(argv)
    with warnings.catch_warnings():
        # Passing args from inside Python while sys.argv is non-empty is how `salt` dispatches.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        try:
            return SaltCLI(
                args=["fit", *argv],
                parser_kwargs={
                    "prog": "salt",
                    "exit_on_error": False,
                    "fit": {"exit_on_error": False},
                },
            )
        except ArgumentError as e:
            raise UsageError(f"{e} (salt fit --help lists the options)") from None
        except ValueError as e:
            cause = usage_cause(e)
            if cause is None:
                raise
            raise cause from None


def usage_cause(exc: BaseException) -> UsageError | None:
    """The ``UsageError`` behind ``exc``: jsonargparse wraps what a constructor raises (e.g. a
    wrong ``--model.teacher``) in a ValueError listing every type it tried."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UsageError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    """``salt fit`` from the ``salt`` dispatcher (which answers plain ``--help`` from the cache).
    A usage error is also recorded for ``slurm/train.sbatch``, which must not retry it (srun's
    exit code is that of whichever task it killed, not the rank's 2)."""
    try:
        fit(list(sys.argv[1:] if argv is None else argv))
    except UsageError as err:
        from salt.requeue import mark_job_state

        mark_job_state("usage-error", str(err))
        raise
    return 0
