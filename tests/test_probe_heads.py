"""Probe heads, the grid trainer and the metrics, on small tensors (CPU, seconds)."""

import pytest
import torch
from timm.models.vision_transformer import Block

from salt.probes.heads import AttentiveProbe, CrossAttentionBlock, LinearProbe, build_head
from salt.probes.metrics import classification_metrics, save_confusion_png
from salt.probes.sweep import HeadGrid, make_grid, predict, train_grid


def test_attentive_probe_structure_and_shapes():
    p4 = AttentiveProbe(64, 7, depth=4, num_heads=4)
    assert len(p4.blocks) == 3 and all(isinstance(b, Block) for b in p4.blocks)
    assert isinstance(p4.cross, CrossAttentionBlock) and p4.query.shape == (1, 1, 64)
    assert p4(torch.randn(3, 20, 64)).shape == (3, 7)
    p1 = AttentiveProbe(64, 7, depth=1, num_heads=4)  # V-JEPA 1's probe
    assert len(p1.blocks) == 0 and p1(torch.randn(2, 5, 64)).shape == (2, 7)
    with pytest.raises(ValueError, match="must divide"):
        AttentiveProbe(64, 7, num_heads=16 + 1)
    with pytest.raises(ValueError, match="unknown probe head kind"):
        build_head("mlp", 64, 7)


def test_attentive_probe_is_permutation_invariant_over_tokens():
    # No positions inside the probe: the pooled class scores must not depend on token order.
    torch.manual_seed(0)
    p = AttentiveProbe(32, 5, depth=2, num_heads=4).eval()
    x = torch.randn(2, 12, 32)
    perm = torch.randperm(12)
    torch.testing.assert_close(p(x), p(x[:, perm]), atol=1e-5, rtol=1e-5)


def test_linear_probe_pools_mean():
    p = LinearProbe(16, 3)
    x = torch.randn(4, 9, 16)
    torch.testing.assert_close(p(x), p.linear(x.mean(1)))
    torch.testing.assert_close(p(x), p(x.mean(1)))


def test_grid_param_groups_carry_lr_wd_and_skip_decay_on_1d_and_query():
    specs = make_grid(["attentive", "linear"], [1e-3, 3e-3], [0.0, 0.4], linear_lrs=[0.1])
    assert [s.name for s in specs][-2:] == ["linear_lr0.1_wd0", "linear_lr0.1_wd0.4"]
    grid = HeadGrid(specs, 32, 5, depth=2, num_heads=4)
    groups = grid.param_groups()
    assert len(groups) == 2 * len(specs)
    n_params = sum(p.numel() for p in grid.parameters())
    assert sum(p.numel() for g in groups for p in g["params"]) == n_params  # each param once
    query_ids = {id(h.query) for h in grid.head_list if isinstance(h, AttentiveProbe)}
    for g in groups:
        if g["weight_decay"] > 0:
            assert all(p.ndim >= 2 and id(p) not in query_ids for p in g["params"])
    assert {g["lr"] for g in groups} == {1e-3, 3e-3, 0.1}


def test_train_grid_learns_separable_features_and_leaves_features_untouched():
    torch.manual_seed(0)
    M, V, N, D, C = 96, 2, 8, 16, 3
    y = torch.arange(M) % C
    protos = torch.randn(C, D) * 2
    feats = (torch.randn(M, V, N, D) + protos[y][:, None, None]).half()
    before = feats.clone()
    grid = HeadGrid(make_grid(["attentive", "linear"], [3e-3], [0.01]), D, C, depth=1, num_heads=4)
    losses = train_grid(grid, feats, y, torch.arange(M), epochs=8, batch_size=16)
    assert set(losses) == set(grid.heads) and all(v < 0.5 for v in losses.values())
    probs = predict(grid, feats)
    for p in probs.values():
        assert p.shape == (M, C)
        torch.testing.assert_close(p.sum(-1), torch.ones(M))
        assert (p.argmax(-1) == y).float().mean() > 0.9
    assert torch.equal(feats, before)


def test_predict_averages_softmax_over_views():
    head = LinearProbe(4, 3)
    feats = torch.randn(5, 3, 2, 4)  # [M, V, N, D]
    probs = predict(head, feats)
    per_view = torch.stack([head(feats[:, v]).softmax(-1) for v in range(3)], 1)
    torch.testing.assert_close(probs, per_view.mean(1))


def test_metrics_topk_clamps_and_per_class(tmp_path):
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.2, 0.7, 0.1]])
    labels = torch.tensor([0, 2, 2, 1])
    m = classification_metrics(probs, labels, num_classes=4 - 1)
    assert m["top1"] == pytest.approx(0.75) and m["top5_k"] == 3 and m["top5"] == 1.0
    assert m["per_class"] == pytest.approx([1.0, 1.0, 0.5])
    assert m["confusion"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    m5 = classification_metrics(torch.nn.functional.one_hot(labels, 6).float(), labels, 6)
    assert m5["top5_k"] == 5 and torch.isnan(torch.tensor(m5["per_class"][3]))  # class 3 absent
    png = save_confusion_png(m["confusion"], tmp_path / "cm.png", title="t")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="do not match"):
        classification_metrics(probs, labels[:3], 3)
