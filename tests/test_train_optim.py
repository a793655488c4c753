"""Optimisation pieces without a Trainer: schedules end exactly at their final values, param groups
keep weight decay off biases / norms / mask tokens, the non-finite skip leaves every weight and
AdamW moment untouched, clipping clips, and the health signals measure what they claim."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from salt.health import NonFiniteGuard, NonFiniteLossError, feature_std, rankme
from salt.optim import build_adamw, param_groups, prepare_optimizer_step
from salt.schedules import WarmupCosineSchedule, cosine, ema_momentum, warmup_cosine


def test_schedule_functions_reach_final_values_exactly() -> None:
    assert warmup_cosine(0, 100, 10, 2e-4, 6.25e-4, 1e-6) == 2e-4
    assert warmup_cosine(10, 100, 10, 2e-4, 6.25e-4, 1e-6) == 6.25e-4
    assert warmup_cosine(100, 100, 10, 2e-4, 6.25e-4, 1e-6) == 1e-6
    assert warmup_cosine(99, 100, 10, 2e-4, 6.25e-4, 1e-6) > 1e-6
    assert cosine(0, 50, 0.04, 0.4) == 0.04 and cosine(50, 50, 0.04, 0.4) == 0.4
    assert math.isclose(cosine(25, 50, 0.04, 0.4), 0.22)
    assert ema_momentum(0, 10, 0.99925, None) == ema_momentum(10, 10, 0.99925, None) == 0.99925
    assert ema_momentum(0, 10, 0.998, 1.0) == 0.998 and ema_momentum(10, 10, 0.998, 1.0) == 1.0


def test_warmup_cosine_schedule_drives_lr_and_wd() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    opt = build_adamw(model.named_parameters(), lr=1.0, weight_decay=0.04)
    sched = WarmupCosineSchedule(
        opt,
        total_steps=20,
        warmup_steps=5,
        start_lr=0.1,
        lr=1.0,
        final_lr=0.01,
        weight_decay=0.04,
        final_weight_decay=0.4,
    )
    lrs, wds = [], []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        wds.append(opt.param_groups[0]["weight_decay"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.1 and lrs[5] == 1.0 and max(lrs) == 1.0
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6], strict=True))  # warmup rises
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:], strict=False))  # cosine falls
    assert wds[0] == 0.04 and all(a < b for a, b in zip(wds, wds[1:], strict=False))
    decay, no_decay = opt.param_groups
    assert decay["lr"] == no_decay["lr"] == 0.01
    assert decay["weight_decay"] == 0.4 and no_decay["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        WarmupCosineSchedule(opt, 10, 10, 0.1, 1.0, 0.0, 0.0, 0.0)


class WithMaskToken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.mask_tokens = nn.Parameter(torch.zeros(2, 4))
        self.frozen = nn.Linear(4, 4).requires_grad_(False)


def test_param_groups() -> None:
    groups = param_groups(WithMaskToken().named_parameters())
    assert groups[0]["names"] == ["proj.weight"] and groups[0]["apply_wd"]
    assert sorted(groups[1]["names"]) == ["mask_tokens", "norm.bias", "norm.weight", "proj.bias"]
    assert groups[1]["weight_decay"] == 0.0 and not groups[1]["apply_wd"]
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(nn.Linear(2, 2).requires_grad_(False).named_parameters())


def test_nonfinite_step_is_skipped_on_device() -> None:
    model = WithMaskToken()
    opt = build_adamw(model.named_parameters(), lr=0.1, weight_decay=0.1)
    x = torch.randn(8, 4)
    model.proj(x).square().mean().backward()
    norm, skipped = prepare_optimizer_step(opt, max_norm=None)
    opt.step()
    opt.zero_grad()
    assert not skipped and math.isfinite(norm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}

    loss = model.proj(x * float("nan")).square().mean()
    loss.backward()
    norm, skipped = prepare_optimizer_step(opt, max_norm=1.0, nonfinite=~torch.isfinite(loss))
    opt.step()
    assert skipped and not math.isfinite(norm)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for p, s in opt.state.items():
        assert all(torch.equal(moments[id(p)][k], v) for k, v in s.items())  # step count too


def test_clipping_and_forced_skip() -> None:
    model = nn.Linear(4, 4)
    opt = build_adamw(model.named_parameters(), lr=0.1, weight_decay=0.0)
    (model(torch.randn(8, 4)) * 100).square().mean().backward()
    norm, skipped = prepare_optimizer_step(opt, max_norm=1.0)
    clipped = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert norm > 1.0 and math.isclose(float(clipped), 1.0, rel_tol=1e-4) and not skipped
    before = model.weight.detach().clone()
    _, skipped = prepare_optimizer_step(opt, max_norm=None, nonfinite=torch.tensor(True))
    opt.step()
    assert skipped and torch.equal(model.weight, before)
    plain = torch.optim.AdamW(model.parameters(), fused=False)
    with pytest.raises(ValueError, match="fused AdamW"):
        prepare_optimizer_step(plain, None)


def test_nonfinite_guard_counts_consecutive_steps() -> None:
    guard = NonFiniteGuard(3)
    for bad in (1, 1, 0, 1, 1):  # longest run 2 < 3
        guard.update(torch.tensor(bool(bad)))
    guard.check(5)
    assert int(guard.total) == 4
    guard.update(torch.tensor(True))  # third in a row
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss"):
        guard.check(6)


def test_rankme_and_feature_std() -> None:
    g = torch.Generator().manual_seed(0)
    full = torch.randn(512, 32, generator=g)
    collapsed = torch.randn(512, 1, generator=g) * torch.randn(1, 32, generator=g)
    assert float(rankme(full)) > 25  # close to the width 32
    assert float(rankme(collapsed)) < 1.5
    assert math.isclose(float(feature_std(full)), 1.0, rel_tol=0.1)
    assert float(feature_std(torch.ones(10, 4))) == 0.0


def test_step_code_imports_without_mlflow() -> None:
    """The GPU benchmark machine has no mlflow: the step and both modules must not need it."""
    code = "import sys, salt.step, salt.student, salt.teacher; assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
