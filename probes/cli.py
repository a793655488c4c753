"""`salt-probe`: evaluate a checkpoint with frozen-backbone probes; JSON + MLflow probe run.

    salt-probe --ckpt runs/student/checkpoints/last.ckpt -c configs/probe/ssv2.yaml \
        --train 'ssv2/train-{000000..000999}.tar' --val ssv2/val.csv --num-classes 174

    torchrun --nproc-per-node 8 -m salt.probes.cli ...      # or: sbatch slurm/probe.sbatch ...

Settings come from the dataclass defaults (probes/config.py), then the `-c` YAML, then the flags
below. `--train`/`--val` take WebDataset shard specs or CSV lists of videos. The mode (`--mode`)
is online on CUDA (the encoder runs every epoch), cached on CPU. Several processes (srun tasks or
torchrun) share the work (dist.py). A run is resumable: every finished epoch is saved under
`--state-dir` and rerunning the same command continues there (Slurm's SIGUSR1 stops it cleanly
and requeues the job). The MLflow store is `--tracking-uri`, else $MLFLOW_TRACKING_URI, else the
`mlflow.db` of the training run that wrote the checkpoint (found by walking up from it), else a
new one beside it (tracking.py); the probe run is nested under that training run, which also gets
`probe/<task>/top1` at the checkpoint's step. Exit status: 0 on success, 2 on bad input, 75 when
stopped by the signal (rerun to continue).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salt.errors import UsageError, cli_entry
from salt.tracking_uri import redact_uri

from . import tracking
from .config import ProbeConfig, load_config

if TYPE_CHECKING:  # torch and the probe protocol load in run(): `salt-probe --help` stays fast
    from .protocol import ProbeResult

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped on the signal, state saved; rerun to continue
# settings that change speed or memory but not the result (left out of the protocol tag)
_NOT_PROTOCOL = ("feature_cache", "num_workers", "max_feature_gb", "extract_batch_size",
                 "micro_batch", "head_chunk", "head_checkpoint", "val_batch_size",
                 "progress_every_s", "compile_encoder", "decoder")  # fmt: skip


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 1/0/true/false, got {s!r}")


def _list(kind: type):
    def parse(s: str) -> list:
        return [kind(v) for v in s.split(",") if v.strip()]

    return parse


def _field_type(type_str: str):
    t = type_str.replace(" | None", "")
    return {"bool": _bool, "int": int, "float": float, "str": str, "list[float]": _list(float),
            "list[int]": _list(int), "list[str]": _list(str)}[t]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="salt-probe", description=__doc__.split("\n")[0])
    p.add_argument(
        "--ckpt", required=True, help="Lightning .ckpt of either stage or exported .safetensors"
    )
    p.add_argument(
        "--which",
        choices=["auto", "target", "online"],
        default="auto",
        help="encoder of an EMA-baseline checkpoint: its EMA 'target' (what V-JEPA evaluates; "
        "'auto' picks it) or the 'online' one; other checkpoints have one encoder",
    )
    p.add_argument("--train", required=True, help="labelled training split (shards or .csv)")
    p.add_argument("--val", required=True, help="labelled validation split (shards or .csv)")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("-c", "--config", help="protocol YAML (configs/probe/*.yaml)")
    p.add_argument("--task", help="task name of `probe/<task>/top1` (default: the config's stem)")
    p.add_argument("--output-json", help="write the results here")
    p.add_argument("--baseline", choices=["none", "random"], default="none",
                   help="'random': also probe a fresh encoder of the same architecture (seeded)")  # fmt: skip
    p.add_argument("--tracking-uri", help="MLflow store (see module docstring for the default)")
    p.add_argument(
        "--experiment", help="MLflow experiment (default: the pretraining run's, else salt-probe)"
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    p.add_argument("--state-dir", help="resumable state (default: <run>/probe-state/<ckpt>-<id>)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a state exists")
    p.add_argument("--no-retrain", dest="retrain", action="store_const", const=False,
                   help="skip retraining the chosen setting on all of train")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    g = p.add_argument_group("protocol overrides (default: the config file's values)")
    for f in ProbeConfig.__dataclass_fields__.values():
        if f.name == "retrain":
            continue
        flag = "--" + f.name.replace("_", "-")
        g.add_argument(
            flag, type=_field_type(str(f.type)), help=f"{f.type} (comma-separated lists)"
        )
    return p


def protocol_tag(
    cfg: ProbeConfig, config_path: str | None, num_classes: int, train: str, val: str
) -> str:
    """`<config stem>-<hash>`: equal only for runs with the same protocol, classes and data."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_PROTOCOL}
    blob = json.dumps(
        {"cfg": settings, "classes": num_classes, "train": train, "val": val}, sort_keys=True
    )
    stem = Path(config_path).stem if config_path else "default"
    return f"{stem}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def checkpoint_identity(path: str) -> str:
    """Path, size and modification time of the checkpoint: a rewritten `last.ckpt` is another run."""
    st = os.stat(path)
    blob = f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def default_state_dir(ckpt: str) -> Path:
    """`<run>/probe-state` for a checkpoint in a run's `checkpoints/` folder, else beside it."""
    parent = Path(ckpt).parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "probe-state"


def _table(ckpt: str, meta: dict, res: ProbeResult, rnd: ProbeResult | None) -> str:
    loss = meta.get("train_loss")
    lines = [
        f"checkpoint {ckpt}",
        f"  stage {meta.get('stage')}, step {meta.get('step')}, train_loss "
        + ("-" if loss is None else f"{loss:.4f}")
        + f", mode {res.mode}",
        f"  train {res.num_train} (fit {res.num_fit} + held-out {res.num_heldout}), val {res.num_val}",
        f"{'encoder':12} {'top1':>7} {'top5':>7} {'fit-head':>9} {'held-out':>9}  selected head",
    ]
    for name, r in [("checkpoint", res), ("random-init", rnd)]:
        if r is not None:
            held = r.heldout[r.selected_head]["top1"]
            lines.append(
                f"{name:12} {r.top1:7.4f} {r.top5:7.4f} {r.fit_head['top1']:9.4f} "
                f"{held:9.4f}  {r.selected_head}"
            )
    lines.append(
        f"  top1 = the chosen setting {'retrained on all of train' if res.retrained else 'as trained on the fit part'}; "
        "fit-head = as trained on the fit part"
    )
    lines.append("grid (held-out top-1, best first):")
    for n, h in sorted(res.heldout.items(), key=lambda kv: -kv[1]["top1"]):
        lines.append(f"  {h['top1']:.4f}  loss {h['loss']:.4f}  epochs {h.get('epochs', '-')}  {n}")
    skipped = {s: {k: v for k, v in c.items() if v} for s, c in res.skipped.items()}
    skipped = {s: c for s, c in skipped.items() if c}
    if skipped:
        lines.append(f"skipped by the data pipeline (counted, not replaced): {skipped}")
    return "\n".join(lines)


class _Mlflow:
    """The probe run (created or resumed on the main rank) and the training run it reports to."""

    def __init__(
        self, args: argparse.Namespace, meta: dict, state_dir: Path, params: dict, tags: dict
    ) -> None:
        self.uri = tracking.resolve_tracking_uri(args.tracking_uri, args.ckpt)
        c = tracking.client(self.uri)
        self.pretrain_id = meta.get("mlflow_run_id")
        self.experiment = (
            args.experiment
            or tracking.pretrain_experiment(c, self.pretrain_id)
            or tracking.DEFAULT_EXPERIMENT
        )
        run_file = state_dir / "mlflow.json"
        saved = (
            json.loads(run_file.read_text()) if run_file.is_file() and not args.no_resume else {}
        )
        self.run_id = (
            saved.get("run_id") if saved.get("tracking_uri") == redact_uri(self.uri) else None
        )
        if self.run_id and tracking.resume_run(self.uri, self.run_id):
            return
        name = f"probe-{meta.get('stage', 'enc')}-step{meta.get('step')}"
        self.run_id = tracking.start_run(self.uri, self.experiment, run_name=name, tags=tags,
                                         params=params, parent_run_id=self.pretrain_id)  # fmt: skip
        state_dir.mkdir(parents=True, exist_ok=True)
        run_file.write_text(
            json.dumps({"tracking_uri": redact_uri(self.uri), "run_id": self.run_id})
        )

    def on_epoch(self, prefix: str):
        def log(phase: str, epoch: int, metrics: dict) -> None:
            m = {f"{prefix}{phase}/{k}": v for k, v in metrics.items()}
            tracking.log_metrics(self.uri, self.run_id, m, step=epoch)

        return log


def _metrics(out: dict) -> dict[str, float | None]:
    m = {
        "probe/top1": out["top1"],
        "probe/top5": out["top5"],
        "probe/fit_head_top1": out["fit_head_top1"],
        "probe/heldout_top1": out["heldout_top1"],
        "pretrain/train_loss": out["train_loss"],
        "probe/random_top1": out.get("random_top1"),
    }
    m.update({f"probe/grid/{n}/heldout_top1": h["top1"] for n, h in out["grid"].items()})
    for split, counts in out["skipped"].items():
        m.update({f"data/{split}_{k}": float(v) for k, v in counts.items()})
    return m


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything `salt-probe` does, returning the JSON-able result (on every rank)."""
    import torch

    from salt.encoder_io import file_sha256

    from . import load_encoder
    from .dist import init_distributed
    from .online import check_splits

    overrides = {k: getattr(args, k, None) for k in ProbeConfig.__dataclass_fields__}
    cfg = load_config(args.config, overrides)
    check_splits(args.train, args.val, args.num_classes)  # before any GPU work
    if not Path(args.ckpt).is_file():
        raise UsageError(f"checkpoint {args.ckpt} not found")
    if args.threads:
        torch.set_num_threads(args.threads)
    dist = init_distributed(args.device)
    try:
        return _run(args, cfg, dist, file_sha256, load_encoder)
    finally:
        dist.close()


def _run(args, cfg, dist, file_sha256, load_encoder) -> dict[str, Any]:
    from .protocol import evaluate_encoder, random_like
    from .state import Interrupted, StateStore

    log = (lambda m: print(m, file=sys.stderr, flush=True)) if dist.is_main else (lambda m: None)
    encoder, meta = load_encoder(args.ckpt, which=getattr(args, "which", "auto"))
    mean, std = meta.get("mean"), meta.get("std")
    ckpt = str(Path(args.ckpt).resolve())
    enc_id = file_sha256(ckpt) if cfg.feature_cache else None
    target = meta.get("which") == "target"  # one file, two encoders: separate caches and state
    if enc_id and target:
        enc_id += ":target"
    from .protocol import resolve_mode

    resolved = ProbeConfig(**{**cfg.to_dict(), "mode": resolve_mode(cfg, dist.device)})
    tag = protocol_tag(resolved, args.config, args.num_classes, args.train, args.val)
    run_key = f"{tag}-{checkpoint_identity(ckpt)}" + ("-target" if target else "")
    state_dir = Path(
        args.state_dir or Path(ckpt).parent / "probe-state" / f"{Path(ckpt).stem}-{run_key}"
    )
    task = args.task or (Path(args.config).stem if args.config else "probe")
    teacher = meta.get("teacher") or {}
    tags = {
        "salt.kind": tracking.PROBE_KIND, "salt.pretrain_run_id": meta.get("mlflow_run_id") or "",
        "salt.checkpoint": ckpt, "salt.checkpoint_step": "" if meta.get("step") is None else meta["step"],
        "salt.stage": meta.get("stage", ""), "salt.teacher_sha256": teacher.get("sha256") or "",
        "salt.probe_protocol": tag, "salt.probe_task": task, "salt.state_dir": str(state_dir),
    }  # fmt: skip
    params = {**cfg.to_dict(), "num_classes": args.num_classes, "train": args.train,
              "val": args.val, "world_size": dist.world_size}  # fmt: skip
    ml = None
    if not args.no_mlflow and dist.is_main:
        ml = _Mlflow(args, meta, state_dir, params, tags)

    def evaluate(enc, sub: str, prefix: str, encoder_id) -> ProbeResult:
        store = StateStore(
            state_dir / sub, run_key, dist.world_size, dist.is_main, resume=not args.no_resume
        )
        return evaluate_encoder(
            enc, cfg, args.train, args.val, args.num_classes, mean=mean or (0.485, 0.456, 0.406),
            std=std or (0.229, 0.224, 0.225), encoder_id=encoder_id, log=log, dist=dist,
            store=store, on_epoch=ml.on_epoch(prefix) if ml else None,
        )  # fmt: skip

    try:
        res = evaluate(encoder, "checkpoint", "", enc_id)
        rnd = None
        if args.baseline == "random":
            arch = hashlib.sha256(json.dumps(encoder.config, sort_keys=True).encode()).hexdigest()
            rnd = evaluate(random_like(encoder, seed=cfg.seed), "random", "random/",
                           f"random:{arch}:{cfg.seed}")  # fmt: skip
    except Interrupted:
        if ml is not None:
            tracking.client(ml.uri).set_terminated(ml.run_id, "KILLED")
        raise
    except BaseException:
        if ml is not None:
            tracking.client(ml.uri).set_terminated(ml.run_id, "FAILED")
        raise
    out: dict[str, Any] = {
        "checkpoint": ckpt, "stage": meta.get("stage"), "which": meta.get("which"),
        "step": meta.get("step"),
        "train_loss": meta.get("train_loss"), "teacher_sha256": teacher.get("sha256"),
        "pretrain_run_id": meta.get("mlflow_run_id"), "num_classes": args.num_classes,
        "task": task, "protocol": tag, **res.summary(), "config": cfg.to_dict(),
        "device": str(dist.device), "world_size": dist.world_size, "state_dir": str(state_dir),
    }  # fmt: skip
    if rnd is not None:
        out["random_top1"] = rnd.top1
        out["random"] = {k: v for k, v in rnd.summary().items() if k != "confusion"}
    if not dist.is_main:
        return out
    print(_table(ckpt, meta, res, rnd))
    _write_outputs(args, out, res, ckpt, ml, task, meta)
    return out


def _write_outputs(
    args, out: dict, res: ProbeResult, ckpt: str, ml: _Mlflow | None, task: str, meta: dict
) -> None:
    from .metrics import save_confusion_png

    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        png_dir = Path(args.output_json).parent if args.output_json else Path(tmp)
        stem = Path(args.output_json).stem if args.output_json else "probe"
        png = save_confusion_png(
            res.confusion,
            png_dir / f"{stem}_confusion.png",
            title=f"{Path(ckpt).name}: top-1 {res.top1:.3f}",
        )
        if ml is not None:
            out["mlflow"] = {
                "tracking_uri": redact_uri(ml.uri),
                "experiment": ml.experiment,
                "run_id": ml.run_id,
            }
            tracking.finish_run(
                ml.uri, ml.run_id, tags={"salt.selected_head": out["selected_head"]},
                metrics=_metrics(out), artifacts={"": png}, json_artifacts={"probe_result.json": out},
            )  # fmt: skip
            out["mlflow"]["training_run_metric"] = tracking.log_into_training_run(
                ml.uri, ml.pretrain_id, {f"probe/{task}/top1": out["top1"]}, meta.get("step")
            )
            print(
                f"mlflow: run {ml.run_id} in experiment {ml.experiment!r} at {redact_uri(ml.uri)}"
            )
    if args.output_json:
        path = Path(args.output_json)
        tmp_path = path.with_name(f".{path.name}.tmp")
        tmp_path.write_text(json.dumps(out, indent=2))
        os.replace(tmp_path, path)
        print(f"wrote {path}")


@cli_entry("salt-probe", also=(FileNotFoundError, ValueError, MemoryError))
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before torch loads: `--help` stays fast
    from .state import Interrupted

    try:
        run(args)
    except Interrupted as stop:
        print(f"salt-probe: {stop}", file=sys.stderr)
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
