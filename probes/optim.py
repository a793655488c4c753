"""AdamW over stacked head parameters with one learning rate and weight decay *per head*, and the
probe schedule (linear warmup, then cosine to 0, per step).

Why not `torch.optim.AdamW`: a parameter group carries one scalar lr and one scalar weight decay
(a tensor lr must hold a single element), and a stacked parameter `[G, ...]` is one tensor, so the
G heads sharing it cannot get G learning rates; views of it per head are not leaf tensors, so they
cannot be handed to an optimizer either. This is the same update as `torch.optim.AdamW`
(decoupled decay `p ← p·(1 − lr·wd)`, bias-corrected moments), with `lr` and `wd` broadcast as
`[G, 1, ...]` vectors, plus `select(idx)` to keep the state of surviving heads when a grid is
pruned (successive halving). Heads step together, so the step count is one integer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) of `total`: linear warmup over
    `warmup` steps, then half a cosine from 1 to 0 (V-JEPA 2's probe schedule with final lr 0)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


class StackedAdamW:
    """AdamW for parameters whose first axis indexes heads.

    Args:
        params: {name: parameter [G, ...]}.
        decay: {name: whether weight decay applies} (biases, norms and query tokens: False).
        lrs: base learning rate per head [G].
        wds: weight decay per head [G].
        betas, eps: Adam's.
    """

    def __init__(
        self,
        params: Mapping[str, torch.nn.Parameter],
        decay: Mapping[str, bool],
        lrs: Sequence[float],
        wds: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.params = dict(params)
        self.decay = {n: bool(decay[n]) for n in self.params}
        dev = next(iter(self.params.values())).device
        self.lrs = torch.as_tensor(list(lrs), dtype=torch.float32, device=dev)  # [G]
        self.wds = torch.as_tensor(list(wds), dtype=torch.float32, device=dev)  # [G]
        for n, p in self.params.items():
            if p.shape[0] != len(self.lrs):
                raise ValueError(f"{n}: {p.shape[0]} heads but {len(self.lrs)} learning rates")
        self.betas, self.eps = betas, eps
        self.step_count = 0
        self.exp_avg = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in self.params.items()}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self, factor: float = 1.0) -> None:
        """One AdamW step at lr = base lr · `factor` for every head; parameters without a
        gradient are left alone."""
        self.step_count += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.step_count, 1 - b2**self.step_count
        for n, p in self.params.items():
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr = (self.lrs * factor).view(shape)  # [G, 1, ...]
            g = p.grad.float()
            m, v = self.exp_avg[n], self.exp_avg_sq[n]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            if self.decay[n]:
                p.mul_(1 - lr * self.wds.view(shape))
            denom = (v / c2).sqrt_().add_(self.eps)
            p.sub_((lr / c1) * m / denom)

    def select(self, idx: torch.Tensor, params: Mapping[str, torch.nn.Parameter]) -> StackedAdamW:
        """The optimizer of heads `idx` over their new (selected) parameters `params`."""
        new = StackedAdamW(
            params, self.decay, self.lrs[idx].tolist(), self.wds[idx].tolist(), self.betas, self.eps
        )
        new.step_count = self.step_count
        for n in new.params:
            new.exp_avg[n] = self.exp_avg[n][idx.to(self.lrs.device)].clone()
            new.exp_avg_sq[n] = self.exp_avg_sq[n][idx.to(self.lrs.device)].clone()
        return new

    def state_dict(self) -> dict:
        return {"step": self.step_count, "lrs": self.lrs.tolist(), "wds": self.wds.tolist(),
                "exp_avg": dict(self.exp_avg), "exp_avg_sq": dict(self.exp_avg_sq)}  # fmt: skip

    def load_state_dict(self, state: Mapping) -> None:
        if list(state["lrs"]) != self.lrs.tolist() or list(state["wds"]) != self.wds.tolist():
            raise ValueError("optimizer state belongs to another grid (lr / wd differ)")
        self.step_count = int(state["step"])
        for n, p in self.params.items():
            self.exp_avg[n] = state["exp_avg"][n].to(p.device, p.dtype).clone()
            self.exp_avg_sq[n] = state["exp_avg_sq"][n].to(p.device, p.dtype).clone()
