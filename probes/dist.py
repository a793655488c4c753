"""Ranks for `salt-probe`: one process per GPU, placed by Slurm (srun) or torchrun, as `salt fit`.

The cluster environment is Lightning's: `SLURMEnvironment` inside an srun task (one task per GPU,
`--ntasks-per-node` = GPUs per node, as slurm/train.sbatch), else `TorchElasticEnvironment` under
torchrun, else a single process. Several processes join one `torch.distributed` group (NCCL on
GPUs, gloo on CPU); every rank holds the whole head grid and averages its gradients with the
others (grid.py), reads its own part of each split, and the evaluation results are summed or
gathered here before any metric is computed.

A second gloo group carries the "stop" flag (Slurm's warning signal) so checking it never
synchronises the GPU.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as tdist

from salt.errors import UsageError


@dataclass
class Dist:
    """This process's place: rank, world size, device; collectives that are no-ops alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    env: str = "single"
    _flag_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum every tensor over ranks, in place (launched together, then awaited)."""
        if not self.active:
            return
        works = [tdist.all_reduce(t, async_op=True) for t in tensors]
        for w in works:
            w.wait()

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of `t` summed over ranks (on this rank's device)."""
        t = t.to(self.device).clone()
        self.all_reduce([t])
        return t

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (pickled; for small results only)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (over a CPU/gloo group)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=self._flag_group)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active:
            tdist.barrier(group=self._flag_group)

    def close(self) -> None:
        if self.active and tdist.is_initialized():
            tdist.destroy_process_group()


def _environment():
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    from salt.resume import in_slurm_task

    if TorchElasticEnvironment.detect():
        return TorchElasticEnvironment(), "torchrun"
    if in_slurm_task() and SLURMEnvironment.detect():  # (detect() warns outside srun tasks)
        return SLURMEnvironment(auto_requeue=False), "slurm"
    return None, "single"


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> Dist:
    """Join the process group of this job (or stay alone) and pick this rank's device.

    Args:
        device: "auto" (this rank's GPU if CUDA is available, else CPU), "cpu", "cuda".
        timeout_s: collective timeout: a rank that dies turns into an error on the others after
            this long instead of a hang.
    """
    env, kind = _environment()
    world = env.world_size() if env is not None else 1
    rank = env.global_rank() if env is not None else 0
    local = env.local_rank() if env is not None else 0
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if use_cuda:
        index = int(device.split(":")[1]) if ":" in device else local % torch.cuda.device_count()
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    d = Dist(rank, world, local, dev, kind)
    if world > 1:
        os.environ.setdefault("MASTER_ADDR", env.main_address)
        os.environ.setdefault("MASTER_PORT", str(env.main_port))
        backend = "nccl" if use_cuda else "gloo"
        tdist.init_process_group(
            backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": dev} if use_cuda else {}),
        )
        d._flag_group = tdist.new_group(backend="gloo") if backend != "gloo" else None
    return d
