"""The probe protocol's epochs, shared by online and cached mode: grid → held-out choice → val once
→ retrain the chosen setting on all of train → val once more.

A *source* (sources.py: frozen features in memory; online.py: the encoder run on decoded clips
every epoch) yields training batches of tokens and evaluation batches of S·V-view tokens; this file
does everything else, identically for both:

1. **Selection.** The grid (grid.py) trains on train's *fit* part for `epochs` epochs (warmup +
   cosine per step). With `grid_schedule="halving"`, after each epoch in `halving_epochs` the
   surviving heads are ranked on the held-out part of train and the worse part dropped
   (`halving_keep` survive). At the end the survivors are scored on held-out and the best is
   chosen (selection.py: top-1, then loss, then name). No validation sample has been read yet.
2. **Validation, once**, for the chosen head only: every sample exactly once across ranks,
   predictions gathered before the metrics are computed.
3. **Retrain** (default on): the chosen (kind, lr, wd) is trained from scratch on all of train
   (fit + held-out) with the same schedule, and scored on validation once.

Every epoch ends with the state written (state.py), so a crash or Slurm's warning signal costs at
most the epoch in progress; a rerun continues from there. Running out of memory in a step is a
`UsageError` naming the settings to lower.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch

from salt.data.stats import sum_counts
from salt.errors import UsageError
from salt.progress import ProgressLine

from .config import ProbeConfig
from .dist import Dist
from .grid import HeadSpec, ProbeGrid, num_steps
from .metrics import classification_metrics
from .optim import lr_factor
from .selection import rank_heads, select_head
from .state import Interrupted, StateStore, StopSignal, requeue_slurm_job

STOP_CHECK_EVERY = 10  # steps between the ranks' agreement on the stop flag


class Source(Protocol):
    """Where the tokens come from (see sources.py and online.py)."""

    embed_dim: int

    def steps_per_epoch(self, full: bool) -> int:
        """Training batches per epoch on every rank (fit part, or all of train when `full`)."""

    def train_batches(self, epoch: int, full: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(tokens [b, N, D], labels [b]) on the device, one sampled view per clip."""

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """("heldout" | "val") -> (tokens [b, V, N, D] on the device, labels [b], keys)."""

    def take_counts(self) -> dict[str, int]:
        """Data-pipeline counts (skips, pads) on this rank since the previous call."""


@contextmanager
def oom_guard(what: str, cfg: ProbeConfig):
    """Turn an out-of-memory error into a UsageError that names the settings to lower."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not isinstance(err, torch.OutOfMemoryError) and "can't allocate memory" not in str(err):
            raise
        raise UsageError(
            f"out of memory in the {what} at batch_size={cfg.batch_size} (global), "
            f"micro_batch={cfg.micro_batch}, val_batch_size={cfg.val_batch_size}, "
            f"head_chunk={cfg.head_chunk}, head_checkpoint={cfg.head_checkpoint}: set a smaller "
            "--micro-batch, --val-batch-size or --head-chunk, or --head-checkpoint 1"
        ) from err


def _metrics_json(m: dict) -> dict:
    return {**m, "confusion": m["confusion"].tolist()}


def score_heads(
    grid: ProbeGrid, batches: Any, dist: Dist, cfg: ProbeConfig, stats: dict | None = None
) -> dict[str, dict]:
    """Held-out top-1 and cross-entropy of every head (view-averaged softmax), summed over ranks."""
    G, dev = len(grid), grid.device
    correct, nll = torch.zeros(G, device=dev), torch.zeros(G, device=dev)
    n = torch.zeros(1, device=dev)
    with oom_guard("held-out pass (encoder and heads)", cfg):
        for x, y, _ in batches:
            y = y.to(dev)
            probs = grid.view_probs(x)  # [G, b, C]
            correct += (probs.argmax(-1) == y).sum(1)
            p_true = probs.gather(-1, y.expand(G, -1)[..., None]).squeeze(-1)  # [G, b]
            nll -= p_true.clamp_min(1e-12).log().sum(1)
            n += len(y)
    tot = dist.sum_tensor(torch.cat([correct, nll, n])).cpu()
    count = int(tot[-1])
    if stats is not None:
        stats["num_heldout"] = count
    if count == 0:
        raise UsageError(
            "the held-out slice of train is empty: more training clips are needed "
            "(or a larger heldout_fraction)"
        )
    return {
        name: {"top1": float(tot[i]) / count, "loss": float(tot[G + i]) / count}
        for i, name in enumerate(grid.names)
    }


def predict_split(
    grid: ProbeGrid, batches: Any, dist: Dist, cfg: ProbeConfig
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """View-averaged probabilities of a one-head grid on a split, gathered from every rank.

    Returns:
        (keys, probs [M, C], labels [M]) over the whole split: sorted by key when several ranks
        contributed, in loader order for one process.
    """
    keys, probs, labels = [], [], []
    with oom_guard("validation pass (encoder and head)", cfg):
        for x, y, k in batches:
            probs.append(grid.view_probs(x)[0].cpu())  # [b, C]
            labels.append(y.cpu())
            keys += list(k)
    local = (keys, torch.cat(probs) if probs else None, torch.cat(labels) if labels else None)
    parts = [p for p in dist.gather(local) if p[1] is not None]
    if not parts:
        raise UsageError("the validation split yielded no readable labelled clip")
    keys = [k for p in parts for k in p[0]]
    probs_all, labels_all = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
    if not dist.active:  # one process: loader order
        return keys, probs_all, labels_all
    order = sorted(range(len(keys)), key=keys.__getitem__)
    idx = torch.tensor(order, dtype=torch.long)
    return [keys[i] for i in order], probs_all[idx], labels_all[idx]


class Loop:
    """One probe run over a source (see the module docstring).

    Args:
        source: the tokens (online or cached).
        cfg: the protocol.
        specs: the grid.
        num_classes: classifier outputs.
        dist: ranks (a single process by default).
        store: where the state of every finished epoch goes (None: not resumable).
        log: progress lines (called on the main rank only).
        on_epoch: `(phase, epoch, metrics)` after each epoch, main rank (MLflow).
        on_step: `(phase, epoch, step)` after each training step, every rank (tests).
        score_val: compute validation metrics (False: keep the chosen head's validation
            probabilities instead, for callers that score them).
    """

    def __init__(
        self,
        source: Source,
        cfg: ProbeConfig,
        specs: list[HeadSpec],
        num_classes: int,
        *,
        dist: Dist | None = None,
        store: StateStore | None = None,
        log: Callable[[str], None] = print,
        on_epoch: Callable[[str, int, dict], None] | None = None,
        on_step: Callable[[str, int, int], None] | None = None,
        score_val: bool = True,
    ):
        self.source, self.cfg, self.specs, self.num_classes = source, cfg, specs, num_classes
        self.dist = dist or Dist()
        self.store, self.on_epoch, self.on_step = store, on_epoch, on_step
        self.score_val = score_val
        self._log = log
        self.stop = StopSignal()

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            self._log(msg)

    # ------------------------------------------------------------------ grid
    def _grid(self, specs: list[HeadSpec], saved: dict | None) -> ProbeGrid:
        c = self.cfg
        grid = ProbeGrid(
            specs, self.source.embed_dim, self.num_classes, depth=c.probe_depth,
            num_heads=c.probe_heads, mlp_ratio=c.mlp_ratio, seed=c.seed, device=self.dist.device,
            checkpoint=bool(c.head_checkpoint), head_chunk=c.head_chunk, micro_batch=c.micro_batch,
            all_reduce=self.dist.all_reduce, world_size=self.dist.world_size,
        )  # fmt: skip
        if saved is not None:
            grid.load_grid_state(saved)
        return grid

    def _save(self, st: dict) -> None:
        if self.store is not None:
            self.store.save(st)

    def _check_stop(self, st: dict, epoch: int) -> None:
        if self.dist.any(self.stop.received):
            requeued = requeue_slurm_job(self.log) if self.dist.is_main else False
            raise Interrupted(st["phase"], epoch, requeued)

    def _counts(self, st: dict, split: str) -> None:
        counts = sum_counts(self.dist.gather(self.source.take_counts()))
        st["counts"].setdefault(split, counts)  # the first pass over each split

    # ------------------------------------------------------------------ training
    def _train(self, grid: ProbeGrid, st: dict, full: bool) -> None:
        c, phase = self.cfg, st["phase"]
        spe = self.source.steps_per_epoch(full)
        if spe < 1:
            raise UsageError(
                f"{'train' if full else 'the fit part of train'} gives no full "
                f"batch of {c.batch_size} per rank; lower --batch-size"
            )
        total, warmup = num_steps(spe, c.epochs, c.warmup_epochs)
        prog = ProgressLine(f"probe {phase}", total, every=None, every_s=c.progress_every_s)
        for epoch in range(st["epoch"], c.epochs):
            G, t0, done = len(grid), time.perf_counter(), 0
            loss_sum = torch.zeros(G, device=grid.device)
            batches = self.source.train_batches(epoch, full)
            for i in range(spe + 1):
                with oom_guard("training step (encoder and heads)", c):
                    x, y = next(batches, (None, None))
                    if x is None:
                        break
                    if i >= spe:
                        raise RuntimeError(f"rank {self.dist.rank}: more than {spe} batches")
                    step = epoch * spe + i
                    loss_sum += grid.train_step(x, y, lr_factor(step, total, warmup)) * len(y)
                done += len(y)
                if self.on_step is not None:
                    self.on_step(phase, epoch, i)
                if (i + 1) % STOP_CHECK_EVERY == 0:
                    self._check_stop(st, epoch)
                if self.dist.is_main and prog.due(step + 1):
                    rate = done * self.dist.world_size / max(time.perf_counter() - t0, 1e-9)
                    loss = float((loss_sum / done).min())  # best head, running mean (one sync)
                    self.log(prog.update(step + 1, epoch=f"{epoch + 1}/{c.epochs}", heads=G,
                             clips_s=round(rate, 1), loss=round(loss, 4),
                             best_heldout=st.get("best_heldout")))  # fmt: skip
            if done == 0:
                raise UsageError(f"the training split yielded no clip in epoch {epoch + 1}")
            self._counts(st, "train" if not full else "train_full")
            losses = (self.dist.sum_tensor(loss_sum) / (done * self.dist.world_size)).tolist()
            st["train_loss"].update(dict(zip(grid.names, losses, strict=True)))
            seconds = time.perf_counter() - t0
            clips = done * self.dist.world_size
            st["history"].append({"phase": phase, "epoch": epoch + 1, "heads": G, "clips": clips,
                                  "seconds": seconds, "clips_per_s": clips / seconds})  # fmt: skip
            st["epoch"] = epoch + 1
            rung = None
            if phase == "select" and c.grid_schedule == "halving" and epoch + 1 in c.halving_epochs:
                rung = self._halve(grid, st, epoch + 1)
            st["grid"] = grid.grid_state()
            self._save(st)
            if self.on_epoch is not None and self.dist.is_main:
                self.on_epoch(phase, epoch + 1, {"heads": G, "best_train_loss": min(losses),
                                                 "clips_per_s": st["history"][-1]["clips_per_s"],
                                                 **(rung or {})})  # fmt: skip
            self._check_stop(st, epoch + 1)

    def _halve(self, grid: ProbeGrid, st: dict, epoch: int) -> dict | None:
        if len(grid) <= 1 or epoch >= self.cfg.epochs:
            return None
        scores = self._heldout_scores(grid, st)
        ranked = rank_heads(scores)
        keep = ranked[: max(1, math.ceil(len(ranked) * self.cfg.halving_keep))]
        for n in ranked[len(keep) :]:
            st["grid_scores"][n] = {**scores[n], "epochs": epoch}
        st["rungs"].append({"epoch": epoch, "kept": keep, "scores": scores})
        grid.prune(keep)
        self.log(
            f"[probe] halving after epoch {epoch}: kept {len(keep)} of {len(ranked)} heads "
            f"(best held-out top-1 {scores[keep[0]]['top1']:.4f})"
        )
        return {"heldout_best_top1": scores[keep[0]]["top1"]}

    def _heldout_scores(self, grid: ProbeGrid, st: dict) -> dict[str, dict]:
        scores = score_heads(grid, self.source.eval_batches("heldout"), self.dist, self.cfg, st)
        self._counts(st, "heldout")
        best = max(s["top1"] for s in scores.values())
        st["best_heldout"] = max(best, st.get("best_heldout") or 0.0)
        return scores

    def _validate(self, grid: ProbeGrid, st: dict) -> dict:
        """The one read of the validation labels for a head already chosen."""
        keys, probs, labels = predict_split(
            grid, self.source.eval_batches("val"), self.dist, self.cfg
        )
        self._counts(st, "val")
        st["num_val"] = len(keys)
        if not self.score_val:  # predictions only (the caller scores them)
            return {"probs": probs, "keys": keys}
        if len(set(keys)) != len(keys):
            raise UsageError("validation keys are not unique: a video is listed twice in --val")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if len(bad):
            raise UsageError(f"validation label {int(bad[0])} outside [0, {self.num_classes})")
        return _metrics_json(classification_metrics(probs, labels, self.num_classes))

    # ------------------------------------------------------------------ phases
    def run(self) -> dict:
        """Selection, validation, retrain (resuming from the store); returns the final state."""
        st = (self.store.load(self.dist.device) if self.store is not None else None) or {
            "phase": "select", "epoch": 0, "grid": None, "train_loss": {}, "history": [],
            "rungs": [], "grid_scores": {}, "counts": {}, "best_heldout": None,
        }  # fmt: skip
        if st["phase"] == "done":
            self.log(f"[probe] finished before (state in {self.store.dir}); --no-resume reruns it")
        elif st["phase"] != "select" or st["epoch"]:
            self.log(f"[probe] resuming: {st['phase']} after epoch {st['epoch']}")
        self.stop.install()
        try:
            if st["phase"] == "select":
                self._select(st)
            if st["phase"] == "retrain":
                spec = HeadSpec(**st["selected_spec"])
                grid = self._grid([spec], st["grid"])
                self._train(grid, st, full=True)
                st["retrained"] = self._validate(grid, st)
                st.update(phase="done", grid=None)
                self._save(st)
        finally:
            self.stop.restore()
        return st

    def _select(self, st: dict) -> None:
        grid = self._grid(self.specs, st["grid"])
        self._train(grid, st, full=False)
        final = self._heldout_scores(grid, st)
        for n, s in final.items():
            st["grid_scores"][n] = {**s, "epochs": self.cfg.epochs}
        for n, s in st["grid_scores"].items():
            s["train_loss"] = st["train_loss"].get(n)
        selected = select_head(final)
        grid.prune([selected])
        st["selected"] = selected
        spec = grid.specs[selected]
        st["selected_spec"] = {"kind": spec.kind, "lr": spec.lr, "wd": spec.wd}
        self.log(
            f"[probe] chose {selected} (held-out top-1 {final[selected]['top1']:.4f}); "
            "scoring it on validation"
        )
        st["fit_head"] = self._validate(grid, st)
        st.update(phase="retrain" if self.cfg.retrain else "done", epoch=0, grid=None)
        self._save(st)
