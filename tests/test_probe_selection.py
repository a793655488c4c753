"""Honest head selection: the held-out slice comes from train, validation labels never choose.

Checks that can fail for the right reason: (1) corrupting the validation labels changes nothing
but the reported score (same chosen head, same grid, same predictions); (2) the protocol runs
with validation labels that raise on any use, except inside the final scoring step; (3) in the
loop both modes share, no validation batch is requested before the head is chosen and the
held-out slice is read only before that.
"""

import inspect

import pytest
import torch

from salt.probes import protocol
from salt.probes.config import load_config
from salt.probes.features import FeatureSet
from salt.probes.grid import make_grid
from salt.probes.loop import Loop
from salt.probes.selection import select_head, stratified_split
from salt.probes.sources import CachedSource


def _features(M, seed, C=4, V=2, N=6, D=16, noise=3.0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(C, D, generator=torch.Generator().manual_seed(123))
    y = torch.arange(M) % C
    x = protos[y][:, None, None] + noise * torch.randn(M, V, N, D, generator=g)
    return FeatureSet(x.half(), y, [f"k{i}" for i in range(M)])


CFG = load_config(
    None,
    dict(head_kinds=["attentive", "linear"], lrs=[3e-3, 3e-4], wds=[0.01, 0.4], probe_depth=1,
         probe_heads=4, epochs=3, batch_size=16, heldout_fraction=0.25),
)  # fmt: skip


def test_stratified_split_is_seeded_disjoint_and_per_class():
    y = torch.tensor([0] * 10 + [1] * 20 + [2] * 1 + [3] * 2)
    fit, held = stratified_split(y, 0.2, seed=3)
    assert torch.equal(torch.sort(torch.cat([fit, held])).values, torch.arange(len(y)))
    assert [int((y[held] == c).sum()) for c in range(4)] == [2, 4, 0, 1]  # class 2 has 1 sample
    f2, h2 = stratified_split(y, 0.2, seed=3)
    assert torch.equal(held, h2) and torch.equal(fit, f2)
    assert not torch.equal(held, stratified_split(y, 0.2, seed=4)[1])
    with pytest.raises(ValueError, match="held-out slice is empty"):
        stratified_split(torch.tensor([0, 1, 2]), 0.2)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        stratified_split(y, 1.0)


def test_select_head_ranks_top1_then_loss_then_name():
    held = {
        "b": {"top1": 0.8, "loss": 0.5},
        "a": {"top1": 0.8, "loss": 0.5},
        "c": {"top1": 0.8, "loss": 0.4},
        "d": {"top1": 0.7, "loss": 0.1},
    }
    assert select_head(held) == "c"
    del held["c"]
    assert select_head(held) == "a"


def test_probe_features_has_no_validation_label_input():
    params = set(inspect.signature(protocol.probe_features).parameters)
    assert "val_feats" in params and not any("val" in p and "label" in p for p in params)


class _Recording(CachedSource):
    """A cached source that records which split the loop asks for, in order."""

    calls: list[str]

    def eval_batches(self, split):
        self.calls.append(split)
        return super().eval_batches(split)

    def train_batches(self, epoch, full):
        self.calls.append("train_all" if full else "train_fit")
        return super().train_batches(epoch, full)


@pytest.mark.parametrize("schedule", ["full", "halving"])
def test_loop_reads_validation_only_after_the_choice(schedule):
    train, val = _features(96, seed=0), _features(40, seed=1)
    cfg = load_config(None, {**CFG.to_dict(), "grid_schedule": schedule, "halving_epochs": [1, 2]})
    src = _Recording(
        train, val, batch_size=16, val_batch_size=8, heldout_fraction=0.25, seed=0, device="cpu"
    )
    src.calls = []
    specs = make_grid(cfg.head_kinds, cfg.lrs, cfg.wds)
    st = Loop(src, cfg, specs, 4, log=lambda m: None).run()
    calls = src.calls
    first_val = calls.index("val")
    assert "heldout" not in calls[first_val:] and "train_fit" not in calls[first_val:]
    assert calls[first_val - 1] == "heldout"  # the choice is made on held-out, then val once
    assert calls.count("val") == 2 and calls[-1] == "val"  # the chosen head, then its retrain
    assert calls.count("heldout") == (3 if schedule == "halving" else 1)
    assert st["selected"] == select_head(
        {n: s for n, s in st["grid_scores"].items() if s["epochs"] == cfg.epochs}
    )


def test_corrupted_validation_labels_change_only_the_score():
    train, val = _features(96, seed=0), _features(40, seed=1)
    r1 = protocol.probe_features(train, val.feats, CFG, num_classes=4)
    s1 = protocol.score(r1, train, val, 4)
    bad = FeatureSet(val.feats, (val.labels + 1 + torch.arange(40) % 3) % 4, val.keys)  # all wrong
    r2 = protocol.probe_features(train, bad.feats, CFG, num_classes=4)
    s2 = protocol.score(r2, train, bad, 4)
    assert r1.selected == r2.selected and r1.heldout == r2.heldout
    assert torch.equal(r1.val_probs, r2.val_probs)
    assert s1.top1 > 0.5 and s1.top1 != s2.top1  # the score moved, the choice did not


class _Poisoned(torch.Tensor):
    """Labels that raise on any torch operation unless scoring has started."""

    scoring = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if not cls.scoring:
            raise AssertionError(f"validation labels read before scoring ({func.__name__})")
        return super().__torch_function__(func, types, args, kwargs or {})


def test_protocol_reads_validation_labels_only_when_scoring(monkeypatch):
    train, val = _features(96, seed=0), _features(40, seed=1)
    poisoned = FeatureSet(val.feats, val.labels.as_subclass(_Poisoned), val.keys)
    splits = {"train features": train, "val features": poisoned}
    monkeypatch.setattr(protocol, "split_features", lambda *a, desc, **k: splits[desc])
    real_validate = Loop._validate

    def validate(self, grid, st):  # the loop's one read of the validation split
        assert "selected" in st  # the head is chosen before
        _Poisoned.scoring = True
        try:
            return real_validate(self, grid, st)
        finally:
            _Poisoned.scoring = False

    monkeypatch.setattr(Loop, "_validate", validate)
    res = protocol.evaluate_encoder(
        torch.nn.Identity(), CFG, "unused", "unused", 4, log=lambda m: None
    )
    assert res.selected_head in res.heldout and res.num_val == 40
    # and the poison works: touching the labels outside scoring fails
    with pytest.raises(AssertionError, match="read before scoring"):
        poisoned.labels.sum()
