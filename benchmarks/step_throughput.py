"""Time the real SALT training step on synthetic clips: clips/s, TFLOP/step, MFU, peak memory.

The step is the one `salt fit` runs (``bench_setup``: the LightningModule's own
constructor, ``configure_optimizers``, ``training_loss`` and ``salt.optim.prepare_optimizer_step``
under bf16 autocast), on uint8 clips already on the device with masks from the real
``MultiMaskCollator``. A ``lightning`` variant runs ``Trainer.fit`` itself on the same batches, to
show what the Trainer loop adds.

    python benchmarks/step_throughput.py                       # every variant (CUDA), a table
    python benchmarks/step_throughput.py --json out.json --budget 540
    python benchmarks/step_throughput.py --device cpu --model vit_test --steps 3   # CI smoke

On CUDA each variant runs in its own process with its own time limit (an OOM or a hang costs
that variant only, and the table always prints); on CPU they run in-process. ``--isolate fork``
(the CUDA default) forks each variant from a ``multiprocessing`` forkserver that has imported
torch, Lightning and salt once (and never touched CUDA), which saves the ≈ 10 s of imports a
fresh ``--isolate subprocess`` pays per variant; if the first forked variant fails, the run
switches to subprocesses. Variants:
``student`` (activation checkpointing, compile, attention backend), ``teacher`` (stage 1),
``memory`` (largest batch that fits for a student size), ``lightning`` and ``peak``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf  # noqa: E402
from child import print_result, run_child  # noqa: E402
from report import format_table  # noqa: E402
from variants import default_variants, run_variant  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="vit_large", help="student encoder (default vit_large)")
    p.add_argument(
        "--teacher-model",
        default=None,
        help="teacher encoder (default vit_large, or the student's when it is vit_test)",
    )
    p.add_argument("--batch", type=int, default=None, help="clips per step (24; 2 on CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (3; 1 on CPU)")
    p.add_argument("--max-norm", type=float, default=None, help="gradient clipping norm")
    p.add_argument("--only", default=None, help="comma-separated variant names to run")
    p.add_argument("--budget", type=float, default=None, help="total seconds for all variants")
    p.add_argument("--deadline", type=float, default=None, help="unix time to stop by")
    p.add_argument("--json", default=None, help="write every result here")
    p.add_argument("--workdir", default=None, help="teacher file and profiles (default: tmp)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU intra-op threads (1 on CPU: spinning OpenMP threads slow tiny models)",
    )
    p.add_argument(
        "--suite",
        choices=("default", "perf", "explore"),
        default="default",
        help="default: the first-round variants; perf: the final salt vs V-JEPA 2 call; "
        "explore: the levers one at a time",
    )
    p.add_argument(
        "--isolate",
        choices=("fork", "subprocess", "none"),
        default=None,
        help="how each variant runs: forked from a preloaded server (CUDA default), a fresh "
        "subprocess, or in this process (CPU default)",
    )
    p.add_argument("--vjepa2", default=None, help="V-JEPA 2 checkout for the vjepa2 rows")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a variant spec, as JSON
    args = p.parse_args(argv)
    if args.isolate is None:
        args.isolate = "none" if args.device == "cpu" else "fork"
    if args.teacher_model is None:
        args.teacher_model = args.model if args.model == "vit_test" else "vit_large"
    cpu = args.device == "cpu"
    args.batch = args.batch or (2 if cpu else 24)
    args.warmup = args.warmup if args.warmup is not None else (1 if cpu else 3)
    if cpu and args.threads is None:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    args.workdir = Path(args.workdir or os.environ.get("TMPDIR", "/tmp")) / "salt_bench"
    return args


def _run_subprocess(spec: dict, args: argparse.Namespace, timeout: float) -> dict:
    """Run one variant in a fresh process (clean CUDA memory; killed at ``timeout``)."""
    cmd = [
        sys.executable,
        __file__,
        "--one",
        json.dumps(spec),
        "--device",
        args.device,
        "--workdir",
        str(args.workdir.parent),
    ]
    child = run_child(cmd, timeout=timeout)
    if child.timed_out:
        print(child.stdout[-2000:], flush=True)
        return {**spec, "status": child.status()}
    sys.stdout.write(child.stdout)
    sys.stderr.write(child.stderr[-4000:])
    if child.results:
        return {**child.results[-1], "wall_s": child.wall_s}
    return {**spec, "status": child.status()}


_FORK_CTX = None


def _fork_context():
    """A forkserver context whose server has imported what every variant imports (once)."""
    global _FORK_CTX
    if _FORK_CTX is None:
        import multiprocessing

        # NVML-based device checks: nothing the server imports may initialise CUDA (a forked
        # child of a process that did cannot use it)
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "perf", "variants", "bench_setup", "report"])
        _FORK_CTX = ctx
    return _FORK_CTX


def _run_forked(spec: dict, args: argparse.Namespace, timeout: float) -> dict:
    """Run one variant in a process forked from the preloaded server (killed at ``timeout``)."""
    from variants import run_variant_into

    ctx = _fork_context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=run_variant_into,
        args=(send, spec, args.device, str(args.workdir.parent)),
    )
    t0 = time.perf_counter()
    proc.start()
    send.close()
    result = None
    while result is None:
        left = timeout - (time.perf_counter() - t0)
        if left <= 0:
            break
        if recv.poll(min(left, 1.0)):
            try:
                result = recv.recv()
            except EOFError:  # died without a result (crash, OOM kill)
                break
        elif not proc.is_alive() and not recv.poll(0):
            break
    if result is None:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
            return {**spec, "status": f"timeout after {timeout:.0f}s"}
        proc.join(10)
        return {**spec, "status": f"failed (exit {proc.exitcode}): no result"}
    proc.join(15)  # exiting can wait on compile workers; the result is in already
    if proc.is_alive():
        proc.kill()
        proc.join(5)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def drive(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    if args.suite in ("perf", "explore"):
        from perf_suite import explore_variants, perf_variants

        specs = (perf_variants if args.suite == "perf" else explore_variants)(args)
    else:
        specs = default_variants(args)
    if args.only:
        wanted = set(args.only.split(","))
        specs = [s for s in specs if s["name"] in wanted]
    # perf_counter time at which to stop: --deadline (unix time, from run_gpu.sh) or --budget
    deadline = None
    if args.deadline:
        deadline = time.perf_counter() + (args.deadline - time.time())
    elif args.budget:
        deadline = time.perf_counter() + args.budget
    planned = [s.get("expect_s") for s in specs]
    if all(planned):
        plan = ", ".join(f"{s['name']} {s['expect_s']}" for s in specs)
        print(f"plan (expected s): {plan}; total {sum(planned)}", flush=True)
    isolate = args.isolate
    results: list[dict] = []
    for spec in specs:
        remaining = deadline - time.perf_counter() if deadline else None
        if remaining is not None and remaining < 20:
            results.append({**spec, "status": "skipped: budget spent"})
            continue
        limit = min(spec.get("limit_s", 300), remaining) if remaining else spec.get("limit_s", 300)
        print(f"== {spec['name']} (limit {limit:.0f}s)", flush=True)
        if isolate == "fork":
            res = _run_forked(spec, args, limit)
            if not results and str(res.get("status")) != "ok":  # the first one: fall back
                print(f"   forked run failed ({res.get('status')}); using subprocesses", flush=True)
                isolate = "subprocess"
                remaining = deadline - time.perf_counter() if deadline else None
                res = _run_subprocess(spec, args, min(limit, remaining) if remaining else limit)
        elif isolate == "subprocess":
            res = _run_subprocess(spec, args, limit)
        else:
            res = run_variant(spec, device, args.workdir)
        results.append(res)
        print(f"-- {spec['name']}: {res.get('status')} ({res.get('wall_s', '?')} s)", flush=True)
        print(format_table([res]), flush=True)  # the row now; the whole table at the end
        if args.json:  # keep what is done so far if the whole run is killed
            _write_json(args, device, results)
    return results


def _write_json(args: argparse.Namespace, device: torch.device, results: list[dict]) -> None:
    info = {"device": perf.device_info(device) if device.type == "cpu" else {}, "argv": sys.argv}
    for r in results:  # the device description comes from the subprocesses on CUDA
        if r.get("device_info"):
            info["device"] = r["device_info"]
            break
    Path(args.json).write_text(json.dumps({"info": info, "results": results}, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:  # child process: one variant, result on one line
        res = run_variant(json.loads(args.one), torch.device(args.device), args.workdir)
        print_result(res)
        return 0
    results = drive(args)
    if args.json:
        _write_json(args, torch.device(args.device), results)
    print(format_table(results), flush=True)
    failed = [r for r in results if str(r.get("status", "")).startswith("failed")]
    return 1 if failed and args.device == "cpu" else 0


if __name__ == "__main__":
    sys.exit(main())
