"""Loss ↔ accuracy model selection over logged probe runs (what `salt-runs` computes).

docs/method.md ("Choosing checkpoints by training loss"): across checkpoints of students of one fixed teacher, the student's
stage-2 training loss predicts its frozen-probe accuracy (R² 0.95–0.98 in the paper), so a run can
be selected by its loss. This module turns MLflow probe runs into one row per checkpoint, fits
top-1 on loss by least squares (R²), ranks them (Spearman ρ, torchmetrics), draws the scatter with
the fit line, and refuses to mix teachers: each teacher defines its own target space, so losses of
students of different teachers are not comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torchmetrics.functional import spearman_corrcoef

from salt.errors import UsageError


class MixedTeachersError(UsageError):
    """Rows come from students of different teachers: their losses are not comparable."""


@dataclass
class CheckpointRow:
    """One checkpoint's training loss and probe accuracy, as read from its probe run."""

    checkpoint: str
    step: int | None
    stage: str
    teacher_sha256: str
    train_loss: float | None
    top1: float | None
    random_top1: float | None
    protocol: str
    run_id: str
    pretrain_run_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int_or_none(s: str | None) -> int | None:
    try:
        return int(s) if s not in (None, "") else None
    except ValueError:
        return None


def rows_from_runs(runs: Iterable[Any]) -> list[CheckpointRow]:
    """One row per (checkpoint, protocol): the newest probe run wins (`runs` newest first)."""
    seen: dict[tuple[str, str], CheckpointRow] = {}
    for r in runs:
        t, m = r.data.tags, r.data.metrics
        row = CheckpointRow(
            checkpoint=t.get("salt.checkpoint", ""),
            step=_int_or_none(t.get("salt.checkpoint_step")),
            stage=t.get("salt.stage", ""),
            teacher_sha256=t.get("salt.teacher_sha256", ""),
            train_loss=m.get("pretrain/train_loss"),
            top1=m.get("probe/top1"),
            random_top1=m.get("probe/random_top1"),
            protocol=t.get("salt.probe_protocol", ""),
            run_id=r.info.run_id,
            pretrain_run_id=t.get("salt.pretrain_run_id", ""),
        )
        seen.setdefault((row.checkpoint, row.protocol), row)
    return sorted(seen.values(), key=lambda x: (x.step is None, x.step or 0, x.checkpoint))


def check_one_teacher(rows: Sequence[CheckpointRow], force: bool = False) -> None:
    """Raise `MixedTeachersError` if the rows' students have different teachers (unless forced)."""
    teachers = sorted({r.teacher_sha256 or "<none>" for r in rows})
    if len(teachers) > 1 and not force:
        counts = {t: sum((r.teacher_sha256 or "<none>") == t for r in rows) for t in teachers}
        listing = ", ".join(f"{t[:12]}… ({n} checkpoints)" for t, n in counts.items())
        raise MixedTeachersError(
            f"these students have {len(teachers)} different teachers ({listing}); each teacher "
            "defines its own target space, so their training losses are not comparable. Pick one "
            "with --teacher SHA_PREFIX, or pass --force to compare anyway."
        )


def fit_loss_accuracy(loss: Sequence[float], top1: Sequence[float]) -> dict[str, float]:
    """Least-squares line top1 = slope·loss + intercept, its R², and Spearman ρ(loss, top1).

    Returns:
        {"n", "slope", "intercept", "r2", "spearman"}; R² is NaN when top1 does not vary.
    """
    x = torch.tensor(list(loss), dtype=torch.float64)
    y = torch.tensor(list(top1), dtype=torch.float64)
    if len(x) < 2:
        raise ValueError(f"need at least 2 checkpoints with loss and accuracy to fit, got {len(x)}")
    if torch.unique(x).numel() < 2:
        raise ValueError("every checkpoint has the same training loss: nothing to fit")
    A = torch.stack([x, torch.ones_like(x)], dim=1)  # [n, 2]
    slope, intercept = torch.linalg.lstsq(A, y[:, None]).solution.flatten().tolist()
    resid = y - (slope * x + intercept)
    ss_tot = ((y - y.mean()) ** 2).sum().item()
    r2 = 1.0 - (resid**2).sum().item() / ss_tot if ss_tot > 0 else math.nan
    rho = float(spearman_corrcoef(x, y))
    return {"n": len(x), "slope": slope, "intercept": intercept, "r2": r2, "spearman": rho}


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: Sequence[CheckpointRow], mark: str | None = None) -> str:
    """Plain-text table of rows (step, loss, top-1, random floor, teacher, checkpoint)."""
    lines = [
        f"{'':2}{'step':>8}  {'train_loss':>10}  {'top1':>6}  {'random':>6}  {'teacher':12}  checkpoint"
    ]
    for r in rows:
        flag = "*" if mark is not None and r.checkpoint == mark else " "
        lines.append(
            f"{flag:2}{_fmt(r.step, 'd'):>8}  {_fmt(r.train_loss):>10}  {_fmt(r.top1):>6}  "
            f"{_fmt(r.random_top1):>6}  {(r.teacher_sha256 or '-')[:12]:12}  {r.checkpoint}"
        )
    return "\n".join(lines)


def plot_loss_accuracy(
    rows: Sequence[CheckpointRow], fit: dict[str, float], path: str | Path, title: str = ""
) -> Path:
    """Scatter of probe top-1 against student training loss, with the least-squares line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.train_loss for r in rows]
    ys = [r.top1 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(xs, ys, zorder=3, label="checkpoints")
    for r in rows:
        if r.step is not None:
            ax.annotate(
                str(r.step),
                (r.train_loss, r.top1),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    lo, hi = min(xs), max(xs)
    pad = 0.05 * (hi - lo or 1.0)
    line_x = [lo - pad, hi + pad]
    ax.plot(line_x, [fit["slope"] * v + fit["intercept"] for v in line_x], "r-",
            label=f"fit: R²={fit['r2']:.3f}, ρ={fit['spearman']:.3f}")  # fmt: skip
    floors = [r.random_top1 for r in rows if r.random_top1 is not None]
    if floors:
        ax.axhline(sum(floors) / len(floors), color="gray", ls="--", label="random-init encoder")
    ax.set_xlabel("student training loss")
    ax.set_ylabel("probe top-1 (validation)")
    ax.set_title(title or f"loss vs accuracy ({fit['n']} checkpoints)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
