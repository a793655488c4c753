"""Train a grid of probe heads together on shared frozen features, pick one honestly.

Every head (attentive and linear, each lr × weight decay) sees the same batches of the same
features in one pass per epoch: features are read once per step and every head's loss is summed
into a single backward. One AdamW holds one parameter group per head (and a no-decay group for its
biases, norms and query token), so each head has its own lr / wd and AdamW's per-parameter state
makes this equivalent to separate optimisers. Schedule: optional linear warmup, cosine to 0.

`run_sweep` takes the training features and labels and the validation *features only*: it splits
train into fit / held-out (selection.py), trains the grid on fit, ranks heads on held-out, and
returns the chosen head's view-averaged validation probabilities. The caller computes validation
metrics; validation labels never enter this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from salt.probes.heads import build_head
from salt.probes.selection import select_head, stratified_split


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
        raise ValueError("empty probe grid: give at least one head kind, lr and weight decay")
    return specs


class HeadGrid(nn.Module):
    """All heads of a sweep; `forward` returns every head's logits for one batch of tokens.

    Args:
        specs: the grid cells.
        embed_dim: frozen token width.
        num_classes: classifier outputs.
        depth: attentive probe blocks (4 = V-JEPA 2, 1 = V-JEPA 1).
        num_heads: attention heads of the attentive probes.
        mlp_ratio: MLP ratio of the attentive probes.
    """

    def __init__(
        self,
        specs: Sequence[HeadSpec],
        embed_dim: int,
        num_classes: int,
        depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.specs = {s.name: s for s in specs}
        if len(self.specs) != len(specs):
            raise ValueError("duplicate cells in the probe grid")
        # A list, not a ModuleDict: head names contain "." (lr 1e-3 -> "0.001").
        self.head_list = nn.ModuleList(
            build_head(
                s.kind,
                embed_dim,
                num_classes,
                depth=depth,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
            )
            for s in specs
        )
        # name -> head (the same module objects)
        self.heads = dict(zip(self.specs, self.head_list, strict=True))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # x [B, N, D] -> {name: logits [B, C]}; linear heads share one mean-pool
        pooled = x.mean(dim=1)  # [B, D]
        return {
            name: head(pooled if getattr(head, "pooled_input", False) else x)
            for name, head in self.heads.items()
        }

    def param_groups(self) -> list[dict]:
        """One decayed and one undecayed AdamW group per head, carrying that head's lr / wd."""
        groups = []
        for name, head in self.heads.items():
            spec = self.specs[name]
            named = list(head.named_parameters())
            decay = [p for n, p in named if p.ndim >= 2 and n != "query"]
            no_decay = [p for n, p in named if p.ndim < 2 or n == "query"]
            groups.append(
                {"params": decay, "lr": spec.lr, "base_lr": spec.lr, "weight_decay": spec.wd}
            )
            groups.append(
                {"params": no_decay, "lr": spec.lr, "base_lr": spec.lr, "weight_decay": 0.0}
            )
        return groups


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def _autocast(device: torch.device):
    # bf16 on CUDA only; CPU runs in fp32 (bf16 matmuls on CPU are slow and change numbers).
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _batch(feats: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    # feats [M, V, N, D] (any dtype/device) -> [b·V, N, D] float32 on device
    x = feats[idx.to(feats.device)].to(device, non_blocking=True).float()
    return x.flatten(0, 1)


def train_grid(
    grid: HeadGrid,
    feats: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    warmup_epochs: float = 0.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Train every head of `grid` on `feats[indices]`; each spatial view is its own sample.

    Args:
        grid: the heads (moved to `device` here).
        feats: [M, V, N, D] frozen tokens (fp16 or fp32, CPU or device).
        labels: int64 [M].
        indices: int64 rows of `feats` to train on (the fit slice).
        epochs: passes over `indices`.
        batch_size: samples per step (each brings V views).
        warmup_epochs: linear lr warmup length, then cosine to 0.
        seed: seed of the data order.
        device: where the heads train.

    Returns:
        per head name, its mean training loss over the last epoch.
    """
    device = torch.device(device)
    grid.to(device).train()
    opt = torch.optim.AdamW(grid.param_groups(), betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(len(indices) / batch_size)
    total, warmup = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    V = feats.shape[1]
    last = dict.fromkeys(grid.heads, 0.0)
    step = 0
    for epoch in range(epochs):
        order = indices[torch.randperm(len(indices), generator=gen)]
        sums = dict.fromkeys(grid.heads, 0.0)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = _batch(feats, idx, device)  # [b·V, N, D]
            y = labels[idx].to(device).repeat_interleave(V)  # [b·V], view-major per sample
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * _lr_factor(step, total, warmup)
            with _autocast(device):
                logits = grid(x)
            losses = {n: F.cross_entropy(lg.float(), y) for n, lg in logits.items()}
            opt.zero_grad(set_to_none=True)
            torch.stack(list(losses.values())).sum().backward()
            opt.step()
            step += 1
            for n, loss in losses.items():
                sums[n] += loss.detach() * len(idx)  # stays on device: no sync per head and step
        if epoch == epochs - 1:
            last = {n: float(s) / len(indices) for n, s in sums.items()}
    return last


@torch.no_grad()
def predict(
    heads: nn.Module,
    feats: torch.Tensor,
    indices: torch.Tensor | None = None,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor] | torch.Tensor:
    """Softmax probabilities averaged over spatial views.

    Args:
        heads: a `HeadGrid` (returns a dict of probs per head) or a single head (returns probs).
        feats: [M, V, N, D] frozen tokens.
        indices: rows to predict (default all).
        batch_size: samples per forward.
        device: where the heads run.

    Returns:
        probs [m, C] float32 on CPU, or {name: probs} for a grid.
    """
    device = torch.device(device)
    heads.to(device).eval()
    indices = torch.arange(len(feats)) if indices is None else indices
    V = feats.shape[1]
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(indices), batch_size):
        idx = indices[i : i + batch_size]
        with _autocast(device):
            logits = heads(_batch(feats, idx, device))
        logits = logits if isinstance(logits, dict) else {"": logits}
        for n, lg in logits.items():
            probs = lg.float().softmax(-1).unflatten(0, (len(idx), V)).mean(1)  # [b, C]
            out.setdefault(n, []).append(probs.cpu())
    probs = {n: torch.cat(p) for n, p in out.items()}
    return probs if isinstance(heads, HeadGrid) else probs[""]


@dataclass
class SweepResult:
    """What a sweep hands back: no validation labels were used to produce any of it."""

    selected: str
    heldout: dict[str, dict[str, float]]  # name -> {"top1", "loss", "train_loss"}
    val_probs: torch.Tensor  # [M_val, C] chosen head, softmax averaged over views
    specs: dict[str, HeadSpec] = field(default_factory=dict)
    num_fit: int = 0
    num_heldout: int = 0


def run_sweep(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor,
    *,
    specs: Sequence[HeadSpec],
    num_classes: int,
    depth: int = 4,
    num_heads: int = 16,
    mlp_ratio: float = 4.0,
    epochs: int = 20,
    batch_size: int = 32,
    warmup_epochs: float = 0.0,
    heldout_fraction: float = 0.15,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> SweepResult:
    """Fit the grid on train's fit slice, choose on its held-out slice, predict validation once.

    Args:
        train_feats: [M, V, N, D] training features. train_labels: int64 [M].
        val_feats: [M_val, V, N, D] validation features (no labels: this function never sees them).
        specs: the grid (see `make_grid`). Remaining args: see `HeadGrid` and `train_grid`.

    Returns:
        a `SweepResult` with the chosen head, every head's held-out scores and the chosen head's
        validation probabilities.
    """
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise ValueError(
            f"training labels span [{int(train_labels.min())}, {int(train_labels.max())}] "
            f"but num_classes={num_classes}"
        )
    fit_idx, held_idx = stratified_split(train_labels, heldout_fraction, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grid = HeadGrid(specs, train_feats.shape[-1], num_classes, depth, num_heads, mlp_ratio)
    train_loss = train_grid(
        grid, train_feats, train_labels, fit_idx, epochs=epochs, batch_size=batch_size,
        warmup_epochs=warmup_epochs, seed=seed, device=device,
    )  # fmt: skip
    held_probs = predict(grid, train_feats, held_idx, batch_size=batch_size, device=device)
    y = train_labels[held_idx]
    heldout = {
        n: {
            "top1": (p.argmax(-1) == y).float().mean().item(),
            "loss": F.nll_loss(p.clamp_min(1e-12).log(), y).item(),
            "train_loss": train_loss[n],
        }
        for n, p in held_probs.items()
    }
    selected = select_head(heldout)
    val_probs = predict(grid.heads[selected], val_feats, batch_size=batch_size, device=device)
    return SweepResult(selected, heldout, val_probs, dict(grid.specs), len(fit_idx), len(held_idx))
