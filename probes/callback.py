"""A live probe during training: every N steps, a quick probe on the current encoder.

SALT's model-selection claim: the student's loss predicts its frozen accuracy. `LiveProbe` makes
that visible while a run is live — every `every_n_steps` optimizer steps it encodes a small
labelled set with the module's current encoder (frozen for the moment: eval mode, no grad), trains
one quick head (linear, or a tiny attentive probe) for a few epochs and logs `probe/live_top1` to
the trainer's loggers at the same step as `train/loss`.

Add it to a run with `--trainer.callbacks+=salt.probes.callback.LiveProbe
--trainer.callbacks.train_shards=... --trainer.callbacks.num_classes=...` (or in the YAML).

The probe never changes training: it restores the encoder's train/eval mode and forks the RNG so
the training stream (masks, dropout, data order) is the same as without it. The labelled clips
are decoded once and kept in memory (uint8), so keep the set small.

Which ranks run it: under DDP (or one process) rank 0 alone encodes the clips and fits the head;
the encoder is a plain module there. Under FSDP the encoder's weights are sharded and every
forward all-gathers them, a collective every rank must join, so *every* rank loads the same clips
and runs the same encoder forwards in lock-step (the other ranks drop the features: their
forwards cost no extra wall time, they would otherwise wait for rank 0 in the next step's
collective); rank 0 alone fits the head and logs. Then all ranks meet at one barrier, so the
head's training time is spent by everyone in one known phase (``salt.watchdog``: "live probe")
rather than inside the next step's gradient collective.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

from salt import watchdog

from .features import encode_clips
from .grid import HeadSpec, ProbeGrid
from .optim import lr_factor
from .selection import stratified_split


class LiveProbe(pl.Callback):
    """Quick probe of the module's encoder every N steps; logs `probe/live_top1`.

    Args:
        train_shards: labelled shards the probe head is trained on.
        num_classes: number of classes.
        val_shards: labelled shards it is scored on; None = score on a held-out slice of train.
        every_n_steps: probe when `trainer.global_step` is a multiple of this.
        frames_per_clip: frames per clip (None = the module's `num_frames`).
        frame_step: frame stride.
        crop_size: crop side (None = the module's `img_size`).
        max_samples: keep at most this many samples per split (None = all).
        kind: "linear" or "attentive".
        depth: attentive probe depth (1 = V-JEPA 1's single cross-attention block).
        num_heads: attentive probe heads.
        lr: head learning rate. weight_decay: head weight decay.
        epochs: head training epochs. batch_size: head batch size.
        heldout_fraction: held-out share of train when `val_shards` is None.
        seed: seed of the split, the head init and its data order.
        at_start: also probe before the first step.
        num_workers: loader workers for the one-time decode.
        encoder_attr: attribute of the LightningModule holding the encoder.
        which: ``"auto"`` probes a module's EMA ``target_encoder`` when it has one (the V-JEPA
            baseline, ``salt.ema.EMAModule``; what V-JEPA evaluates), else ``encoder_attr``;
            ``"online"`` always ``encoder_attr``; ``"target"`` requires the target encoder.
    """

    def __init__(
        self,
        train_shards: str,
        num_classes: int,
        val_shards: str | None = None,
        every_n_steps: int = 500,
        frames_per_clip: int | None = None,
        frame_step: int = 4,
        crop_size: int | None = None,
        max_samples: int | None = 512,
        kind: str = "linear",
        depth: int = 1,
        num_heads: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        epochs: int = 10,
        batch_size: int = 32,
        heldout_fraction: float = 0.2,
        seed: int = 0,
        at_start: bool = False,
        num_workers: int = 0,
        encoder_attr: str = "encoder",
        which: str = "auto",
    ):
        super().__init__()
        if which not in ("auto", "target", "online"):
            raise ValueError(f"which must be 'auto', 'target' or 'online', got {which!r}")
        self.which = which
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.train_shards, self.val_shards, self.num_classes = train_shards, val_shards, num_classes
        self.every_n_steps, self.at_start = every_n_steps, at_start
        self.clip = {
            "frames_per_clip": frames_per_clip,
            "frame_step": frame_step,
            "crop_size": crop_size,
        }
        self.max_samples, self.num_workers = max_samples, num_workers
        self.spec = HeadSpec(kind, lr, weight_decay)
        self.depth, self.num_heads = depth, num_heads
        self.epochs, self.batch_size = epochs, batch_size
        self.heldout_fraction, self.seed = heldout_fraction, seed
        self.encoder_attr = encoder_attr
        self.history: list[tuple[int, float]] = []  # (step, top-1) of every probe run
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._last_step = -1
        self._all_ranks = False  # FSDP: every rank joins the encoder forwards (setup)

    # ------------------------------------------------------------------ data, once
    def _load(
        self, shards: str, pl_module: pl.LightningModule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from salt.data import eval_loader

        c = self.clip
        loader = eval_loader(
            shards,
            frames_per_clip=c["frames_per_clip"] or getattr(pl_module, "num_frames", 16),
            frame_step=c["frame_step"],
            crop_size=c["crop_size"] or getattr(pl_module, "img_size", 224),
            batch_size=16,
            num_workers=self.num_workers,
        )
        videos, labels, n = [], [], 0
        for batch in loader:
            videos.append(batch["video"])  # uint8 [B, 1, 1, C, T, H, W]
            labels.append(batch["label"])
            n += len(batch["label"])
            if self.max_samples is not None and n >= self.max_samples:
                break
        if not videos:
            raise ValueError(f"LiveProbe: no labelled samples in {shards}")
        video, label = torch.cat(videos), torch.cat(labels)
        return video[: self.max_samples], label[: self.max_samples]

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from pytorch_lightning.strategies import FSDPStrategy, ModelParallelStrategy

        self._all_ranks = trainer.world_size > 1 and isinstance(
            trainer.strategy, (ModelParallelStrategy, FSDPStrategy)
        )

    def _runs_here(self, trainer: pl.Trainer) -> bool:
        return self._all_ranks or trainer.is_global_zero

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_start and self._runs_here(trainer):
            self._probe(trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        # global_step repeats across gradient-accumulation micro-batches: probe once per step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            if self._runs_here(trainer):
                self._probe(trainer, pl_module)

    # ------------------------------------------------------------------ the probe
    @torch.no_grad()
    def _features(
        self,
        encoder: torch.nn.Module,
        video: torch.Tensor,
        pl_module: pl.LightningModule,
        keep: bool = True,
    ) -> torch.Tensor:
        mean, std = pl_module.mean, pl_module.std  # the module's input normalisation
        out = []
        for v in video.split(self.batch_size):  # the same batches on every rank (FSDP)
            feats = encode_clips(encoder, v.to(pl_module.device), mean=mean, std=std)
            if keep:
                out.append(feats.float())
        return torch.cat(out) if keep else torch.empty(0)  # [M, 1, N, D] on rank 0

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        with watchdog.phase("live probe"):
            top1 = self._probe_ranks(trainer, pl_module)
            if self._all_ranks:
                trainer.strategy.barrier("salt.live_probe")  # rank 0 fitted the head meanwhile
        return top1

    def _probe_ranks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
        t0 = time.perf_counter()
        if self._data is None:
            self._data = {"train": self._load(self.train_shards, pl_module)}
            if self.val_shards:
                self._data["val"] = self._load(self.val_shards, pl_module)
        encoder = self._encoder(pl_module)
        device = pl_module.device
        devices = [device.index or 0] if device.type == "cuda" else []
        was_training = encoder.training
        encoder.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                if not trainer.is_global_zero:  # FSDP: join the forwards, no head
                    self._join_forwards(encoder, pl_module)
                    return None
                top1 = self._fit_and_score(encoder, pl_module, device)
        finally:
            encoder.train(was_training)
        self.history.append((trainer.global_step, top1))
        metrics = {"probe/live_top1": top1, "probe/live_seconds": time.perf_counter() - t0}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return top1

    def _join_forwards(self, encoder: torch.nn.Module, pl_module: pl.LightningModule) -> None:
        """The encoder forwards rank 0 runs, in the same order (FSDP all-gathers inside)."""
        self._features(encoder, self._data["train"][0], pl_module, keep=False)
        if "val" in self._data:
            self._features(encoder, self._data["val"][0], pl_module, keep=False)

    def _encoder(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        target = getattr(pl_module, "target_encoder", None) if self.which != "online" else None
        if target is None and self.which == "target":
            raise ValueError(
                f"LiveProbe(which='target'): {type(pl_module).__name__} has no EMA target encoder"
            )
        return target if target is not None else getattr(pl_module, self.encoder_attr)

    def _fit_and_score(
        self, encoder: torch.nn.Module, pl_module: pl.LightningModule, device: torch.device
    ) -> float:
        video, labels = self._data["train"]
        feats = self._features(encoder, video, pl_module)
        if "val" in self._data:
            fit_idx = torch.arange(len(labels))
            val_video, val_labels = self._data["val"]
            val_feats = self._features(encoder, val_video, pl_module)
        else:
            fit_idx, held_idx = stratified_split(labels, self.heldout_fraction, self.seed)
            val_feats, val_labels = feats[held_idx.to(feats.device)], labels[held_idx]
        grid = ProbeGrid([self.spec], feats.shape[-1], self.num_classes, depth=self.depth,
                         num_heads=self.num_heads, seed=self.seed, device=device)  # fmt: skip
        gen = torch.Generator().manual_seed(self.seed)
        steps = -(-len(fit_idx) // self.batch_size)
        with torch.enable_grad():
            for epoch in range(self.epochs):
                order = fit_idx[torch.randperm(len(fit_idx), generator=gen)]
                for i in range(steps):
                    rows = order[i * self.batch_size : (i + 1) * self.batch_size]
                    x = feats[rows.to(feats.device), 0]  # [b, N, D], the one view
                    y = labels[rows].to(device)
                    grid.train_step(x, y, lr_factor(epoch * steps + i, self.epochs * steps, 0))
        probs = torch.cat([grid.view_probs(val_feats[i : i + self.batch_size])[0].cpu()
                           for i in range(0, len(val_feats), self.batch_size)])  # fmt: skip
        return (probs.argmax(-1) == val_labels).float().mean().item()
