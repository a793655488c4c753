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
        f"{'variant':<26}{'stage':<8}{'model':<13}{'B':>4} {'ckpt':<5}{'comp':<6}"
        f"{'attn':<9}{'levers':<9}{'ms/step':>9}{'sprd':>6}{'clips/s':>9}{'TFLOP':>7}{'TF/s':>7}"
        f"{'MFU':>6}{'GiB':>7}{'1st s':>7}  status"
    )
    steps = [r for r in results if r.get("kind") in ("step", "lightning", "vjepa2")]
    if steps:
        lines += ["", head, "-" * len(head)]
    for r in steps:
        attn = r.get("attn", "sdpa" if r.get("kind") == "vjepa2" else "")
        used = r.get("attn_backend_used")
        if used and used != attn:
            attn = f"{attn}>{used}"
        stage = "vjepa2" if r.get("kind") == "vjepa2" else r.get("stage", "")
        comp = "on" if r.get("compile") else "off"
        if r.get("compile") and r.get("compiled") is False:
            comp = "eager"  # asked for, fell back (CPU, no Triton / compiler)
        lines.append(
            f"{r['name']:<26}{stage:<8}{r.get('model', ''):<13}"
            f"{_fmt(r.get('batch'), 'd'):>4} {('on' if r.get('act_ckpt') else 'off'):<5}"
            f"{comp:<6}{attn:<9}{levers(r):<9}"
            f"{_fmt(r.get('median_ms')):>9}{_fmt(r.get('spread'), '.0%'):>6}"
            f"{_fmt(r.get('clips_per_s')):>9}{_fmt(r.get('tflop_per_step')):>7}"
            f"{_fmt(r.get('achieved_tflops'), '.0f'):>7}{_fmt(r.get('mfu'), '.0%'):>6}"
            f"{_fmt(r.get('peak_mem_gib')):>7}{_fmt(r.get('first_step_s'), '.0f'):>7}"
            f"  {str(r.get('status'))[:60]}"
        )
    lines += ratio_lines(steps)
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
    lines += extra_tables(results)
    return "\n".join(lines)


def levers(r: dict) -> str:
    """Short tag of a step row's non-default settings: m = whole-module compile, cg = CUDA
    graphs (reduce-overhead), t16 / t8 = bf16 / FP8 teacher."""
    o = r.get("overrides") or {}
    tags = []
    if o.get("compile_scope") == "modules":
        tags.append("m")
    if o.get("compile_mode") == "reduce-overhead":
        tags.append("cg")
    elif o.get("compile_mode"):
        tags.append(str(o["compile_mode"])[:6])
    prec = o.get("teacher_precision")
    if prec in ("bf16", "fp8"):
        tags.append({"bf16": "t16", "fp8": "t8"}[prec])
    return "+".join(tags) or "-"


def ratio_lines(steps: list[dict]) -> list[str]:
    """Each salt student row against V-JEPA 2's compiled (and eager) row of the same model."""
    out = []
    for ref_name in ("vjepa2_compile", "vjepa2_eager", "vjepa2_vitg_compile"):
        ref = next((r for r in steps if r["name"] == ref_name and r.get("clips_per_s")), None)
        if ref is None:
            continue
        rows = [
            r for r in steps
            if r.get("kind") == "step" and r.get("stage") == "student" and r.get("clips_per_s")
            and r.get("model") == {"vit_large": "vit_large", "vit_giant": "vit_giant"}.get(ref["model"])
            and r.get("batch") == ref.get("batch")
        ]  # fmt: skip
        if rows:
            out += ["", f"ratio to {ref_name} ({_fmt(ref['clips_per_s'])} clips/s):"]
            out += [f"  {r['name']:<26}{r['clips_per_s'] / ref['clips_per_s']:6.2f}x" for r in rows]
    return out


def extra_tables(results: list[dict]) -> list[str]:
    """Attention kernels, FP8 gate, host syncs and profiles of the ``perf`` suite."""
    out: list[str] = []
    for r in results:
        kind = r.get("kind")
        if kind == "attn" and r.get("kernels"):
            out += ["", f"{r['name']}: kernel × shape: ms, TFLOP/s, max |err| vs fp32 (out / dq)"]
            for kernel, shapes in r["kernels"].items():
                if "status" in shapes:
                    out.append(f"  {kernel:<10}{shapes['status']}")
                    continue
                cells = []
                for shape, x in shapes.items():
                    if x.get("status") != "ok":
                        cells.append(f"{shape}: {str(x.get('status'))[:50]}")
                        continue
                    err = f"{x['out_max_err']:.0e}" + (
                        f"/{x['dq_max_err']:.0e}" if "dq_max_err" in x else ""
                    )
                    op = f" [{x['xformers_op']}]" if "xformers_op" in x else ""
                    cells.append(f"{shape} {x['ms']:.2f} {x['tflops']:.0f} {err}{op}")
                out.append(f"  {kernel:<10}" + " | ".join(cells))
        elif kind == "fp8_gate":
            out += ["", f"{r['name']}: {r.get('status')}"]
            cos = r.get("cosine") or {}
            if cos:
                out.append(f"  bf16 teacher forward {_fmt(cos.get('bf16_forward_ms'))} ms (eager)")
            for backend, x in (cos.get("backends") or {}).items():
                out.append(
                    f"  {backend:<10} mean cos {_fmt(x.get('mean_cos'), '.5f')} min "
                    f"{_fmt(x.get('min_cos'), '.4f')} pass {x.get('passes')} fwd "
                    f"{_fmt(x.get('fp8_forward_ms'))} ms [{str(x.get('status'))[:60]}]"
                )
            loss = r.get("loss")
            if loss:
                out.append(
                    f"  loss {loss['steps']} steps {loss['student']} {loss['clip']}: bf16 "
                    f"{loss['mean_loss_bf16']:.4f} fp8 {loss['mean_loss_fp8']:.4f} rel "
                    f"{loss['rel_diff']:+.3%} (last third {loss['rel_diff_last_third']:+.3%}) "
                    f"pass {loss['passes']}"
                )
        elif kind == "sync" and "syncs_per_step" in r:
            out += ["", f"{r['name']}: {r['syncs_per_step']:.1f} host syncs per eager step"]
            out += [f"  {n:>4}x {where}" for where, n in r.get("where", {}).items()]
        if r.get("teacher_fwd_ms") is not None:
            prec = (r.get("overrides") or {}).get("teacher_precision", "fp32")
            fp8 = f", FP8 via {r['fp8_backend']}" if r.get("fp8_backend") else ""
            out += [
                "",
                f"{r['name']}: frozen teacher forward alone {r['teacher_fwd_ms']:.1f} ms/step "
                f"({prec} teacher{fp8}, compiled as in the step)",
            ]
        prof = r.get("profile")  # the spec's ``True`` until a profile replaced it
        if isinstance(prof, dict) and prof.get("by_category_ms") is not None:
            cats = ", ".join(f"{k} {v:.1f}" for k, v in prof.get("by_category_ms", {}).items())
            out += [
                "",
                f"{r['name']} profile: GPU busy {prof['gpu_busy_ms_per_step']:.1f} ms/step "
                f"({_fmt(prof.get('gpu_busy_fraction'), '.0%')}), "
                f"{prof['kernel_launches_per_step']:.0f} launches; ms: {cats}",
            ]
    return out
