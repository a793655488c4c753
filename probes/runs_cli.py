"""`salt-runs`: relate student training loss to probe accuracy, and select a checkpoint by loss.

    salt-runs compare --experiment NAME [--tracking-uri URI] [--plot loss_vs_top1.png]
    salt-runs select  --experiment NAME [--tracking-uri URI] [--force]

`compare` reads the experiment's probe runs (salt-probe), keeps one row per student checkpoint,
fits probe top-1 on training loss (least squares, R²) and computes Spearman ρ, prints the table,
writes the scatter plot and logs both as a `salt.kind=compare` run. `select` names the checkpoint
with the lowest training loss among probe runs and the checkpoints of the experiment's training
runs (their `salt.checkpoint_dir`); no probe is needed for that, which is the point of SALT's
loss. Both refuse students of different teachers (exit 2) unless `--force` or `--teacher` picks one.
The store defaults to $MLFLOW_TRACKING_URI, else `sqlite:///runs/mlflow.db` (training's default).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from salt.probes import tracking
from salt.probes.compare import (
    CheckpointRow,
    MixedTeachersError,
    check_one_teacher,
    fit_loss_accuracy,
    format_table,
    plot_loss_accuracy,
    rows_from_runs,
)


class UsageError(ValueError):
    """Bad input to salt-runs (exit status 2)."""


def _store(uri_arg: str | None) -> str:
    uri = tracking.resolve_tracking_uri(uri_arg)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise UsageError(f"no MLflow store at {uri} (pass --tracking-uri)")
    return uri


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
    uri = _store(args.tracking_uri)
    rows = _one_protocol(
        _filter(rows_from_runs(tracking.search(uri, args.experiment)), args), args.protocol
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
    fit = fit_loss_accuracy([r.train_loss for r in usable], [r.top1 for r in usable])
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
            uri, args.experiment, run_name="compare-loss-vs-top1",
            tags={"salt.kind": "compare", "salt.teacher_sha256": usable[0].teacher_sha256},
            metrics={f"compare/{k}": v for k, v in fit.items()},
            artifacts={"": plot}, json_artifacts={"compare.json": out},
        )  # fmt: skip
    return out


def _checkpoint_rows(uri: str, experiment: str) -> tuple[list[CheckpointRow], int]:
    """Rows for checkpoint files in the training runs' `salt.checkpoint_dir` (metadata only)."""
    from salt.encoder_io import read_encoder_state

    rows, unreadable = [], 0
    for run in tracking.search(uri, experiment, kind="train"):
        d = run.data.tags.get("salt.checkpoint_dir")
        if not d or not Path(d).is_dir():
            continue
        for f in sorted([*Path(d).glob("*.ckpt"), *Path(d).glob("*.safetensors")]):
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


def select(args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint with the lowest training loss (one teacher unless forced)."""
    uri = _store(args.tracking_uri)
    rows = {r.checkpoint: r for r in rows_from_runs(tracking.search(uri, args.experiment))}
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
    return {
        "selected": best.to_dict(),
        "candidates": [r.to_dict() for r in cands],
        "unreadable": unreadable,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="salt-runs", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in [
        ("compare", "fit probe top-1 on student training loss (R², Spearman ρ) and plot it"),
        ("select", "name the checkpoint with the lowest training loss"),
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
    sub.choices["select"].add_argument(
        "--probed-only", action="store_true", help="only checkpoints that have a probe run"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = compare(args) if args.command == "compare" else select(args)
    except (MixedTeachersError, UsageError, LookupError) as e:
        print(f"salt-runs {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
