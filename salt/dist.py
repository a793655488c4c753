"""Small cross-rank agreements for `salt fit`: one gloo group for host-side votes, rank-0 decisions.

Training already runs one device collective per step (the gradient all-reduce / reduce-scatter);
everything else ranks must agree on is decided here, outside the hot path:

- host-side votes and small Python objects (the requeue flag, a time-based checkpoint, the resume
  path, the teacher's hash) travel over one gloo (CPU) group, so none of them synchronises a GPU
  stream. `cpu_group()` creates it once per process group; creating a group is itself collective,
  so it is first called from a hook every rank runs at the same point (a callback's `setup`).
- device tensors that are read on the host anyway (losses at logging steps, the checkpoint's
  `train_loss`) are summed over the default group (NCCL on GPUs): `sum_over_ranks`.

Every function is a no-op (returns the local value) when torch.distributed is not initialised or
the world has one rank, so single-process runs and tests take the same code path.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch

_CPU_GROUPS: dict[int, Any] = {}  # id(default process group) -> its gloo twin (None: it is gloo)
_TIMEOUT: timedelta | None = None  # collective timeout for groups made here (set_group_timeout)


def set_group_timeout(timeout: timedelta | None) -> None:
    """Timeout of the gloo group `cpu_group()` creates (default: torch's, 30 min)."""
    global _TIMEOUT
    _TIMEOUT = timeout


def shorten_timeouts(timeout: timedelta) -> None:
    """Set ``timeout`` on the default group and the gloo group made here, from now on (a local
    call on each rank, not a collective; torch ≥ 2.10 ``set_timeout`` or its older name)."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    if not (dist.is_available() and dist.is_initialized()):
        return
    set_timeout = getattr(c10d, "set_timeout", None) or c10d._set_pg_timeout
    set_timeout(timeout, None)
    for group in _CPU_GROUPS.values():
        if group is not None:
            set_timeout(timeout, group)


def is_distributed() -> bool:
    """torch.distributed is initialised with more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def cpu_group() -> Any:
    """A gloo group over every rank (None where the default group is gloo already).

    Collective the first time per process group: call it from code every rank runs in the same
    order (callback ``setup``), never from rank-0-only code.
    """
    import torch.distributed as dist

    world = dist.group.WORLD
    key = id(world)
    if key not in _CPU_GROUPS:
        if dist.get_backend() == "gloo":
            _CPU_GROUPS[key] = None
        else:
            kwargs = {"timeout": _TIMEOUT} if _TIMEOUT is not None else {}
            _CPU_GROUPS[key] = dist.new_group(backend="gloo", **kwargs)
    return _CPU_GROUPS[key]


def any_rank(flags: list[bool]) -> list[bool]:
    """Element-wise OR of `flags` over every rank: one all-reduce of a few ints on the CPU."""
    if not is_distributed():
        return [bool(f) for f in flags]
    import torch.distributed as dist

    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=cpu_group())
    return [bool(v) for v in t.tolist()]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order; `[obj]` on one process."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=cpu_group())
    return out


def from_rank_zero(compute: Any) -> Any:
    """`compute()` on rank 0 only, its result broadcast to every rank (a callable, so the other
    ranks never do the work: e.g. hashing a multi-GB file once per job instead of once per rank)."""
    if not is_distributed():
        return compute()
    import torch.distributed as dist

    box = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, group=cpu_group())
    return box[0]


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over every rank (a new tensor; the default group, so on the tensor's device).

    Asynchronous with respect to the host on GPUs: it costs a host sync only where the result is
    read, which callers do at logging / checkpoint steps only.
    """
    if not is_distributed():
        return t
    import torch.distributed as dist

    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
