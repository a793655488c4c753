"""`salt-probe`: evaluate a checkpoint with frozen-backbone probes; JSON + MLflow probe run.

    salt-probe --ckpt runs/student/checkpoints/last.ckpt --train 'train-{000000..000003}.tar' \
        --val 'val-000000.tar' --num-classes 174 -c configs/probe/ssv2.yaml --baseline random

Settings come from the dataclass defaults (probes/config.py), then the `-c` YAML, then the
flags below. The MLflow store is `--tracking-uri`, else $MLFLOW_TRACKING_URI, else the `mlflow.db`
of the training run that wrote the checkpoint (found by walking up from the checkpoint), else a new
one beside it (tracking.py). Exit status: 0 on success, 2 on bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from salt.probes import tracking
from salt.probes.config import ProbeConfig, load_config
from salt.probes.metrics import save_confusion_png
from salt.probes.protocol import ProbeResult, evaluate_encoder, random_like

_FLOAT_LISTS = ("lrs", "wds", "linear_lrs", "linear_wds")


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


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
    p.add_argument("--train", required=True, help="labelled training shards (WebDataset spec)")
    p.add_argument("--val", required=True, help="labelled validation shards (WebDataset spec)")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("-c", "--config", help="protocol YAML (configs/probe/*.yaml)")
    p.add_argument("--output-json", help="write the results here")
    p.add_argument("--baseline", choices=["none", "random"], default="none",
                   help="'random': also probe a fresh encoder of the same architecture (seeded)")  # fmt: skip
    p.add_argument("--tracking-uri", help="MLflow store (see module docstring for the default)")
    p.add_argument(
        "--experiment", help="MLflow experiment (default: the pretraining run's, else salt-probe)"
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    g = p.add_argument_group("protocol overrides (default: the config file's values)")
    for f in ProbeConfig.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        if f.name in _FLOAT_LISTS:
            g.add_argument(flag, type=_floats, help="comma-separated floats")
        elif f.name == "head_kinds":
            g.add_argument(
                flag, type=lambda s: [v for v in s.split(",") if v], help="attentive,linear"
            )
        elif f.name == "feature_cache":
            g.add_argument(flag, help="directory of cached features (torch.save, fp16)")
        else:
            typ = {int: int, float: float}.get(type(f.default), int)
            g.add_argument(flag, type=typ)
    return p


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def protocol_tag(
    cfg: ProbeConfig, config_path: str | None, num_classes: int, train: str, val: str
) -> str:
    """`<config stem>-<hash>`: equal only for runs with the same protocol, classes and data."""
    skip = ("feature_cache", "num_workers", "max_feature_gb", "extract_batch_size")
    settings = {k: v for k, v in cfg.to_dict().items() if k not in skip}
    blob = json.dumps(
        {"cfg": settings, "classes": num_classes, "train": train, "val": val}, sort_keys=True
    )
    stem = Path(config_path).stem if config_path else "default"
    return f"{stem}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def _table(ckpt: str, meta: dict, res: ProbeResult, rnd: ProbeResult | None) -> str:
    loss = meta.get("train_loss")
    lines = [
        f"checkpoint {ckpt}",
        f"  stage {meta.get('stage')}, step {meta.get('step')}, train_loss "
        + ("-" if loss is None else f"{loss:.4f}"),
        f"  train {res.num_train} (fit {res.num_fit} + held-out {res.num_heldout}), val {res.num_val}",
        f"{'encoder':12} {'top1':>7} {'top5':>7} {'held-out':>9}  selected head",
    ]
    for name, r in [("checkpoint", res), ("random-init", rnd)]:
        if r is not None:
            held = r.heldout[r.selected_head]["top1"]
            lines.append(f"{name:12} {r.top1:7.4f} {r.top5:7.4f} {held:9.4f}  {r.selected_head}")
    lines.append("grid (held-out top-1, best first):")
    for n, h in sorted(res.heldout.items(), key=lambda kv: -kv[1]["top1"]):
        lines.append(f"  {h['top1']:.4f}  loss {h['loss']:.4f}  {n}")
    skipped = {s: c for s, c in res.skipped.items() if c}
    if skipped:
        lines.append(f"skipped by the data pipeline (counted, not replaced): {skipped}")
    return "\n".join(lines)


def _log_mlflow(
    args: argparse.Namespace, cfg: ProbeConfig, meta: dict, out: dict, png: Path
) -> dict:
    uri = tracking.resolve_tracking_uri(args.tracking_uri, args.ckpt)
    c = tracking.client(uri)
    experiment = (
        args.experiment
        or tracking.pretrain_experiment(c, meta.get("mlflow_run_id"))
        or tracking.DEFAULT_EXPERIMENT
    )
    teacher = meta.get("teacher") or {}
    tags = {
        "salt.kind": tracking.PROBE_KIND,
        "salt.pretrain_run_id": meta.get("mlflow_run_id") or "",
        "salt.checkpoint": out["checkpoint"],
        "salt.checkpoint_step": "" if meta.get("step") is None else meta["step"],
        "salt.stage": meta.get("stage", ""),
        "salt.teacher_sha256": teacher.get("sha256") or "",
        "salt.probe_protocol": out["protocol"],
        "salt.selected_head": out["selected_head"],
    }
    metrics = {
        "probe/top1": out["top1"],
        "probe/top5": out["top5"],
        "probe/heldout_top1": out["heldout_top1"],
        "pretrain/train_loss": out["train_loss"],
        "probe/random_top1": out.get("random_top1"),
    }
    metrics.update({f"probe/grid/{n}/heldout_top1": h["top1"] for n, h in out["grid"].items()})
    params = {
        **cfg.to_dict(),
        "num_classes": out["num_classes"],
        "train": args.train,
        "val": args.val,
    }
    run_name = f"probe-{meta.get('stage', 'enc')}-step{meta.get('step')}"
    rid = tracking.log_run(
        uri, experiment, run_name=run_name, tags=tags, params=params, metrics=metrics,
        artifacts={"": png}, json_artifacts={"probe_result.json": out},
    )  # fmt: skip
    return {"tracking_uri": uri, "experiment": experiment, "run_id": rid}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything `salt-probe` does, returning the JSON-able result."""
    from salt.encoder_io import file_sha256
    from salt.probes import load_encoder

    overrides = {k: getattr(args, k) for k in ProbeConfig.__dataclass_fields__}
    cfg = load_config(args.config, overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    encoder, meta = load_encoder(args.ckpt, which=getattr(args, "which", "auto"))
    mean, std = meta.get("mean"), meta.get("std")
    ckpt = str(Path(args.ckpt).resolve())
    enc_id = file_sha256(ckpt) if cfg.feature_cache else None
    if enc_id and meta.get("which") == "target":  # one file, two encoders: separate caches
        enc_id += ":target"
    common = dict(mean=mean, std=std, device=device, log=lambda m: print(m, file=sys.stderr))
    res = evaluate_encoder(
        encoder, cfg, args.train, args.val, args.num_classes, encoder_id=enc_id, **common
    )
    rnd = None
    if args.baseline == "random":
        fresh = random_like(encoder, seed=cfg.seed)
        arch = hashlib.sha256(json.dumps(encoder.config, sort_keys=True).encode()).hexdigest()
        rid = f"random:{arch}:{cfg.seed}"
        rnd = evaluate_encoder(
            fresh, cfg, args.train, args.val, args.num_classes, encoder_id=rid, **common
        )
    teacher = meta.get("teacher") or {}
    out: dict[str, Any] = {
        "checkpoint": ckpt,
        "stage": meta.get("stage"),
        "which": meta.get("which"),
        "step": meta.get("step"),
        "train_loss": meta.get("train_loss"),
        "teacher_sha256": teacher.get("sha256"),
        "pretrain_run_id": meta.get("mlflow_run_id"),
        "num_classes": args.num_classes,
        "protocol": protocol_tag(cfg, args.config, args.num_classes, args.train, args.val),
        **res.summary(),
        "config": cfg.to_dict(),
        "device": str(device),
    }
    if rnd is not None:
        out["random_top1"] = rnd.top1
        out["random"] = {k: v for k, v in rnd.summary().items() if k != "confusion"}
    print(_table(ckpt, meta, res, rnd))
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
        if not args.no_mlflow:
            out["mlflow"] = _log_mlflow(args, cfg, meta, out, png)
            print(f"mlflow: run {out['mlflow']['run_id']} in experiment {out['mlflow']['experiment']!r} "
                  f"at {out['mlflow']['tracking_uri']}")  # fmt: skip
    if args.output_json:
        path = Path(args.output_json)
        path.write_text(json.dumps(out, indent=2))
        print(f"wrote {path}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError, MemoryError) as e:
        print(f"salt-probe: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
