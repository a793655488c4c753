"""`salt-runs`: relate student training loss to probe accuracy, select (and register) a
checkpoint by loss, and replay a run's tracking spool.

    salt-runs compare --experiment NAME [--tracking-uri URI] [--plot loss_vs_top1.png]
    salt-runs select  --experiment NAME [--tracking-uri URI] [--force] [--register MODEL]
    salt-runs sync    RUN_DIR [--tracking-uri URI]

`compare` reads the experiment's probe runs (salt-probe), keeps one row per student checkpoint,
fits probe top-1 on training loss (least squares, R²) and computes Spearman ρ, prints the table,
writes the scatter plot and logs both as a `salt.kind=compare` run. `select` names the checkpoint
with the lowest training loss among probe runs and the checkpoints of the experiment's training
runs (their `salt.checkpoint_dir`, or `salt.run_relpath` below the store's folder when `runs/`
was moved); no probe is needed for that, which is the point of SALT's loss. `--register MODEL`
then creates a version of the registered model MODEL whose source is the checkpoint file itself
(nothing is copied), linked to its training run and tagged with its step, loss and teacher. Both
refuse students of different teachers (exit 2) unless `--force` or `--teacher` picks one. `sync`
sends what a training run spooled while its store was unreachable. The store defaults to
$MLFLOW_TRACKING_URI, else `sqlite:///runs/mlflow.db` (training's default). Torch and MLflow are
imported by the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salt.errors import UsageError, cli_entry
from salt.tracking_uri import redact_uri, relative_to, resolve_recorded, store_dir

from . import tracking

if TYPE_CHECKING:
    from .compare import CheckpointRow


def _store(uri_arg: str | None) -> str:
    uri = tracking.resolve_tracking_uri(uri_arg)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise UsageError(f"no MLflow store at {uri} (pass --tracking-uri)")
    return uri


def _search(uri: str, experiment: str, kind: str = tracking.PROBE_KIND) -> list[Any]:
    try:
        return tracking.search(uri, experiment, kind=kind)
    except LookupError as e:  # no such experiment
        raise UsageError(str(e)) from None


def _filter(rows: list[CheckpointRow], args: argparse.Namespace) -> list[CheckpointRow]:
    if args.stage != "any":
        rows = [r for r in rows if r.stage == args.stage]
    if args.teacher:
        rows = [r for r in rows if r.teacher_sha256.startswith(args.teacher)]
    return rows


def _one_protocol(rows: list[CheckpointRow], wanted: str | None) -> list[CheckpointRow]:
    if wanted:
        rows = [r for r in rows if r.protocol == wanted]
    protocols = sorted({r.protocol for r in rows})
    if len(protocols) > 1:
        raise UsageError(
            f"probe runs of {len(protocols)} different protocols {protocols}: accuracies are "
            "comparable only within one; choose with --protocol"
        )
    return rows


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Fit top-1 on loss over the experiment's probe runs; table, plot, compare run."""
    from .compare import (
        check_one_teacher,
        fit_loss_accuracy,
        format_table,
        plot_loss_accuracy,
        rows_from_runs,
    )

    uri = _store(args.tracking_uri)
    rows = _one_protocol(
        _filter(rows_from_runs(_search(uri, args.experiment)), args), args.protocol
    )
    usable = [r for r in rows if r.train_loss is not None and r.top1 is not None]
    if len(usable) < len(rows):
        print(
            f"{len(rows) - len(usable)} probe run(s) without a training loss left out",
            file=sys.stderr,
        )
    check_one_teacher(usable, args.force)
    if len(usable) < 2:
        raise UsageError(
            f"{len(usable)} {args.stage} checkpoint(s) with loss and probe top-1 in experiment "
            f"{args.experiment!r}: need at least 2 (3 or more to mean anything)"
        )
    try:
        fit = fit_loss_accuracy([r.train_loss for r in usable], [r.top1 for r in usable])
    except ValueError as e:  # e.g. every checkpoint has the same loss
        raise UsageError(str(e)) from None
    print(format_table(usable))
    print(
        f"fit: top1 = {fit['slope']:.4f}·loss + {fit['intercept']:.4f}   "
        f"R² = {fit['r2']:.4f}   Spearman ρ = {fit['spearman']:.4f}   (n = {fit['n']})"
    )
    plot = Path(args.plot or f"{args.experiment}_loss_vs_top1.png")
    plot_loss_accuracy(usable, fit, plot, title=f"{args.experiment}: {fit['n']} checkpoints")
    print(f"wrote {plot}")
    out = {"experiment": args.experiment, "fit": fit, "rows": [r.to_dict() for r in usable]}
    if not args.no_log:
        out["run_id"] = tracking.log_run(
            uri,
            args.experiment,
            run_name="compare-loss-vs-top1",
            tags={"salt.kind": "compare", "salt.teacher_sha256": usable[0].teacher_sha256},
            metrics={f"compare/{k}": v for k, v in fit.items()},
            artifacts={"": plot},
            json_artifacts={"compare.json": out},
        )
    return out


def checkpoint_dir_of(run: Any, uri: str) -> Path | None:
    """A training run's checkpoint folder: below the store's folder via ``salt.run_relpath``
    when that exists (``runs/`` moved with its store), else the recorded absolute path."""
    tags = run.data.tags
    absolute, run_dir = tags.get("salt.checkpoint_dir"), tags.get("salt.run_dir")
    rel = None
    if tags.get("salt.run_relpath") and absolute and run_dir:
        inner = relative_to(absolute, run_dir)
        rel = f"{tags['salt.run_relpath']}/{inner}" if inner is not None else None
    found = resolve_recorded(absolute, rel, store_dir(uri))
    return found if found is not None and found.is_dir() else None


def _checkpoint_rows(uri: str, experiment: str) -> tuple[list[CheckpointRow], int]:
    """Rows for checkpoint files in the training runs' checkpoint folders (metadata only)."""
    from salt.encoder_io import read_encoder_state

    from .compare import CheckpointRow

    rows, unreadable = [], 0
    for run in _search(uri, experiment, kind="train"):
        d = checkpoint_dir_of(run, uri)
        if d is None:
            continue
        for f in sorted([*d.glob("*.ckpt"), *d.glob("*.safetensors")]):
            try:
                _, meta = read_encoder_state(f)
            except (ValueError, OSError) as e:
                print(f"skipped unreadable checkpoint {f}: {e}", file=sys.stderr)
                unreadable += 1
                continue
            teacher = meta.get("teacher") or {}
            rows.append(CheckpointRow(
                checkpoint=str(f.resolve()), step=meta.get("step"), stage=meta.get("stage", ""),
                teacher_sha256=teacher.get("sha256") or "", train_loss=meta.get("train_loss"),
                top1=None, random_top1=None, protocol="", run_id="",
                pretrain_run_id=meta.get("mlflow_run_id") or run.info.run_id,
            ))  # fmt: skip
    return rows, unreadable


def register(uri: str, name: str, row: CheckpointRow) -> dict[str, Any]:
    """A new version of registered model ``name`` whose source is ``row``'s checkpoint file.

    The source is the file's ``file://`` URI (no copy). A tracking server accepts a local source
    only inside a run's artifacts; there the source is ``runs:/<training run>/checkpoints/<file>``
    and the file's path is in the version's ``salt.checkpoint`` tag (as on every version).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    path = Path(row.checkpoint)
    if not path.exists():
        raise UsageError(f"selected checkpoint {path} does not exist (moved or deleted?)")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.create_registered_model(name, description="salt checkpoints selected by loss")
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run_id = row.pretrain_run_id or None
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException:
            run_id = None  # the training run lives in another store
    tags = {
        "salt.checkpoint": str(path.resolve()),
        "salt.step": "" if row.step is None else str(row.step),
        "salt.train_loss": "" if row.train_loss is None else repr(row.train_loss),
        "salt.stage": row.stage,
        "salt.teacher_sha256": row.teacher_sha256,
        "salt.selected_by": "lowest train_loss",
    }
    rel = relative_to(path, store_dir(uri))
    if rel is not None:
        tags["salt.checkpoint_relpath"] = rel
    description = f"{path.name}: step {row.step}, train_loss {row.train_loss}"
    try:
        version = client.create_model_version(
            name, path.resolve().as_uri(), run_id=run_id, tags=tags, description=description
        )
    except MlflowException as e:
        if e.error_code != "INVALID_PARAMETER_VALUE" or not run_id:
            raise UsageError(f"cannot register {path} as {name!r}: {e.message}") from None
        source = f"runs:/{run_id}/checkpoints/{path.name}"
        version = client.create_model_version(
            name, source, run_id=run_id, tags=tags, description=description
        )
    return {"name": name, "version": int(version.version), "source": version.source,
            "run_id": run_id, "checkpoint": str(path.resolve())}  # fmt: skip


def select(args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint with the lowest training loss (one teacher unless forced)."""
    from .compare import check_one_teacher, format_table, rows_from_runs

    uri = _store(args.tracking_uri)
    rows = {r.checkpoint: r for r in rows_from_runs(_search(uri, args.experiment))}
    unreadable = 0
    if not args.probed_only:
        found, unreadable = _checkpoint_rows(uri, args.experiment)
        for r in found:
            rows.setdefault(r.checkpoint, r)
    cands = [r for r in _filter(list(rows.values()), args) if r.train_loss is not None]
    if not cands:
        raise UsageError(
            f"no {args.stage} checkpoint with a training loss in experiment {args.experiment!r}"
        )
    check_one_teacher(cands, args.force)
    cands.sort(key=lambda r: (r.train_loss, -(r.step or 0)))
    best = cands[0]
    print(format_table(cands, mark=best.checkpoint))
    print(f"selected: {best.checkpoint} (train_loss {best.train_loss:.4f}, step {best.step})")
    if unreadable:
        print(f"{unreadable} unreadable checkpoint file(s) skipped", file=sys.stderr)
    out = {
        "selected": best.to_dict(),
        "candidates": [r.to_dict() for r in cands],
        "unreadable": unreadable,
    }
    if args.register:
        out["registered"] = reg = register(uri, args.register, best)
        print(f"registered: model {reg['name']!r} version {reg['version']} -> {reg['source']}")
    return out


def sync(args: argparse.Namespace) -> dict[str, Any]:
    """Replay ``RUN_DIR``'s tracking spool into its MLflow run."""
    from salt.tracking import replay_spool

    run_dir = Path(args.run_dir)
    if not (run_dir / "run.json").is_file():
        raise UsageError(f"{run_dir}: not a run folder (no run.json)")
    out = replay_spool(run_dir, args.tracking_uri)
    uri = redact_uri(args.tracking_uri) if args.tracking_uri else "the store in run.json"
    print(
        f"replayed {out['replayed']} spooled operation(s) into run {out['run_id']} at {uri}; "
        f"{out['backlog']} left"
    )
    if not out["ok"]:
        raise UsageError(f"store still unreachable: {out['error']}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="salt-runs", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in [
        ("compare", "fit probe top-1 on student training loss (R², Spearman ρ) and plot it"),
        ("select", "name (and optionally register) the checkpoint with the lowest training loss"),
    ]:
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--experiment", required=True)
        s.add_argument(
            "--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db"
        )
        s.add_argument(
            "--stage", default="student", help="student | teacher | any (default student)"
        )
        s.add_argument(
            "--teacher", help="only students of the teacher whose sha256 starts with this"
        )
        s.add_argument("--force", action="store_true", help="allow students of different teachers")
        s.add_argument("--output-json", help="also write the result here")
    c = sub.choices["compare"]
    c.add_argument("--protocol", help="only probe runs of this salt.probe_protocol tag")
    c.add_argument("--plot", help="scatter PNG path (default <experiment>_loss_vs_top1.png)")
    c.add_argument("--no-log", action="store_true", help="do not log a compare run to MLflow")
    sel = sub.choices["select"]
    sel.add_argument(
        "--probed-only", action="store_true", help="only checkpoints that have a probe run"
    )
    sel.add_argument(
        "--register",
        metavar="MODEL",
        help="create a version of registered model MODEL pointing at the selected checkpoint",
    )
    y = sub.add_parser("sync", help="replay a training run's tracking spool into MLflow")
    y.add_argument("run_dir", help="the run folder (holds run.json and tracking-spool.jsonl)")
    y.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else run.json's")
    y.add_argument("--output-json", help="also write the result here")
    return p


@cli_entry("salt-runs")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = {"compare": compare, "select": select, "sync": sync}[args.command](args)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
