"""Time ``Trainer.fit`` itself on synthetic batches: the full `salt fit` step, Trainer loop included.

Used by ``step_throughput.py`` (variant ``lightning``: one device, what the loop adds over the bare
step) and by ``multi_gpu.py`` (DDP / FSDP through ``salt.strategies``). The module is built by
the same constructor as in ``bench_setup``; the Trainer runs with ``precision="bf16-mixed"``, no
logger, no checkpoints, no progress bar. A callback records a CUDA event at the start of every
batch; the step time is the interval between consecutive batch starts (everything the loop does
per step, data fetch of an on-device batch included), median over the timed steps.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import perf
import pytorch_lightning as pl
import torch
from bench_setup import build_for, synthetic_batches
from torch.utils.data import DataLoader, Dataset


class CycleBatches(Dataset):
    """``length`` items cycling over prepared batches (already on the device)."""

    def __init__(self, batches: list[dict], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


class StepTimer(pl.Callback):
    """Events at each batch start (CUDA) or host clock (CPU); peak memory after the warm-up."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        self.device, self.warmup = device, warmup
        self.marks: list[Any] = []

    def _mark(self) -> Any:
        if self.device.type == "cuda":
            evt = torch.cuda.Event(enable_timing=True)
            evt.record()
            return evt
        import time

        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            perf.reset_peak_memory(self.device)
        self.marks.append(self._mark())

    def on_train_end(self, trainer, pl_module) -> None:
        self.marks.append(self._mark())
        perf.synchronize(self.device)

    def times_ms(self) -> list[float]:
        m = self.marks[self.warmup :]
        if self.device.type == "cuda":
            return [a.elapsed_time(b) for a, b in zip(m[:-1], m[1:], strict=False)]
        return [(b - a) * 1e3 for a, b in zip(m[:-1], m[1:], strict=False)]


def run_lightning(
    spec: dict,
    device: torch.device,
    workdir: Path,
    strategy: Any = "auto",
    devices: int = 1,
    num_nodes: int = 1,
) -> dict:
    """``Trainer.fit`` for ``warmup + steps`` steps of one module; returns step times and memory."""
    local = device
    if device.type == "cuda":
        local = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)  # the same initial weights on every rank
    # lr warmup shorter than the few steps run (the schedule needs it; the compute is the same)
    module = build_for(spec, local, workdir, compile=spec.get("compile", False), warmup_steps=1)
    warmup, steps = spec["warmup"], spec["steps"]
    batches, _ = synthetic_batches(
        module, local, spec["batch"], 2, min(warmup + steps, 8), seed=spec.get("seed", 0)
    )
    loader = DataLoader(CycleBatches(batches, warmup + steps + 1), batch_size=None, shuffle=False)
    timer = StepTimer(local, warmup)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision="bf16-mixed" if spec.get("amp", device.type == "cuda") else "32-true",
        max_steps=warmup + steps,
        gradient_clip_val=spec.get("max_norm"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # each rank cycles its own batches
        limit_val_batches=0,
        callbacks=[timer],
        default_root_dir=str(workdir / "lightning"),
    )
    trainer.fit(module, train_dataloaders=loader)
    times = timer.times_ms()
    res: dict[str, Any] = {**perf.summarize_ms(times), "times_ms": times}
    res["peak_mem_gib"] = perf.peak_memory_gib(local)
    res["peak_reserved_gib"] = perf.peak_reserved_gib(local)
    res["clips_per_s"] = spec["batch"] / (statistics.median(times) * 1e-3)  # per device
    res["global_rank"] = trainer.global_rank
    res["world_size"] = trainer.world_size
    return res
