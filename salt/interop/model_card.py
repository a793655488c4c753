"""The model card (``README.md``) of ``salt export CKPT DIR --format hf``.

What salt knows of an encoder goes in: the architecture, the stage (teacher / student /
imported), training steps and loss, the teacher it was trained against, the source of an
imported model, and every probe result recorded for this checkpoint in its MLflow store (runs
tagged ``salt.kind=probe`` whose ``salt.checkpoint`` is this file, or whose pretraining run and
step are this checkpoint's). The store is the one ``salt-probe`` would use
(``$MLFLOW_TRACKING_URI``, else the nearest ``mlflow.db`` at or above the checkpoint); none, or one
that cannot be read, only means the card says so. Nothing is created on the way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from salt.models import VideoViT
from salt.models.hub import HUB_TAGS

STAGES = {
    "teacher": "stage 1 of SALT: masked pixel reconstruction (V-JEPA multi-block masks)",
    "student": "stage 2 of SALT: regresses a frozen teacher's latents at masked positions",
    "imported": "imported with `salt import` (weights unchanged)",
}


def find_store(ckpt: Path, levels: int = 4) -> str | None:
    """The MLflow store of a checkpoint if there is one (never creates a store)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    start = ckpt.resolve()
    start = start if start.is_dir() else start.parent
    for d in [start, *start.parents][: levels + 1]:
        if (d / "mlflow.db").is_file():
            return f"sqlite:///{d / 'mlflow.db'}"
    return None


def probe_results(ckpt: Path, meta: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Probe runs of this checkpoint in its MLflow store, and a line saying where they came from."""
    uri = find_store(ckpt)
    if uri is None:
        return (
            [],
            "No MLflow store was found beside the checkpoint, so no probe results are listed.",
        )
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp_ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exp_ids, "tags.`salt.kind` = 'probe'") if exp_ids else []
    except Exception as e:  # an unreachable server, a store of another MLflow version
        return [], f"The MLflow store {uri} could not be read ({type(e).__name__}: {e})."
    path = str(ckpt.resolve())
    run_id, step = meta.get("mlflow_run_id"), meta.get("step")
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        same_file = tags.get("salt.checkpoint") == path
        same_step = (
            bool(run_id)
            and tags.get("salt.pretrain_run_id") == run_id
            and (tags.get("salt.checkpoint_step") == str(step))
        )
        if (same_file or same_step) and "probe/top1" in metrics:
            rows.append(
                {
                    "protocol": tags.get("salt.probe_protocol", "?"),
                    "top1": metrics["probe/top1"],
                    "top5": metrics.get("probe/top5"),
                    "random_top1": metrics.get("probe/random_top1"),
                    "head": tags.get("salt.selected_head", "?"),
                    "run_id": run.info.run_id,
                }
            )
    rows.sort(key=lambda r: r["protocol"])
    where = f"Probe runs of this checkpoint in the MLflow store {uri}: {len(rows)}."
    return rows, where


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def model_card(encoder: VideoViT, meta: dict[str, Any], ckpt: Path) -> str:
    """Markdown with Hub front matter (``library_name: salt``, tags)."""
    cfg = encoder.config
    params = sum(p.numel() for p in encoder.parameters())
    stage = meta.get("stage", "unknown")
    pos = cfg["pos_embed"] + (
        f", {cfg['rope_pairing']} pairing" if cfg["pos_embed"] == "rope" else ""
    )
    rows = [
        ("architecture", f"VideoViT: {cfg['depth']} blocks × {cfg['embed_dim']} wide, "
         f"{cfg['num_heads']} heads, MLP {cfg['mlp_hidden_dim']}, tubelet {cfg['tubelet_size']}×"
         f"{cfg['patch_size']}×{cfg['patch_size']}, positions {pos}, final norm "
         f"{cfg['final_norm']}, {params / 1e6:.1f}M parameters"),
        ("input", f"`[B, {cfg['in_chans']}, T, H, W]` float, (x/255 − mean)/std with mean "
         f"{meta.get('mean')}, std {meta.get('std')}; nominal {cfg['num_frames']} frames × "
         f"{cfg['img_size'][0]}×{cfg['img_size'][1]}"),
        ("output", "tokens `[B, N, D]` in T×H×W order (`forward_features`), block outputs "
         "(`forward_intermediates`, timm's signature)"),
        ("stage", f"{stage}: {STAGES.get(stage, 'unknown')}"),
        ("training steps", "–" if meta.get("step") is None else f"{meta['step']} (train loss "
         f"{_fmt(meta.get('train_loss'))})"),
    ]  # fmt: skip
    teacher = meta.get("teacher")
    if teacher:
        src = f", imported from {teacher['source']}" if teacher.get("source") else ""
        rows.append(("teacher", f"`{teacher.get('path')}` (sha256 {teacher.get('sha256')}{src})"))
    source = meta.get("source")
    if source:
        rows.append(("source", f"{source.get('format')}: {source.get('architecture')} "
                     f"(`{source.get('path')}`)"))  # fmt: skip
    if meta.get("mlflow_run_id"):
        rows.append(("MLflow training run", f"`{meta['mlflow_run_id']}`"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    probes, where = probe_results(ckpt, meta)
    if probes:
        probe_md = "| protocol | top-1 | top-5 | random-init top-1 | selected head | run |\n"
        probe_md += "|---|---|---|---|---|---|\n" + "\n".join(
            f"| {r['protocol']} | {_fmt(r['top1'])} | {_fmt(r['top5'])} | "
            f"{_fmt(r['random_top1'])} | {r['head']} | `{r['run_id']}` |"
            for r in probes
        )
    else:
        probe_md = "None recorded."
    tags = "".join(f"- {t}\n" for t in HUB_TAGS)
    return f"""---
library_name: salt
tags:
{tags}---

# salt VideoViT ({stage})

A video encoder trained or imported with salt (`pip install salt-video`; Static-teacher
Asymmetric Latent Training, arXiv 2509.24317).

| | |
|---|---|
{table}

## Probe results

Frozen-backbone probes run with `salt-probe` (head chosen on a held-out part of the train split,
validation reported once). {where}

{probe_md}

## How to load

```python
from salt.models import VideoViT

encoder = VideoViT.from_pretrained("<this repo id or folder>").eval()
tokens = encoder.forward_features(clip)  # clip [B, C, T, H, W], normalised as above
final, blocks = encoder.forward_intermediates(clip, indices=4, output_fmt="NLC")
```

With salt installed, the folder's `model.safetensors` is also a salt encoder file:
`salt-probe --ckpt <folder>/model.safetensors ...`, or a stage-2 teacher:
`salt fit -c configs/student/vitl16.yaml --model.teacher <folder>/model.safetensors`.
"""
