"""Runs under torchrun (gloo, CPU) for test_probe_ddp.py: a seeded, untrained grid's held-out and
validation passes through the online source, gathered over the ranks, written by rank 0."""

from __future__ import annotations

import json
import sys

import torch

from salt.data.stats import sum_counts
from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from salt.models import create_encoder
from salt.probes.config import load_config
from salt.probes.dist import init_distributed
from salt.probes.grid import ProbeGrid, make_grid
from salt.probes.loop import predict_split, score_heads
from salt.probes.online import OnlineSource

CFG = dict(mode="online", frames_per_clip=4, frame_step=2, crop_size=32, num_workers=0,
           num_views=3, num_segments=2, heldout_fraction=0.25, val_batch_size=3)  # fmt: skip


def main(train: str, val: str, out: str) -> None:
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    cfg = load_config(None, CFG)
    torch.manual_seed(0)
    enc = create_encoder("vit_test", img_size=32, num_frames=4)
    src = OnlineSource(enc, cfg, train, val, 4, dist=dist, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    specs = make_grid(["attentive", "linear"], [1e-3, 3e-3], [0.01])
    grid = ProbeGrid(specs, src.embed_dim, 4, depth=2, num_heads=4, seed=0)
    scores = score_heads(grid, src.eval_batches("heldout"), dist, cfg)
    grid.prune([grid.names[0]])
    keys, probs, labels = predict_split(grid, src.eval_batches("val"), dist, cfg)
    counts = sum_counts(dist.gather(src.take_counts()))
    if dist.is_main:
        with open(out, "w") as f:
            json.dump({"world": dist.world_size, "scores": scores, "keys": keys,
                       "probs": probs.tolist(), "labels": labels.tolist(), "counts": counts}, f)  # fmt: skip
    dist.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
