"""Shared pieces of the salt-probe tests: a tiny encoder file, tiny real-H.264 splits, CLI args.

`write_encoder` writes a random `vit_test` the way `salt export` does (`.safetensors` + salt
metadata), so `salt-probe --ckpt` loads it through the real `load_encoder`. `tiny_splits` writes
synthetic motion shards (PyAV H.264) and the same videos as loose `.mp4` files with CSV lists.
`TINY` is a protocol small enough for 2 CPU cores: 4 frames of 32², depth-1 heads, 2 epochs.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import torch

from salt.data.synthetic import write_synthetic_shards
from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from salt.models import create_encoder
from salt.models.rope import ROPE_CONVENTION

TINY = [
    "--frames-per-clip", "4", "--frame-step", "2", "--crop-size", "32", "--num-workers", "0",
    "--probe-depth", "1", "--probe-heads", "4", "--head-kinds", "attentive,linear",
    "--lrs", "3e-3,1e-3", "--wds", "0.01", "--linear-lrs", "1e-2", "--epochs", "2",
    "--batch-size", "8", "--val-batch-size", "8", "--heldout-fraction", "0.25",
    "--crop-scale", "0.5,1.0", "--rand-augment", "0", "--progress-every-s", "0",
]  # fmt: skip


def write_encoder(
    path: Path, *, seed: int = 0, mlflow_run_id: str | None = None, step: int = 0
) -> Path:
    """A random `vit_test` (32², 4 frames) as an exported `.safetensors` encoder file."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    enc = create_encoder("vit_test", img_size=32, num_frames=4)
    meta = {
        "stage": "student", "encoder_config": enc.config, "encoder_prefix": "encoder.",
        "rope_convention": ROPE_CONVENTION, "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD), "step": step, "train_loss": 0.5, "teacher": None,
        "mlflow_run_id": mlflow_run_id,
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in enc.state_dict().items()},
        str(path),
        metadata={"salt": json.dumps(meta)},
    )
    return path


def tiny_splits(out: Path, num_train: int = 32, num_val: int = 12) -> dict:
    """Synthetic motion shards (4 classes, 12 frames of 32²) plus CSV lists of the same videos."""
    s = write_synthetic_shards(
        str(out), num_train=8, num_probe_train=num_train, num_val=num_val, num_classes=4,
        frames=12, size=32,
    )  # fmt: skip
    for split in ("probe_train", "val"):
        rows = []
        for tar in sorted(out.glob(f"{split}-*.tar")):
            with tarfile.open(tar) as tf:
                members = {m.name: m for m in tf.getmembers()}
                for name, m in members.items():
                    if not name.endswith(".mp4"):
                        continue
                    key = name[: -len(".mp4")]
                    label = json.loads(tf.extractfile(members[key + ".json"]).read())["label"]
                    video = out / "videos" / split / name
                    video.parent.mkdir(parents=True, exist_ok=True)
                    video.write_bytes(tf.extractfile(m).read())
                    rows.append(f"videos/{split}/{name},{label}")
        (out / f"{split}.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
        s[f"{split}_csv"] = str(out / f"{split}.csv")
    return s


def probe_args(ckpt: Path, train: str, val: str, *extra: str) -> list[str]:
    return ["--ckpt", str(ckpt), "--train", train, "--val", val, "--num-classes", "4",
            "--device", "cpu", *TINY, *extra]  # fmt: skip
