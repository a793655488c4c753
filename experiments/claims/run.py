"""Does SALT work in salt? The paper's three claims at small scale, on one GPU, in one call.

    python experiments/claims/run.py --out OUT [--preset default|smoke] [--deadline EPOCH_S]

For every seed: a pixel teacher (stage 1), SALT students of it (same size and one size up), the
V-JEPA EMA baseline at matched training FLOPs (teacher pretraining counted on SALT's side) and a
random-init encoder, all probed with one protocol (evaluate.py) on a motion task made here
(motion.py). The EMA baseline follows V-JEPA 2's recipe with a small momentum × lr grid on the
first seed, chosen on the probe's held-out train slice; its target encoder is what is probed.
Results go to ``OUT/results.json`` (rewritten after every finished run, so a cut-off call still
leaves what finished), the table and plots to ``OUT/`` (report.py), checkpoints to ``--workdir``.

Scheduling: a plan job first counts FLOPs and times one step of every run kind; the step counts
are then scaled down if the measured times do not fit the deadline (``--no-fit-budget`` keeps
them); the runs go to ``--workers`` processes sharing the GPU, in an order that finishes the
comparisons the claims need first. Every run stops at the deadline minus ``--reserve`` seconds and
still probes and reports what it has; a run cut short is marked ``truncated``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jobs  # noqa: E402
import report  # noqa: E402

# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # One H200, ≈ 5–6 min of the 8-minute call (README "Budget"): 3 seeds, ViT-Ti teacher,
    # ViT-Ti + ViT-S students, 2 × 2 EMA grid, 8×64² clips (4×8×8 tokens), batch 128.
    "default": {
        "seeds": "0,1,2", "workers": 4, "frames": 8, "size": 64, "patch": 8, "classes": 8,
        "num_train": 8192, "num_probe": 2048, "num_val": 1024, "batch_size": 128,
        "teacher_steps": 600, "student_steps": 600, "checkpoints": 8,
        "teacher_size": "tiny", "student_sizes": "tiny,small", "predictor": "128,6,4,512",
        "ema_momenta": "0.99925,0.99", "ema_lrs": "5.25e-4,1.05e-3", "health_every": 50,
        "probe_epochs": 20, "probe_batch": 128, "loader_workers": 2, "threads": 2,
        "plan_batches": 3, "plan_warmup": 3, "plan_steps": 8, "probe_seconds": 2.0,
    },
    # CPU, tiny (tests/test_claims_smoke.py): every stage runs, nothing means anything.
    "smoke": {
        "seeds": "0,1", "workers": 0, "frames": 8, "size": 32, "patch": 8, "classes": 8,
        "num_train": 32, "num_probe": 48, "num_val": 24, "batch_size": 4,
        "teacher_steps": 6, "student_steps": 6, "checkpoints": 3,
        "teacher_size": "test", "student_sizes": "test,test2", "predictor": "48,1,4,96",
        "ema_momenta": "0.99,0.9", "ema_lrs": "1e-3", "health_every": 2,
        "probe_epochs": 1, "probe_batch": 16, "loader_workers": 0, "threads": 1,
        "plan_batches": 1, "plan_warmup": 0, "plan_steps": 1, "probe_seconds": 0.5,
    },
}
# fmt: on


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="results.json, table.md, plots")
    p.add_argument("--workdir", help="checkpoints and per-run JSON (default OUT/work)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--deadline", type=float, help="absolute end time (epoch seconds)")
    p.add_argument("--time-limit", type=float, help="seconds from now (if no --deadline)")
    p.add_argument("--reserve", type=float, default=25.0,
                   help="seconds before the deadline at which training stops (probes, report)")  # fmt: skip
    p.add_argument("--no-fit-budget", action="store_true", help="never scale the step counts")
    p.add_argument("--overlap", type=float, default=1.5,
                   help="assumed speed-up of --workers runs sharing the GPU (budget estimate)")  # fmt: skip
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the blocks (compile time!)"
    )
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--warmup-fraction", type=float, default=0.05,
                   help="lr warmup share of every run (SALT ≈ V-JEPA 2 ≈ 5%%)")  # fmt: skip
    for key, value in PRESETS["default"].items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None,
                       help=f"(default {value}; smoke {PRESETS['smoke'][key]})")  # fmt: skip
    return p


def _floats(s: str) -> list[float]:
    return [float(x) for x in str(s).split(",") if x]


def build_config(args: argparse.Namespace) -> dict[str, Any]:
    """Preset values, overridden by the flags given, as the plain dict every job receives."""
    import torch

    v = {
        k: getattr(args, k) if getattr(args, k) is not None else d
        for k, d in PRESETS[args.preset].items()
    }
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    out = Path(args.out).resolve()
    dim, depth, heads, mlp = (int(x) for x in v["predictor"].split(","))
    seeds = [int(s) for s in v["seeds"].split(",") if s]
    return {
        "preset": args.preset, "device": device, "out": str(out),
        "workdir": str(Path(args.workdir).resolve() if args.workdir else out / "work"),
        "seeds": seeds, "grid_seed": seeds[0], "workers": v["workers"], "threads": v["threads"],
        "task": {"num_classes": v["classes"], "frames": v["frames"], "size": v["size"]},
        "data_seed": args.data_seed, "num_train": v["num_train"], "num_probe": v["num_probe"],
        "num_val": v["num_val"], "patch": v["patch"], "tubelet": 2,
        "teacher_size": v["teacher_size"], "student_sizes": v["student_sizes"].split(","),
        "predictor": {"dim": dim, "depth": depth, "heads": heads, "mlp_hidden": mlp},
        "batch_size": v["batch_size"], "teacher_steps": v["teacher_steps"],
        "student_steps": v["student_steps"], "checkpoints": v["checkpoints"],
        "warmup_fraction": args.warmup_fraction, "health_every": v["health_every"],
        "compile": bool(args.compile), "loader_workers": v["loader_workers"],
        "ema_momenta": _floats(v["ema_momenta"]), "ema_lrs": _floats(v["ema_lrs"]),
        "probe": {"epochs": v["probe_epochs"], "batch_size": v["probe_batch"]},
        "plan_batches": v["plan_batches"], "plan_warmup": v["plan_warmup"],
        "plan_steps": v["plan_steps"], "probe_seconds": v["probe_seconds"],
    }  # fmt: skip


class InlineExecutor:
    """``submit`` runs the job at once in this process (``--workers 0``: tests, CPU)."""

    def __init__(self, cfg: dict) -> None:
        jobs.init_worker(cfg)

    def submit(self, fn: Any, *args: Any) -> Future:
        f: Future = Future()
        f.set_result(fn(*args))
        return f

    def stop(self) -> None:
        pass


class PoolExecutor(ProcessPoolExecutor):
    """Worker processes (spawned: each owns a CUDA context and a copy of the clips)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(
            max_workers=cfg["workers"],
            mp_context=mp.get_context("spawn"),
            initializer=jobs.init_worker,
            initargs=(cfg,),
        )

    def stop(self) -> None:
        """Cancel what has not started and end the workers this executor started."""
        procs = list(getattr(self, "_processes", {}).values())
        self.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.terminate()


# ----------------------------------------------------------------------------- the plan
def cell_name(m: float, lr: float, seed: int) -> str:
    return f"ema-m{m:g}-lr{lr:g}-s{seed}"


def plan_steps(cfg: dict, plan: dict, budget_s: float | None, overlap: float) -> dict:
    """Step counts of every run kind, FLOP-matched for EMA, scaled to fit ``budget_s``."""
    f = plan["flops_per_step"]
    same = f"student-{cfg['teacher_size']}"

    def counts(scale: float) -> dict:
        nt = max(cfg["checkpoints"], round(cfg["teacher_steps"] * scale))
        ns = max(cfg["checkpoints"], round(cfg["student_steps"] * scale))
        ne = round((f["teacher"] * nt + f[same] * ns) / f["ema"])
        return {"teacher": nt, "student": ns, "ema": ne}

    def seconds(c: dict) -> float:
        ms, n_seeds = plan["ms_per_step"], len(cfg["seeds"])
        train = c["teacher"] * ms["teacher"] + c["ema"] * ms["ema"]
        train += sum(c["student"] * ms[f"student-{s}"] for s in cfg["student_sizes"])
        cells = len(cfg["ema_momenta"]) * len(cfg["ema_lrs"])
        total = n_seeds * train + (cells - 1) * c["ema"] * ms["ema"]
        probes = n_seeds * (2 * cfg["checkpoints"] + 8) + cells
        return total / 1e3 / overlap + probes * cfg["probe_seconds"]

    scale, c = 1.0, counts(1.0)
    if budget_s is not None and seconds(c) > budget_s:
        scale = max(0.05, budget_s / seconds(c))
        c = counts(scale)
    return {**c, "scale": round(scale, 3), "estimated_s": round(seconds(c), 1)}


def make_jobs(cfg: dict, steps: dict, flops: dict) -> list[dict]:
    """Every run as a spec, in scheduling priority order; ``deps`` name the runs it needs."""
    seeds, ts, sizes = cfg["seeds"], cfg["teacher_size"], cfg["student_sizes"]
    cells = [(m, lr) for m in cfg["ema_momenta"] for lr in cfg["ema_lrs"]]
    grid = [cell_name(m, lr, cfg["grid_seed"]) for m, lr in cells]
    out: list[dict] = []
    for s in seeds:
        out.append({"name": f"teacher-s{s}", "kind": "teacher", "seed": s,
                    "steps": steps["teacher"], "flops_per_step": flops["teacher"], "deps": []})  # fmt: skip
    for s in seeds:
        out.append(
            {"name": f"random-s{s}", "kind": "random", "seed": s, "with_controls": True, "deps": []}
        )
    for s in seeds:
        out.append({"name": f"student-{ts}-s{s}", "kind": "student", "size": ts, "seed": s,
                    "steps": steps["student"], "flops_per_step": flops[f"student-{ts}"],
                    "probe_all": True, "with_controls": True, "deps": [f"teacher-s{s}"]})  # fmt: skip
    for (m, lr), name in zip(cells, grid, strict=True):
        out.append({"name": name, "kind": "ema", "seed": cfg["grid_seed"], "momentum": m, "lr": lr,
                    "steps": steps["ema"], "flops_per_step": flops["ema"], "deps": []})  # fmt: skip
    for s in seeds[1:]:
        out.append({"name": f"ema-s{s}", "kind": "ema", "seed": s, "steps": steps["ema"],
                    "flops_per_step": flops["ema"], "probe_all": True, "deps": grid,
                    "choose": True})  # fmt: skip
    out.append({"name": f"ema-curve-s{cfg['grid_seed']}", "kind": "probe", "seed": cfg["grid_seed"],
                "flops_per_step": flops["ema"], "deps": grid, "choose": True})  # fmt: skip
    for size in sizes:
        if size != ts:
            for s in seeds:
                out.append({"name": f"student-{size}-s{s}", "kind": "student", "size": size,
                            "seed": s, "steps": steps["student"],
                            "flops_per_step": flops[f"student-{size}"],
                            "deps": [f"teacher-s{s}"]})  # fmt: skip
    return out


def choose_ema(cfg: dict, results: dict) -> dict | None:
    """The grid cell with the best held-out top-1 (probe-train's held-out slice, never val)."""
    rows = []
    for m in cfg["ema_momenta"]:
        for lr in cfg["ema_lrs"]:
            r = results.get(cell_name(m, lr, cfg["grid_seed"]), {})
            if r.get("status") == "done" and r.get("probes"):
                rows.append((r["probes"][-1]["heldout_top1"], -len(rows), m, lr, r["name"]))
    if not rows:
        return None
    held, _, m, lr, name = max(rows)
    return {"cell": name, "momentum": m, "lr": lr, "heldout_top1": held}


def finalize(
    spec: dict, cfg: dict, results: dict, deadline: float | None, state: dict
) -> dict | None:
    """Fill in what a run takes from the runs before it; None if a dependency failed."""
    if not spec.get("choose") and any(results[d]["status"] != "done" for d in spec["deps"]):
        return None
    spec = {**spec, "cfg": cfg}
    if spec["kind"] == "student":
        spec["teacher"] = results[spec["deps"][0]]["checkpoints"][-1]
    if spec.get("choose"):  # the EMA grid is over (some cells may have failed): pick a cell
        choice = state["ema_choice"] = choose_ema(cfg, results)
        if choice is None:
            return None
        spec.update(momentum=choice["momentum"], lr=choice["lr"])
        if spec["kind"] == "probe":
            cell = results[choice["cell"]]
            spec.update(paths=cell["checkpoints"], skip=[p["path"] for p in cell["probes"]])
    if deadline is not None:
        spec["train_deadline"] = deadline - cfg["reserve"]
        spec["probe_deadline"] = deadline - min(3.0, cfg["reserve"] / 2)  # no probe starts later
    return spec


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.time()
    deadline = args.deadline or (t_start + args.time_limit if args.time_limit else None)
    cfg = build_config(args)
    cfg["reserve"] = args.reserve
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    Path(cfg["workdir"]).mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:6.0f}s] {msg}", flush=True)

    results: dict[str, Any] = {}
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t_start)),
            "argv": sys.argv[1:] if argv is None else argv, "config": cfg, "finished": False}  # fmt: skip

    def save() -> dict:
        doc = {"meta": {**meta, "wall_s": round(time.time() - t_start, 1)}, **results}
        tmp = out / f"results.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        tmp.replace(out / "results.json")
        return doc

    log(
        f"device {cfg['device']}, {cfg['workers']} workers, seeds {cfg['seeds']}, preset {cfg['preset']}"
    )
    executor = PoolExecutor(cfg) if cfg["workers"] > 0 else InlineExecutor(cfg)
    try:
        plan = executor.submit(jobs.run_job, {"name": "plan", "kind": "plan", "cfg": cfg}).result()
        if plan.get("status") != "done":
            raise RuntimeError(f"plan job failed: {plan.get('error')}\n{plan.get('trace', '')}")
        left = (
            None
            if deadline is None or args.no_fit_budget
            else deadline - time.time() - args.reserve
        )
        steps = plan_steps(cfg, plan, left, args.overlap)
        results["plan"] = {**plan, "steps": steps}
        log(
            f"plan: GFLOP/step { ({k: round(v / 1e9, 1) for k, v in plan['flops_per_step'].items()}) }, "
            f"ms/step { ({k: round(v, 1) for k, v in plan['ms_per_step'].items()}) }"
        )
        log(f"steps {steps} (scale {steps['scale']}, estimated {steps['estimated_s']} s)")
        specs = make_jobs(cfg, steps, plan["flops_per_step"])
        runs: dict[str, dict] = {}
        results["runs"] = runs
        _schedule(specs, cfg, runs, executor, deadline, log, save, results)
        meta["finished"] = all(r.get("status") == "done" for r in runs.values())
    except Exception as e:  # e.g. a worker died: keep and report what finished
        import traceback

        meta["error"] = f"{type(e).__name__}: {e}"
        log(f"study stopped early: {meta['error']}\n{traceback.format_exc()[-2000:]}")
    finally:
        executor.stop()
    doc = save()
    try:
        written = report.write_outputs(doc, out)
        log(f"wrote {', '.join(str(p.name) for p in written)} to {out}")
    except Exception as e:  # the JSON is what matters; report.py can be rerun on it
        log(
            f"report failed ({type(e).__name__}: {e}); rerun: python experiments/claims/report.py {out / 'results.json'}"
        )
    log(f"done in {time.time() - t_start:.0f} s")
    return doc


def _schedule(specs, cfg, runs, executor, deadline, log, save, state) -> None:
    """Start every ready run (priority order) while a worker is free; record results as they land.

    ``state`` receives ``ema_choice`` once the EMA grid is done."""
    pending, running = list(specs), {}
    slots = max(cfg["workers"], 1)
    while pending or running:
        started = False
        for spec in list(pending):
            if len(running) >= slots:
                break
            if deadline is not None and time.time() > deadline - cfg["reserve"]:
                break
            deps = [runs.get(d, {}).get("status") for d in spec["deps"]]
            if any(s is None for s in deps):
                continue  # waits for a run still going
            pending.remove(spec)
            started = True
            full = finalize(spec, cfg, runs, deadline, state)
            if full is None:
                runs[spec["name"]] = {
                    "name": spec["name"],
                    "status": "skipped",
                    "error": "a run it needs failed or was skipped",
                }
                continue
            log(f"start {spec['name']}" + (f" ({spec['steps']} steps)" if "steps" in spec else ""))
            try:
                running[executor.submit(jobs.run_job, full)] = spec["name"]
            except Exception as e:  # a broken pool: this run cannot start
                runs[spec["name"]] = {"name": spec["name"], "status": "error", "error": repr(e)}
        if not running:
            if started:
                continue  # runs were skipped: look again at what waited on them
            break  # nothing runs and nothing can start (the deadline): the rest is skipped
        timeout = None if deadline is None else max(1.0, deadline - time.time())
        done, _ = wait(list(running), timeout=timeout, return_when=FIRST_COMPLETED)
        if not done:  # the deadline: what is still running is left unfinished
            break
        for f in done:
            name = running.pop(f)
            try:
                r = f.result()
            except Exception as e:  # the worker process died (run_job itself never raises)
                r = {"name": name, "status": "error", "error": f"worker died: {e!r}"}
            runs[name] = r
            probes = r.get("probes") or [{}]
            tops = {k: probes[-1][k]["top1"] for k in ("attentive", "linear") if k in probes[-1]}
            log(
                f"{r['status']} {name} in {r.get('job_wall_s')} s"
                + (f" (truncated at {r['steps_done']})" if r.get("truncated") else "")
                + (f": top-1 { ({k: round(v, 3) for k, v in tops.items()}) }" if tops else "")
                + (f" [{r['error']}]" if r.get("error") else "")
            )
            save()
    for name in running.values():
        runs[name] = {
            "name": name,
            "status": "unfinished",
            "error": "still running at the deadline",
        }
    for spec in pending:
        runs.setdefault(
            spec["name"],
            {"name": spec["name"], "status": "skipped", "error": "not started before the deadline"},
        )


if __name__ == "__main__":
    sys.exit(1 if main()["meta"].get("error") else 0)
