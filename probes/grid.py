"""The probe grid: every head of an lr × wd sweep, trained together on the same frozen tokens.

`ProbeGrid` holds the attentive heads as one `StackedAttentive` and the linear heads as one
`StackedLinear` (stacked.py), each with a per-head-lr/wd `StackedAdamW` (optim.py). One
`train_step` takes one batch of tokens (computed once, shared by every head) and:

- runs the attentive heads in chunks of `head_chunk` heads, forward + backward per chunk, so the
  activations of only one chunk are alive at a time (with `checkpoint`, only each block's input);
- sums the per-head cross-entropies (heads are independent: the gradient of head g depends on its
  own loss only, so training G heads together equals training each alone);
- averages gradients over ranks (an all-reduce per stacked parameter: DDP's reducer expects one
  backward per forward and a fixed parameter set, and here a step has one backward per chunk and
  successive halving changes the parameter set);
- steps every head's AdamW at its own lr · the schedule factor.

`prune(names)` keeps a subset of heads with their optimizer state (successive halving);
`export(name)` returns one head as a plain `heads.AttentiveProbe` / `heads.LinearProbe`.
Initialisation is that of the per-head modules, built in spec order under `seed`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from salt.errors import UsageError

from .heads import build_head
from .optim import StackedAdamW
from .stacked import StackedAttentive, StackedLinear

KINDS = ("attentive", "linear")


@dataclass(frozen=True)
class HeadSpec:
    """One cell of the grid: head kind and its optimiser settings."""

    kind: str
    lr: float
    wd: float

    @property
    def name(self) -> str:
        return f"{self.kind}_lr{self.lr:g}_wd{self.wd:g}"


def make_grid(
    kinds: Sequence[str],
    lrs: Sequence[float],
    wds: Sequence[float],
    linear_lrs: Sequence[float] | None = None,
    linear_wds: Sequence[float] | None = None,
) -> list[HeadSpec]:
    """The lr × wd grid for every head kind (linear heads may use their own lr / wd lists)."""
    specs = []
    for kind in kinds:
        kl = linear_lrs if kind == "linear" and linear_lrs else lrs
        kw = linear_wds if kind == "linear" and linear_wds else wds
        specs += [HeadSpec(kind, float(lr), float(wd)) for lr in kl for wd in kw]
    if not specs:
        raise UsageError("empty probe grid: give at least one head kind, lr and weight decay")
    return specs


def autocast(device: torch.device):
    """bf16 autocast on CUDA; CPU runs fp32 (bf16 matmuls on CPU are slow and change numbers)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def per_head_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per head: logits [g, b, C], y [b] -> [g] (float32)."""
    g, b, _ = logits.shape
    loss = F.cross_entropy(
        logits.float().permute(1, 2, 0), y[:, None].expand(b, g), reduction="none"
    )
    return loss.mean(0)  # [g]


class ProbeGrid(nn.Module):
    """Every head of a sweep with its optimizer (see the module docstring).

    Args:
        specs: the grid cells (see `make_grid`).
        embed_dim: frozen token width.
        num_classes: classifier outputs.
        depth: attentive probe blocks (4 = V-JEPA 2, 1 = V-JEPA 1).
        num_heads: attention heads of the attentive probes.
        mlp_ratio: MLP ratio of the attentive probes.
        seed: initialisation seed.
        device: where the heads live (built there).
        checkpoint: activation checkpointing inside the attentive heads.
        head_chunk: attentive heads per forward/backward chunk (None = all at once).
        micro_batch: samples per forward/backward (None = the whole batch); gradients of the
            micro-batches accumulate into one optimizer step.
        all_reduce: in-place sum of a tensor over ranks (None = one process).
        world_size: number of ranks `all_reduce` sums over.
    """

    def __init__(
        self,
        specs: Sequence[HeadSpec],
        embed_dim: int,
        num_classes: int,
        *,
        depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        seed: int = 0,
        device: torch.device | str = "cpu",
        checkpoint: bool = False,
        head_chunk: int | None = None,
        micro_batch: int | None = None,
        all_reduce: Callable[[list[torch.Tensor]], None] | None = None,
        world_size: int = 1,
    ):
        super().__init__()
        self.specs = {s.name: s for s in specs}
        if len(self.specs) != len(specs):
            raise UsageError("duplicate cells in the probe grid")
        if head_chunk is not None and head_chunk < 1:
            raise UsageError(f"head_chunk must be >= 1, got {head_chunk}")
        self.device = torch.device(device)
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.head_chunk, self.all_reduce, self.world_size = head_chunk, all_reduce, world_size
        self.micro_batch = micro_batch
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.device(self.device):
            torch.manual_seed(seed)
            probes = [
                build_head(s.kind, embed_dim, num_classes, depth=depth, num_heads=num_heads,
                           mlp_ratio=mlp_ratio)
                for s in specs
            ]  # fmt: skip
        self.parts = nn.ModuleDict()
        self.part_names: dict[str, list[str]] = {}
        self.opts: dict[str, StackedAdamW] = {}
        for kind, cls in (("attentive", StackedAttentive), ("linear", StackedLinear)):
            idx = [i for i, s in enumerate(specs) if s.kind == kind]
            if not idx:
                continue
            self.parts[kind] = cls.from_probes([probes[i] for i in idx], checkpoint=checkpoint)
            self.part_names[kind] = [specs[i].name for i in idx]
            self.opts[kind] = self._optimizer(kind)
        del probes

    # ------------------------------------------------------------------ bookkeeping
    @property
    def names(self) -> list[str]:
        """Head names in output order (attentive heads, then linear heads)."""
        return [n for kind in self.parts for n in self.part_names[kind]]

    def __len__(self) -> int:
        return len(self.names)

    def _optimizer(self, kind: str) -> StackedAdamW:
        part, specs = self.parts[kind], [self.specs[n] for n in self.part_names[kind]]
        return StackedAdamW(
            dict(part.p.items()), part.decays(), [s.lr for s in specs], [s.wd for s in specs]
        )

    def prune(self, keep: Sequence[str]) -> None:
        """Keep only the heads named in `keep` (parameters and optimizer state)."""
        missing = sorted(set(keep) - set(self.names))
        if missing:
            raise ValueError(f"unknown heads {missing}")
        for kind in list(self.parts):
            idx = [i for i, n in enumerate(self.part_names[kind]) if n in set(keep)]
            if not idx:
                del self.parts[kind], self.part_names[kind], self.opts[kind]
                continue
            if len(idx) == len(self.part_names[kind]):
                continue
            sel = torch.tensor(idx, dtype=torch.long)
            self.parts[kind] = self.parts[kind].select(sel)
            self.part_names[kind] = [self.part_names[kind][i] for i in idx]
            self.opts[kind] = self.opts[kind].select(sel, dict(self.parts[kind].p.items()))
        self.specs = {n: self.specs[n] for n in self.names}

    def export(self, name: str) -> nn.Module:
        """Head `name` as a standalone module (`AttentiveProbe` or `LinearProbe`)."""
        kind = self.specs[name].kind
        return self.parts[kind].to_probe(self.part_names[kind].index(name))

    def grid_state(self) -> dict:
        """Heads, optimizer states and names (for resuming; tensors stay on their device)."""
        return {
            "names": self.names,
            "parts": {k: m.state_dict() for k, m in self.parts.items()},
            "opts": {k: o.state_dict() for k, o in self.opts.items()},
        }

    def load_grid_state(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            self.prune(state["names"])
        if list(state["names"]) != self.names:
            raise ValueError("saved grid holds other heads than this one")
        for kind, sd in state["parts"].items():
            self.parts[kind].load_state_dict(sd)
            self.opts[kind].load_state_dict(state["opts"][kind])

    # ------------------------------------------------------------------ compute
    def _chunks(self, kind: str) -> list[slice]:
        g = self.parts[kind].num_probes
        c = g if kind == "linear" or not self.head_chunk else min(self.head_chunk, g)
        return [slice(i, min(i + c, g)) for i in range(0, g, c)]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, factor: float) -> torch.Tensor:
        """One optimizer step of every head on one batch.

        Args:
            x: [b, N, D] frozen tokens (no grad), on the grid's device.
            y: [b] int64 labels, on the grid's device.
            factor: schedule multiplier of every head's base lr.

        Returns:
            [G] per-head training loss of this batch (detached, on the device), in `names` order.
        """
        self.train()
        b = len(y)
        m = min(self.micro_batch or b, b)
        losses = []
        for kind, part in self.parts.items():
            part_loss = torch.zeros(part.num_probes, device=self.device)
            for i in range(0, b, m):  # micro-batches: gradients accumulate, weighted by size
                xs, ys = x[i : i + m], y[i : i + m]
                inp = xs if kind == "attentive" else xs.float().mean(dim=1)  # linear: [m, D]
                for sl in self._chunks(kind):
                    with autocast(self.device):
                        logits = part(inp, sl)  # [g, m, C]
                    loss = per_head_ce(logits, ys) * (len(ys) / b)  # [g]
                    loss.sum().backward()
                    part_loss[sl] += loss.detach()
            losses.append(part_loss)
        if self.all_reduce is not None and self.world_size > 1:
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            self.all_reduce(grads)
            for g in grads:
                g.div_(self.world_size)
        for opt in self.opts.values():
            opt.step(factor)
            opt.zero_grad()
        return torch.cat(losses)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[b, N, D] tokens -> [G, b, C] float32 logits of every head (`names` order)."""
        self.eval()
        m = min(self.micro_batch or len(x), len(x))
        out = []
        for kind, part in self.parts.items():
            rows = []
            for i in range(0, len(x), m):
                xs = x[i : i + m]
                inp = xs if kind == "attentive" else xs.float().mean(dim=1)
                with autocast(self.device):
                    rows.append(torch.cat([part(inp, sl).float() for sl in self._chunks(kind)]))
            out.append(torch.cat(rows, dim=1))  # [g, b, C]
        return torch.cat(out)

    @torch.no_grad()
    def view_probs(self, x: torch.Tensor) -> torch.Tensor:
        """[b, V, N, D] tokens of V views -> [G, b, C] softmax averaged over the views."""
        b, v = x.shape[:2]
        probs = self.logits(x.flatten(0, 1)).softmax(-1)  # [G, b·V, C]
        return probs.unflatten(1, (b, v)).mean(2)


def num_steps(steps_per_epoch: int, epochs: int, warmup_epochs: float) -> tuple[int, int]:
    """(total optimizer steps, warmup steps) of a probe run."""
    return steps_per_epoch * epochs, int(math.floor(warmup_epochs * steps_per_epoch))
