"""Plain-text tables of benchmark results (what a device run prints last).

Variants that do not count FLOPs themselves (``lightning``, or a ``step`` run without
``flops``) borrow the count of a variant with the same stage, model and batch, since the model
work per step is the same; the MFU denominator is the variant's own matmul peak, else the run's
first ``peak`` result.
"""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, spec: str = ".1f", missing: str = "-") -> str:
    if value is None:
        return missing
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def fill_derived(results: list[dict]) -> None:
    """Add borrowed FLOPs / MFU to results that lack them (in place)."""
    peaks = [r["peak_tflops"] for r in results if r.get("kind") == "peak" and r.get("peak_tflops")]
    flops = {}
    for r in results:
        if r.get("flops"):
            flops.setdefault((r.get("stage"), r.get("model"), r.get("batch")), r["flops"])
    for r in results:
        if r.get("kind") not in ("step", "lightning") or not r.get("median_ms"):
            continue
        f = r.get("flops") or flops.get((r.get("stage"), r.get("model"), r.get("batch")))
        peak = r.get("peak_tflops") or (peaks[0] if peaks else None)
        if f and not r.get("mfu"):
            r["tflop_per_step"] = f / 1e12
            r["achieved_tflops"] = f / (r["median_ms"] * 1e-3) / 1e12
            if peak:
                r["mfu"] = r["achieved_tflops"] / peak


def format_table(results: list[dict]) -> str:
    """Step table, memory table and peak line, as fixed-width text."""
    fill_derived(results)
    lines = []
    peaks = [r for r in results if r.get("kind") == "peak"]
    for r in peaks:
        n = r.get("peak_n", 8192)
        lines.append(
            f"{r['name']}: bf16 matmul {n}^3 = {_fmt(r.get('peak_tflops'))} TFLOP/s"
            f"  [{r.get('status')}]"
        )
    head = (
        f"{'variant':<22}{'stage':<8}{'model':<13}{'B':>4} {'ckpt':<5}{'comp':<5}"
        f"{'attn':<9}{'ms/step':>9}{'sprd':>6}{'clips/s':>9}{'TFLOP':>7}{'TF/s':>7}"
        f"{'MFU':>6}{'GiB':>7}  status"
    )
    steps = [r for r in results if r.get("kind") in ("step", "lightning")]
    if steps:
        lines += ["", head, "-" * len(head)]
    for r in steps:
        attn = r.get("attn", "")
        used = r.get("attn_backend_used")
        if used and used != attn:
            attn = f"{attn}>{used}"
        lines.append(
            f"{r['name']:<22}{r.get('stage', ''):<8}{r.get('model', ''):<13}"
            f"{_fmt(r.get('batch'), 'd'):>4} {('on' if r.get('act_ckpt') else 'off'):<5}"
            f"{('on' if r.get('compile') else 'off'):<5}{attn:<9}"
            f"{_fmt(r.get('median_ms')):>9}{_fmt(r.get('spread'), '.0%'):>6}"
            f"{_fmt(r.get('clips_per_s')):>9}{_fmt(r.get('tflop_per_step')):>7}"
            f"{_fmt(r.get('achieved_tflops'), '.0f'):>7}{_fmt(r.get('mfu'), '.0%'):>6}"
            f"{_fmt(r.get('peak_mem_gib')):>7}  {str(r.get('status'))[:60]}"
        )
    mems = [r for r in results if r.get("kind") == "memory"]
    if mems:
        lines += [
            "",
            f"{'memory search':<22}{'student':<13}{'ckpt':<5}{'max B':>6}  "
            "per batch: B peakGiB clips/s (OOM = out of memory)",
        ]
    for r in mems:
        rows = " | ".join(
            f"{x['batch']} OOM"
            if x.get("oom")
            else f"{x['batch']} {_fmt(x.get('peak_mem_gib'))} {_fmt(x.get('clips_per_s'))}"
            for x in r.get("rows", [])
        )
        fit = r.get("max_batch_fit")
        note = "" if r.get("hit_oom") or fit is None else "+ (no OOM up to here)"
        lines.append(
            f"{r['name']:<22}{r.get('model', ''):<13}"
            f"{('on' if r.get('act_ckpt') else 'off'):<5}{_fmt(fit, 'd'):>6}{note}  "
            f"{rows}  [{str(r.get('status'))[:50]}]"
        )
    return "\n".join(lines)
