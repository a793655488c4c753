"""The ``salt`` command: ``salt fit``, ``salt export``, ``salt demo``.

``salt fit -c CONFIG [--model.teacher PATH] [--data.* …] [--ckpt_path CKPT]`` is a LightningCLI
(subclass mode: the YAML names ``salt.teacher.TeacherModule`` or ``salt.student.StudentModule``;
the DataModule is always ``salt.data.VideoDataModule``). ``data.frames_per_clip`` and
``data.crop_size`` are linked to the model's ``num_frames`` / ``img_size``. Extra run options:
``--experiment``, ``--run_name``, ``--tracking_uri`` (alias ``--tracking-uri``), ``--tracking``,
``--checkpoint_every``.

A run lives in ``<trainer.default_root_dir>/<experiment>/<run_name>/``: ``config.yaml`` (the
resolved config, rewritten on resume), ``checkpoints/`` (``step=NNNNNNN.ckpt`` every
``checkpoint_every`` optimizer steps and ``last.ckpt``, written atomically) and ``run.json`` (the
MLflow run id, reused on resume). ``--ckpt_path <run>/checkpoints/last.ckpt`` without
``--run_name`` resumes into that checkpoint's run folder and MLflow run (``--ckpt_path auto``:
``salt.resume``). A run folder that already holds checkpoints is never trained into afresh: that
is an error unless ``--ckpt_path`` resumes it. Default run names are ``<stage>-<Slurm job id>``
(stable across requeues and identical on every rank), else ``<stage>-<timestamp>``.

``salt export CKPT OUT.safetensors`` writes the encoder of a checkpoint (``salt.encoder_io``);
``--format hf`` writes a Hugging Face folder instead (config.json, model.safetensors, model card).
``salt import SRC OUT.safetensors`` hands over to ``salt.interop.cli.main(argv)``.
``salt demo …`` hands over to ``salt.demo.main(argv)``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import Logger

from salt.checkpointing import AtomicCheckpointIO
from salt.data import VideoDataModule
from salt.module_base import SaltModule

USAGE = """usage: salt {fit,export,import,demo} ...

  salt fit -c CONFIG [--model.teacher PATH] [--data.* ...] [--ckpt_path CKPT]
                                        train stage 1 (teacher) or stage 2 (student)
  salt export CKPT OUT.safetensors      write a checkpoint's encoder + metadata
  salt export CKPT DIR --format hf      ... as a Hugging Face folder (config, weights, card)
  salt import SRC OUT.safetensors       a V-JEPA 2 / VideoMAE encoder as a salt encoder file
  salt demo [...]                       tiny end-to-end run on synthetic video (CPU)

`salt fit --help` lists every option."""


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` when training ends between two periodic
    saves (Lightning only does so if nothing was saved at all)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config to ``<run_dir>/config.yaml`` (overwriting: a resumed run
    rewrites it) and logs it, flattened, as MLflow params."""

    def __init__(
        self, parser: LightningArgumentParser, config: Any, run_dir: str, **kwargs: Any
    ) -> None:
        super().__init__(parser, config, overwrite=True, save_to_log_dir=False, **kwargs)
        self.run_dir = Path(run_dir)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import yaml

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.parser.save(
            self.config, self.run_dir / self.config_filename, skip_none=False, overwrite=True
        )
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(resolved)


def default_run_name(stage: str) -> str:
    """``<stage>-<id>``: the Slurm job (stable across requeues and ranks), else a timestamp."""
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
            help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db)",
        )
        parser.add_argument("--tracking", type=bool, default=True, help="log to MLflow")
        parser.add_argument(
            "--checkpoint_every",
            type=int,
            default=1000,
            help="optimizer steps between periodic checkpoints",
        )
        parser.link_arguments("data.frames_per_clip", "model.init_args.num_frames")
        parser.link_arguments("data.crop_size", "model.init_args.img_size")

    # ----------------------------------------------------------------- run folder
    def run_options(self) -> dict[str, Any]:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        return {
            k: cfg[k]
            for k in ("experiment", "run_name", "tracking_uri", "tracking", "checkpoint_every")
        }

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
        from salt.tracking import (
            SaltMLflowLogger,
            TrackingCallback,
            read_run_file,
            resolve_tracking_uri,
        )

        opts = self.run_options()
        root = Path(self._get(self.config_init, "trainer")["default_root_dir"] or "runs")
        # Only global rank 0 opens the store (rank from SLURM_PROCID/RANK/LOCAL_RANK at this point):
        # every rank opening a fresh sqlite store at once races in MLflow's schema migration
        # (cluster room; tests/test_slurm.py hits it).
        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        if not opts["tracking"] or rank_zero_only.rank != 0:
            return [], [TrackingCallback(run_dir, checkpoint_dir, opts["experiment"], None)]
        uri = resolve_tracking_uri(opts["tracking_uri"], root)
        previous = read_run_file(run_dir) if resuming else {}
        run_id = previous.get("mlflow_run_id") if previous.get("tracking_uri") == uri else None
        logger = SaltMLflowLogger(
            experiment_name=opts["experiment"],
            run_name=run_dir.name,
            tracking_uri=uri,
            run_dir=run_dir,
            artifact_location=(root.resolve() / "mlartifacts").as_uri(),
            run_id=run_id,
        )
        return [logger], [TrackingCallback(run_dir, checkpoint_dir, opts["experiment"], uri)]

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        run_dir = self.run_dir()
        checkpoint_dir = run_dir / "checkpoints"
        resuming = bool(self.config[self.subcommand].get("ckpt_path")) if self.subcommand else False
        if not resuming and any(checkpoint_dir.glob("*.ckpt")):
            raise FileExistsError(
                f"run folder {run_dir} already holds checkpoints of another run; resume it with "
                "--ckpt_path, or pick a new --run_name / --trainer.default_root_dir"
            )
        self.save_config_kwargs["run_dir"] = str(run_dir)
        loggers, callbacks = self.build_loggers(run_dir, checkpoint_dir, resuming)
        trainer_cfg = self._get(self.config_init, "trainer")
        configured = trainer_cfg.get("logger")
        if isinstance(configured, Logger):
            loggers.append(configured)
        elif isinstance(configured, list):
            loggers.extend(lg for lg in configured if isinstance(lg, Logger))
        callbacks.append(
            LastCheckpoint(
                dirpath=checkpoint_dir,
                filename="{step:07d}",
                every_n_train_steps=self.run_options()["checkpoint_every"],
                save_top_k=-1,
                save_last=True,
                save_on_train_epoch_end=False,
                # A resumed run re-creating step N replaces the abandoned attempt's step N (and
                # last.ckpt stays last.ckpt) instead of writing "-v1" copies.
                enable_version_counter=False,
            )
        )
        # salt.resume (cluster room): `--ckpt_path auto` = newest checkpoint of this run folder
        # (none: fresh start); SlurmRequeue owns checkpoint+requeue on SIGUSR1 under srun.
        from salt.resume import SlurmRequeue, resolve_ckpt_path

        if self.subcommand and self.config_init[self.subcommand].get("ckpt_path") == "auto":
            self.config_init[self.subcommand]["ckpt_path"] = resolve_ckpt_path(
                "auto", checkpoint_dir
            )
        callbacks.append(SlurmRequeue())
        trainer_cfg["callbacks"] = list(trainer_cfg.get("callbacks") or []) + callbacks
        plugins = trainer_cfg.get("plugins")
        plugins = (
            [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        )
        kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        kwargs.setdefault("logger", loggers or False)
        self.run_path = run_dir
        return super().instantiate_trainer(**kwargs)


def fit(argv: list[str]) -> SaltCLI:
    """``salt fit …``: train either stage (returns the CLI, whose ``.trainer`` has run)."""
    with warnings.catch_warnings():
        # Passing args from inside Python while sys.argv is non-empty is how `salt` dispatches.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        return SaltCLI(args=["fit", *argv])


def export(argv: list[str]) -> Path:
    """``salt export CKPT OUT.safetensors`` / ``salt export CKPT DIR --format hf``."""
    from salt.encoder_io import EXPORT_FORMATS, export_encoder, export_hf

    parser = argparse.ArgumentParser(
        prog="salt export", description="write a checkpoint's encoder as safetensors"
    )
    parser.add_argument("ckpt", help="Lightning checkpoint of either stage")
    parser.add_argument("out", help="output .safetensors (a folder with --format hf)")
    parser.add_argument(
        "--format", choices=EXPORT_FORMATS, default="safetensors",
        help="safetensors: one salt encoder file; hf: a Hugging Face folder "
        "(VideoViT.from_pretrained, push_to_hub)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    exporter = export_hf if args.format == "hf" else export_encoder
    out = exporter(args.ckpt, args.out)
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``salt`` console script (its return value is the exit status)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    command, rest = argv[0], argv[1:]
    if command == "fit":
        fit(rest)
        return None
    if command == "export":
        export(rest)
        return None
    if command == "import":
        from salt.interop.cli import main as import_main

        return import_main(rest)
    if command == "demo":
        from salt.demo import main as demo_main  # written by the demo room; imported lazily

        return demo_main(rest)
    print(f"salt: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
