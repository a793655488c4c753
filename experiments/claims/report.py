"""The study's verdicts, tables and plots, computed from its ``results.json`` only.

    python experiments/claims/report.py OUT/results.json [--readme experiments/claims/README.md]
        [--log experiments/LOG.md] [--plots-dir experiments/claims]

run.py calls ``write_outputs`` at its end (``OUT/table.md`` and the two plots); run by hand with
``--readme`` / ``--log`` it also fills the marked sections of the study's README
(``<!-- claims:NAME:start -->`` … ``<!-- claims:NAME:end -->``) and the experiments log entry.

Decision rules (fixed before any result was seen; README "How the verdicts are decided"):
a difference "holds" when it is positive in every seed and its mean exceeds ``MARGIN`` top-1, for
both probe kinds; "does not hold" when its mean is negative and no seed exceeds ``MARGIN``, for both
kinds; anything else is "inconclusive". The loss–accuracy claim holds when every seed's fit has
R² ≥ ``R2_HOLDS`` with a negative slope, for both kinds; it does not hold when every seed has
R² < ``R2_FAILS`` or a non-negative slope. A comparison whose better side is within ``MARGIN`` of
chance is inconclusive (nothing was learned); an EMA baseline collapsed in most seeds makes claim
(b) inconclusive. Collapsed = token RankMe or std/RMS below ``COLLAPSE`` × the random-init encoder's.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

KINDS = ("attentive", "linear")
MARGIN = 0.01
R2_HOLDS, R2_FAILS = 0.8, 0.5
COLLAPSE = 0.1
PLOTS = ("top1_vs_flops.png", "loss_vs_top1.png")


# ----------------------------------------------------------------------------- numbers
def _ms(values: list[float], fmt: str = ".3f") -> str:
    """``mean ± std`` of the finite values (``(n=1)`` if one), or ``–``."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "–"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):{fmt}} ± {sd:{fmt.lstrip('+')}}" + ("" if len(v) > 1 else " (n=1)")


def _final(run: dict | None) -> dict | None:
    if not run or run.get("status") != "done" or not run.get("probes"):
        return None
    return run["probes"][-1]


class Study:
    """Per-seed views of one ``results.json``."""

    def __init__(self, doc: dict) -> None:
        self.doc, self.cfg = doc, doc["meta"]["config"]
        self.runs: dict[str, dict] = doc.get("runs", {})
        self.seeds, self.ts = self.cfg["seeds"], self.cfg["teacher_size"]
        self.up = [s for s in self.cfg["student_sizes"] if s != self.ts]
        self.chance = 1.0 / self.cfg["task"]["num_classes"]
        self.choice = doc.get("ema_choice")

    def run(self, name: str) -> dict | None:
        r = self.runs.get(name)
        return r if r and r.get("status") == "done" else None

    def teacher(self, s: int) -> dict | None:
        return _final(self.run(f"teacher-s{s}"))

    def student(self, s: int, size: str | None = None) -> dict | None:
        return _final(self.run(f"student-{size or self.ts}-s{s}"))

    def random(self, s: int) -> dict | None:
        return _final(self.run(f"random-s{s}"))

    def ema_run(self, s: int) -> dict | None:
        if s == self.cfg["grid_seed"]:
            return self.run(self.choice["cell"]) if self.choice else None
        return self.run(f"ema-s{s}")

    def ema(self, s: int) -> dict | None:
        return _final(self.ema_run(s))

    def ema_curve(self, s: int) -> list[dict]:
        rows = list((self.ema_run(s) or {}).get("probes") or [])
        if s == self.cfg["grid_seed"]:
            rows += (self.run(f"ema-curve-s{s}") or {}).get("probes") or []
        return sorted(rows, key=lambda r: r["step"])

    def student_curve(self, s: int) -> list[dict]:
        return sorted(
            (self.run(f"student-{self.ts}-s{s}") or {}).get("probes") or [], key=lambda r: r["step"]
        )

    def teacher_flops(self, s: int) -> float | None:
        r = self.run(f"teacher-s{s}")
        return r["flops"] if r else None

    def collapsed(self, row: dict | None, s: int) -> bool | None:
        """Token RankMe or std/RMS under ``COLLAPSE`` × the random-init encoder's (same seed)."""
        ref = self.random(s)
        if row is None or ref is None:
            return None
        h, r = row["health"], ref["health"]
        return (
            h["rankme_tokens"] < COLLAPSE * r["rankme_tokens"]
            or h["std_ratio"] < COLLAPSE * r["std_ratio"]
        )


def _top(row: dict | None, kind: str) -> float | None:
    return None if row is None else row[kind]["top1"]


def _diff_verdict(pairs: dict[str, list[tuple[float, float]]], chance: float) -> str:
    """Verdict on ``better − worse`` per seed, for every kind (see the module docstring)."""
    per_kind = []
    for kind in KINDS:
        ps = pairs[kind]
        if len(ps) < 2:
            return "inconclusive (fewer than 2 seeds finished)"
        if (
            max(statistics.mean(a for a, _ in ps), statistics.mean(b for _, b in ps))
            < chance + MARGIN
        ):
            return "inconclusive (both sides at chance: nothing learned at this scale)"
        d = [a - b for a, b in ps]
        m = statistics.mean(d)
        if all(x > 0 for x in d) and m > MARGIN:
            per_kind.append("holds")
        elif m < 0 and all(x < MARGIN for x in d):
            per_kind.append("does not hold")
        else:
            per_kind.append("inconclusive")
    if len(set(per_kind)) == 1:
        return per_kind[0]
    return (
        "inconclusive ("
        + ", ".join(f"{k}: {v}" for k, v in zip(KINDS, per_kind, strict=True))
        + ")"
    )


def _pairs(study: Study, better, worse) -> dict[str, list[tuple[float, float]]]:
    out = {k: [] for k in KINDS}
    for s in study.seeds:
        a, b = better(s), worse(s)
        if a is not None and b is not None:
            for k in KINDS:
                out[k].append((a[k]["top1"], b[k]["top1"]))
    return out


def _pair_text(name_a: str, name_b: str, pairs: dict) -> str:
    parts = []
    for k in KINDS:
        ps = pairs[k]
        parts.append(
            f"{k}: {name_a} {_ms([a for a, _ in ps])} vs {name_b} {_ms([b for _, b in ps])}, "
            f"Δ {_ms([a - b for a, b in ps], '+.3f')}"
        )
    return "; ".join(parts)


def loss_fits(study: Study) -> dict[str, list[dict]]:
    """Per kind, per seed: least-squares fit of top-1 on the student's training loss."""
    from salt.probes.compare import fit_loss_accuracy

    out: dict[str, list[dict]] = {k: [] for k in KINDS}
    for s in study.seeds:
        rows = [r for r in study.student_curve(s) if r.get("train_loss") is not None]
        if len(rows) < 3:
            continue
        loss = [r["train_loss"] for r in rows]
        for k in KINDS:
            top = [r[k]["top1"] for r in rows]
            try:
                fit = fit_loss_accuracy(loss, top)
            except ValueError:
                continue
            best_by_loss = top[loss.index(min(loss))]
            out[k].append(
                {"seed": s, **fit, "regret": max(top) - best_by_loss, "loss": loss, "top1": top}
            )
    return out


def verdicts(study: Study) -> list[dict[str, str]]:
    """The claims table: claim, verdict, numbers."""
    rows = []
    for size in [study.ts, *study.up]:
        pairs = _pairs(study, lambda s, z=size: study.student(s, z), study.teacher)
        rows.append(
            {
                "claim": f"(a) a {size} student beats its frozen {study.ts} teacher",
                "verdict": _diff_verdict(pairs, study.chance),
                "numbers": _pair_text("student", "teacher", pairs),
            }
        )
    pairs = _pairs(study, study.student, study.ema)
    verdict = _diff_verdict(pairs, study.chance)
    collapsed = [s for s in study.seeds if study.collapsed(study.ema(s), s)]
    note = ""
    if collapsed:
        note = f" EMA target collapsed in seed(s) {collapsed}."
        if len(collapsed) * 2 > len(study.seeds):
            verdict = "inconclusive (the EMA baseline collapsed in most seeds)"
    flops = [
        (study.teacher_flops(s) or 0) + study.student(s)["flops"]
        for s in study.seeds
        if study.student(s) and study.ema(s)
    ]
    ema_flops = [study.ema(s)["flops"] for s in study.seeds if study.student(s) and study.ema(s)]
    rows.append(
        {
            "claim": f"(b) SALT ({study.ts} student) beats the V-JEPA EMA baseline at matched FLOPs",
            "verdict": verdict,
            "numbers": _pair_text("SALT", "EMA", pairs)
            + f"; training TFLOP SALT {_ms([f / 1e12 for f in flops], '.1f')}, "
            f"EMA {_ms([f / 1e12 for f in ema_flops], '.1f')}." + note,
        }
    )
    fits = loss_fits(study)
    per_kind = []
    for k in KINDS:
        f = fits[k]
        if len(f) < 2:
            per_kind.append("inconclusive")
        elif all(x["r2"] >= R2_HOLDS and x["slope"] < 0 for x in f):
            per_kind.append("holds")
        elif all((not x["r2"] >= R2_FAILS) or x["slope"] >= 0 for x in f):
            per_kind.append("does not hold")
        else:
            per_kind.append("inconclusive")
    v = per_kind[0] if len(set(per_kind)) == 1 else "inconclusive (" + ", ".join(
        f"{k}: {x}" for k, x in zip(KINDS, per_kind, strict=True)) + ")"  # fmt: skip
    n = [len(study.student_curve(s)) for s in study.seeds]
    rows.append({
        "claim": f"(c) the {study.ts} student's training loss predicts its probe top-1 "
        f"({min(n) if n else 0}–{max(n) if n else 0} checkpoints per seed)",
        "verdict": v,
        "numbers": "; ".join(
            f"{k}: R² {_ms([x['r2'] for x in fits[k]], '.2f')}, Spearman ρ "
            f"{_ms([x['spearman'] for x in fits[k]], '+.2f')}, top-1 lost by choosing the "
            f"lowest-loss checkpoint {_ms([x['regret'] for x in fits[k]])}" for k in KINDS),
    })  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- tables
def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def sections(study: Study) -> dict[str, str]:
    """Markdown of every README section, by name."""
    meta, plan = study.doc["meta"], study.doc.get("plan", {})
    cfg = study.cfg
    out: dict[str, str] = {}
    out["verdicts"] = _md(
        ["claim", "verdict at this scale", "numbers (mean ± std over seeds)"],
        [[r["claim"], f"**{r['verdict']}**", r["numbers"]] for r in verdicts(study)],
    )

    def enc_row(label: str, rows: list, flops: list) -> list[str]:
        coll = [s for s, r in zip(study.seeds, rows, strict=True) if study.collapsed(r, s)]
        ok = [r for r in rows if r]
        return [label, f"{len(ok)}/{len(rows)}", _ms([f / 1e12 for f in flops if f is not None], ".1f"),
                *(_ms([_top(r, k) for r in ok]) for k in KINDS),
                _ms([r["health"]["rankme_tokens"] for r in ok], ".1f"),
                _ms([r["health"]["std_ratio"] for r in ok], ".2f"), str(coll or "–")]  # fmt: skip

    S = study.seeds
    tf = [study.teacher_flops(s) for s in S]
    enc = [
        enc_row("random init", [study.random(s) for s in S], [0.0] * len(S)),
        enc_row(f"pixel teacher ({study.ts})", [study.teacher(s) for s in S], tf),
        enc_row(f"SALT student ({study.ts})", [study.student(s) for s in S],
                [(t or 0) + r["flops"] if r else None for t, r in zip(tf, [study.student(s) for s in S], strict=True)]),
    ]  # fmt: skip
    for size in study.up:
        st = [study.student(s, size) for s in S]
        enc.append(enc_row(f"SALT student ({size})", st,
                           [(t or 0) + r["flops"] if r else None for t, r in zip(tf, st, strict=True)]))  # fmt: skip
    em = [study.ema(s) for s in S]
    enc.append(
        enc_row(
            f"V-JEPA EMA, target encoder ({study.ts})", em, [r["flops"] if r else None for r in em]
        )
    )
    out["encoders"] = (
        _md(
            [
                "encoder",
                "seeds",
                "train TFLOP",
                "attentive top-1",
                "linear top-1",
                "RankMe (tokens)",
                "std / RMS",
                "collapsed seeds",
            ],
            enc,
        )
        + f"\n\nChance is {study.chance:.3f} ({cfg['task']['num_classes']} classes). "
        "Train TFLOP (FlopCounterMode, forward + backward) includes the teacher's pretraining for "
        "SALT students."
    )
    grid = []
    for m in cfg["ema_momenta"]:
        for lr in cfg["ema_lrs"]:
            name = f"ema-m{m:g}-lr{lr:g}-s{cfg['grid_seed']}"
            r = _final(study.run(name))
            chosen = "**chosen**" if study.choice and study.choice["cell"] == name else ""
            status = (study.runs.get(name) or {}).get("status", "not run")
            if r is None:
                grid.append([f"{m:g}", f"{lr:g}", status, "–", "–", "–", "–", "–", chosen])
                continue
            grid.append([f"{m:g}", f"{lr:g}", f"{r['heldout_top1']:.3f}", f"{r['attentive']['top1']:.3f}",
                         f"{r['linear']['top1']:.3f}", f"{r['health']['rankme_tokens']:.1f}",
                         f"{r['health']['std_ratio']:.2f}",
                         str(bool(study.collapsed(r, cfg["grid_seed"]))), chosen])  # fmt: skip
    out["grid"] = _md(["momentum", "peak lr", "held-out top-1 (selects)", "val attentive",
                       "val linear", "RankMe", "std / RMS", "collapsed", ""], grid)  # fmt: skip
    ctl = []
    for label, run_name in (
        ("random init", "random-s{}"),
        (f"SALT student ({study.ts})", f"student-{study.ts}-s{{}}"),
    ):
        rows = [(study.run(run_name.format(s)) or {}).get("controls") or {} for s in S]
        finals = [_final(study.run(run_name.format(s))) for s in S]
        for kind in KINDS:
            ctl.append([label, kind, _ms([_top(r, kind) for r in finals if r]),
                        *(_ms([c[n][kind]["top1"] for c in rows if n in c]) for n in ("single_frame", "shuffled"))])  # fmt: skip
    out["controls"] = _md(
        ["encoder", "probe", "clips as made", "single frame (×T)", "frames shuffled"], ctl
    )
    fits = loss_fits(study)
    sel = [[k, str(x["seed"]), str(x["n"]), f"{x['r2']:.3f}", f"{x['spearman']:+.3f}", f"{x['slope']:.3f}",
            f"{x['regret']:.3f}"] for k in KINDS for x in fits[k]]  # fmt: skip
    out["selection"] = _md(
        ["probe", "seed", "checkpoints", "R²", "Spearman ρ", "slope", "top-1 lost by lowest loss"],
        sel,
    )
    truncated = [n for n, r in study.runs.items() if r.get("truncated")]
    bad = {n: r.get("status") for n, r in study.runs.items() if r.get("status") != "done"}
    dev = (plan.get("device_info") or {}).get("name", cfg["device"])
    steps = plan.get("steps", {})
    out["run"] = "\n".join([
        f"- ran {meta.get('started')} on {dev} (torch {(plan.get('device_info') or {}).get('torch', '?')}), "
        f"wall {meta.get('wall_s')} s, preset `{cfg['preset']}`, finished: {meta.get('finished')}",
        f"- steps: teacher {steps.get('teacher')}, students {steps.get('student')}, EMA {steps.get('ema')} "
        f"(FLOP-matched; plan scale {steps.get('scale')}), batch {cfg['batch_size']}, "
        f"{cfg['task']['frames']}×{cfg['task']['size']}² clips, seeds {cfg['seeds']}",
        "- GFLOP per optimizer step: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in (plan.get("flops_per_step") or {}).items()),
        "- ms per step (one process alone): " + ", ".join(f"{k} {v:.1f}" for k, v in (plan.get("ms_per_step") or {}).items()),
        f"- EMA cell chosen on held-out probe-train: {study.choice['cell'] if study.choice else '–'}",
        f"- truncated at the deadline: {truncated or 'none'}; not done: {bad or 'none'}",
    ])  # fmt: skip
    return out


# ----------------------------------------------------------------------------- plots
def plots(study: Study, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, kind in zip(axes, KINDS, strict=True):
        for label, curve, offset, style in (
            (f"SALT {study.ts} student (+ teacher FLOPs)", study.student_curve, True, "o-"),
            (f"V-JEPA EMA {study.ts} (target encoder)", study.ema_curve, False, "s--"),
        ):
            by_step: dict[int, list[tuple[float, float]]] = {}
            for s in study.seeds:
                base = (study.teacher_flops(s) or 0.0) if offset else 0.0
                for r in curve(s):
                    by_step.setdefault(r["step"], []).append((base + r["flops"], r[kind]["top1"]))
            if by_step:
                xs = [statistics.mean(x for x, _ in v) / 1e12 for _, v in sorted(by_step.items())]
                ys = [statistics.mean(y for _, y in v) for _, v in sorted(by_step.items())]
                es = [
                    statistics.stdev([y for _, y in v]) if len(v) > 1 else 0
                    for _, v in sorted(by_step.items())
                ]
                ax.errorbar(xs, ys, yerr=es, fmt=style, capsize=3, label=label)
        t = [
            (study.teacher_flops(s), _top(study.teacher(s), kind))
            for s in study.seeds
            if study.teacher(s)
        ]
        if t:
            ax.errorbar([statistics.mean(x for x, _ in t) / 1e12], [statistics.mean(y for _, y in t)],
                        fmt="^", color="k", label=f"pixel teacher {study.ts}")  # fmt: skip
        for size in study.up:
            u = [((study.teacher_flops(s) or 0) + study.student(s, size)["flops"], _top(study.student(s, size), kind))
                 for s in study.seeds if study.student(s, size)]  # fmt: skip
            if u:
                ax.errorbar([statistics.mean(x for x, _ in u) / 1e12], [statistics.mean(y for _, y in u)],
                            fmt="D", label=f"SALT {size} student")  # fmt: skip
        rnd = [_top(study.random(s), kind) for s in study.seeds if study.random(s)]
        if rnd:
            ax.axhline(statistics.mean(rnd), color="gray", ls=":", label="random init")
        ax.axhline(study.chance, color="r", ls=":", lw=0.8, label="chance")
        ax.set_xlabel("training TFLOP (FlopCounterMode; SALT includes its teacher)")
        ax.set_title(f"{kind} probe")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val top-1 (mean ± std over seeds)")
    axes[1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    paths.append(out_dir / PLOTS[0])
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fits = loss_fits(study)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, kind in zip(axes, KINDS, strict=True):
        for f in fits[kind]:
            (line,) = ax.plot(
                f["loss"],
                f["top1"],
                "o",
                label=f"seed {f['seed']}: R² {f['r2']:.2f}, ρ {f['spearman']:+.2f}",
            )
            lo, hi = min(f["loss"]), max(f["loss"])
            ax.plot([lo, hi], [f["slope"] * lo + f["intercept"], f["slope"] * hi + f["intercept"]],
                    "-", color=line.get_color(), alpha=0.7)  # fmt: skip
        ax.set_xlabel(f"{study.ts} student training loss (mean since the previous checkpoint)")
        ax.set_ylabel(f"val top-1, {kind} probe")
        ax.set_title(f"loss vs top-1 over checkpoints ({kind})")
        ax.grid(alpha=0.3)
        if fits[kind]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / PLOTS[1])
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- outputs
def write_outputs(doc: dict, out_dir: Path) -> list[Path]:
    """``table.md`` with every section, and the plots, into ``out_dir``."""
    study = Study(doc)
    secs = sections(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "table.md"
    table.write_text("\n\n".join(f"## {k}\n\n{v}" for k, v in secs.items()) + "\n")
    written = [table]
    try:
        written += plots(study, out_dir)
    except ImportError as e:
        print(f"no plots ({e}); rerun report.py where matplotlib is installed", file=sys.stderr)
    return written


def fill(text: str, name: str, body: str) -> str:
    """Replace the body of ``<!-- claims:name:start -->`` … ``<!-- claims:name:end -->``."""
    pattern = re.compile(
        rf"(<!-- claims:{name}:start -->\n).*?(\n<!-- claims:{name}:end -->)", re.S
    )
    if not pattern.search(text):
        raise ValueError(f"no claims:{name} section markers")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def log_entry(study: Study) -> str:
    date = (study.doc["meta"].get("started") or time.strftime("%Y-%m-%d"))[:10]
    lines = [f"### {date} — claims study ({study.cfg['preset']}, seeds {study.seeds})", ""]
    lines += [f"- {r['claim']}: **{r['verdict']}** — {r['numbers']}" for r in verdicts(study)]
    lines += ["", sections(study)["run"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="tables and plots of a claims study results.json")
    p.add_argument("results", help="results.json written by run.py")
    p.add_argument("--out", help="where table.md and the plots go (default: beside results.json)")
    p.add_argument("--readme", help="fill this README's claims:* sections")
    p.add_argument("--log", help="fill this experiments log's claims:log section")
    p.add_argument("--plots-dir", help="also copy the plots here (e.g. experiments/claims)")
    args = p.parse_args(argv)
    doc = json.loads(Path(args.results).read_text())
    out = Path(args.out) if args.out else Path(args.results).parent
    written = write_outputs(doc, out)
    study = Study(doc)
    if args.plots_dir:
        for path in written[1:]:
            shutil.copy(path, Path(args.plots_dir) / path.name)
    if args.readme:
        text = Path(args.readme).read_text()
        for name, body in sections(study).items():
            text = fill(text, name, body)
        Path(args.readme).write_text(text)
    if args.log:
        text = Path(args.log).read_text()
        Path(args.log).write_text(fill(text, "log", log_entry(study)))
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
