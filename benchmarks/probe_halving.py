"""Does successive halving pick as well as the full grid? A synthetic task on frozen-like tokens.

The task (CPU-sized, seeded): C classes; a sample is N tokens of width D; each class owns a random
"motif" of K tokens (prototype vectors) placed at random positions among noise tokens, with a
weaker class-mean shift on every token, so a linear read of the mean-pooled tokens is mediocre
and attention to the motif tokens does better — like a frozen video encoder's tokens, heads differ
in how fast they find it (low lr heads start slowly and catch up, high wd heads plateau). The
grid is V-JEPA 2's (5 lr × 4 wd attentive heads, 4 blocks) shrunk to the tiny width.

For each seed the same features go through the probe loop twice (salt.probes.protocol,
`probe_features`: cached mode, no retrain): `grid_schedule="full"` and `"halving"`
(`halving_epochs`, keep half), then both chosen heads are scored on validation. It prints one row
per seed: both picks, their validation top-1, the difference (target: halving ≥ full − 0.5 points),
and the share of head-epochs halving trained.

    python benchmarks/probe_halving.py --seeds 0 1 2            # ~10 min on 2 CPU cores
    python benchmarks/probe_halving.py --smoke                  # seconds (the test runs this)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from salt.probes.config import load_config
from salt.probes.features import FeatureSet
from salt.probes.protocol import probe_features, score


def make_task(seed: int, m: int, c: int, n: int, d: int, k: int, noise: float) -> FeatureSet:
    """M samples of N tokens [M, 1, N, D]: K class-motif tokens among noise, plus a mean shift."""
    g = torch.Generator().manual_seed(10_000 + seed // 1000)  # prototypes shared by the splits
    motifs = torch.randn(c, k, d, generator=g)
    shift = 0.15 * torch.randn(c, d, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (m,), generator=g)
    x = noise * torch.randn(m, n, d, generator=g) + shift[y][:, None]
    pos = torch.argsort(torch.rand(m, n, generator=g), dim=1)[:, :k]  # [M, K] motif positions
    x[torch.arange(m)[:, None], pos] += motifs[y]
    return FeatureSet(x[:, None].half(), y, [f"{seed}-{i:06d}" for i in range(m)])


def run_seed(seed: int, a: argparse.Namespace) -> dict:
    task = dict(c=a.classes, n=a.tokens, d=a.dim, k=a.motif, noise=a.noise)
    train = make_task(seed * 1000, a.train, **task)
    val = make_task(seed * 1000 + 1, a.val, **task)
    base = dict(head_kinds=["attentive"], lrs=a.lrs, wds=a.wds, probe_depth=a.depth,
                probe_heads=4, epochs=a.epochs, batch_size=a.batch, val_batch_size=256,
                heldout_fraction=0.15, seed=seed, halving_epochs=a.rungs)  # fmt: skip
    row: dict = {"seed": seed}
    for sched in ("full", "halving"):
        cfg = load_config(None, {**base, "grid_schedule": sched})
        t0 = time.perf_counter()
        sweep = probe_features(train, val.feats, cfg, a.classes)
        res = score(sweep, train, val, a.classes)
        row[sched] = {
            "pick": sweep.selected,
            "val_top1": 100 * res.top1,
            "heldout_top1": 100 * sweep.heldout[sweep.selected]["top1"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if sched == "halving":
            trained = sum(h.get("epochs", a.epochs) for h in sweep.heldout.values())
            row["head_epochs_share"] = trained / (len(sweep.heldout) * a.epochs)
    row["delta"] = row["halving"]["val_top1"] - row["full"]["val_top1"]
    row["same_pick"] = row["halving"]["pick"] == row["full"]["pick"]
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train", type=int, default=2400)
    p.add_argument("--val", type=int, default=1200)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--motif", type=int, default=3)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lrs", type=float, nargs="+", default=[5e-3, 3e-3, 1e-3, 3e-4, 1e-4])
    p.add_argument("--wds", type=float, nargs="+", default=[0.01, 0.1, 0.4, 0.8])
    p.add_argument("--rungs", type=int, nargs="+", default=[2, 4, 6, 10])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    p.add_argument("--out", help="also write the rows as JSON here")
    a = p.parse_args(argv)
    if a.smoke:
        a.seeds, a.train, a.val, a.epochs, a.depth = [0], 120, 60, 3, 1
        a.lrs, a.wds, a.rungs = [3e-3, 1e-4], [0.01, 0.8], [1, 2]
    if a.threads:
        torch.set_num_threads(a.threads)
    print(
        f"{'seed':>4} {'full pick':>24} {'val':>6} {'halving pick':>24} {'val':>6} "
        f"{'delta':>6} {'head-ep':>7}",
        flush=True,
    )
    rows = []
    for seed in a.seeds:
        r = run_seed(seed, a)
        rows.append(r)
        print(
            f"{seed:4d} {r['full']['pick']:>24} {r['full']['val_top1']:6.2f} "
            f"{r['halving']['pick']:>24} {r['halving']['val_top1']:6.2f} {r['delta']:+6.2f} "
            f"{r['head_epochs_share']:7.2f}",
            flush=True,
        )
    worst = min(r["delta"] for r in rows)
    print(
        f"worst delta {worst:+.2f} top-1 points over seeds {a.seeds} (target >= -0.5); "
        f"same pick in {sum(r['same_pick'] for r in rows)}/{len(rows)}"
    )
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
