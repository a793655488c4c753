"""Per-optimizer-step schedules: learning rate, weight decay and EMA momentum (docs/method.md,
"Optimisation").

- lr: linear warmup ``start_lr → lr`` over ``warmup_steps``, then cosine ``lr → final_lr``.
- weight decay: cosine ``weight_decay → final_weight_decay`` over the whole run.
- EMA momentum (V-JEPA baseline only): constant, or linear ``start → final``.

Every schedule is a pure function of the number of optimizer steps already taken and reaches its
final value *exactly* at ``total_steps`` (V-JEPA stretches its schedules by 1.25 so they never do;
ours do, docs/method.md). ``WarmupCosineSchedule`` applies lr and weight decay to an optimizer; it
is keyed on optimizer steps (Lightning steps it once per optimizer step, so gradient accumulation
does not stretch it).

Resuming: the scheduler's saved state is its step counter only. Its shape (``total_steps`` =
``trainer.max_steps``, ``warmup_steps``, the lr and weight-decay values) always comes from the
*current* configuration, and the optimizer's lr / weight decay are set from it for the restored
step. So a resume with unchanged settings continues exactly, and a resume that changes one (e.g.
``--trainer.max_steps 80`` for a run that was planned for 40) re-derives every schedule from the
new values, as if the run had been planned that way: the next step uses the value the new
schedule has at the restored step (a longer horizon raises the lr again from ``final_lr``; the
log names every changed setting and the lr before → after). The EMA momentum
(``StudentModule``) reads the same ``total_steps``, so lr, weight decay and EMA always agree.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

log = logging.getLogger(__name__)
# what defines the schedule's shape: always the current configuration's, never the checkpoint's
SHAPE_KEYS = (
    "total_steps",
    "warmup_steps",
    "start_lr",
    "peak_lr",
    "final_lr",
    "start_wd",
    "final_wd",
    "decay_steps",  # salt.ema.WarmupStableDecaySchedule
)


def cosine(step: int, total_steps: int, start: float, final: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``final`` (step ``total_steps`` and after)."""
    if total_steps <= 0 or step >= total_steps:
        return final
    if step <= 0:
        return start
    progress = step / total_steps
    return final + (start - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear(step: int, total_steps: int, start: float, final: float) -> float:
    """Straight line from ``start`` (step 0) to ``final`` (step ``total_steps`` and after)."""
    if total_steps <= 0 or step >= total_steps:
        return final
    return start + (final - start) * max(step, 0) / total_steps


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, start: float, peak: float, final: float
) -> float:
    """Linear ``start → peak`` over ``warmup_steps``, then cosine ``peak → final`` at ``total_steps``."""
    if step < warmup_steps:
        return linear(step, warmup_steps, start, peak)
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, final)


class WarmupCosineSchedule(LRScheduler):
    """Sets ``lr`` and ``weight_decay`` of every param group after each optimizer step.

    Param groups whose ``"apply_wd"`` key is False (biases, norms, mask tokens; see
    ``salt.optim.param_groups``) keep weight decay 0.

    Args:
        optimizer: the optimizer whose groups are driven.
        total_steps: optimizer steps in the run (``trainer.max_steps``); every value is final there.
        warmup_steps: optimizer steps of linear lr warmup (< ``total_steps``).
        start_lr: lr at step 0.
        lr: peak lr, reached at ``warmup_steps``.
        final_lr: lr at ``total_steps``.
        weight_decay: weight decay at step 0.
        final_weight_decay: weight decay at ``total_steps``.
        last_epoch: optimizer steps already taken (-1: a fresh run; Lightning restores it on resume).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int,
        start_lr: float,
        lr: float,
        final_lr: float,
        weight_decay: float,
        final_weight_decay: float,
        last_epoch: int = -1,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be ≥ 1, got {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}: "
                "the cosine phase needs at least one step to reach final_lr"
            )
        # Set before super().__init__, which takes the initial step through self.step().
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.start_lr, self.peak_lr, self.final_lr = float(start_lr), float(lr), float(final_lr)
        self.start_wd, self.final_wd = float(weight_decay), float(final_weight_decay)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int) -> float:
        """Learning rate used for the optimizer step after ``step`` completed steps."""
        return warmup_cosine(
            step, self.total_steps, self.warmup_steps, self.start_lr, self.peak_lr, self.final_lr
        )

    def wd_at(self, step: int) -> float:
        """Weight decay (of decayed groups) after ``step`` completed optimizer steps."""
        return cosine(step, self.total_steps, self.start_wd, self.final_wd)

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch) for _ in self.optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:  # noqa: D102 - LRScheduler API
        super().step(epoch)
        self._apply_wd()

    def _apply_wd(self) -> None:
        wd = self.wd_at(self.last_epoch)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = wd if group.get("apply_wd", True) else 0.0

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step counter; keep this configuration's schedule shape (module docstring)
        and set the optimizer's lr / weight decay for the restored step from it."""
        changed = {
            k: (state_dict[k], getattr(self, k))
            for k in SHAPE_KEYS
            if k in state_dict and state_dict[k] != getattr(self, k)
        }
        before = [g["lr"] for g in self.optimizer.param_groups]
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in SHAPE_KEYS})
        lr = self.lr_at(self.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)
        self._apply_wd()
        if changed:
            what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            msg = (
                f"[salt.schedules] resumed at step {self.last_epoch} with a changed schedule "
                f"({what}): lr and weight decay are re-derived from the new settings; lr "
                f"{before[0]:.3g} -> {lr:.3g}"
            )
            log.warning(msg)
            print(msg, flush=True)


def ema_momentum(step: int, total_steps: int, start: float, final: float | None) -> float:
    """EMA teacher momentum: constant ``start`` (V-JEPA 2, 0.99925) when ``final`` is None, else
    linear ``start → final`` over the run (V-JEPA 1: 0.998 → 1.0)."""
    if final is None:
        return start
    return linear(step, total_steps, start, final)
