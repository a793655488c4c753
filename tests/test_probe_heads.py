"""Probe heads, the grid trainer and the metrics, on small tensors (CPU, seconds)."""

import pytest
import torch
from timm.models.vision_transformer import Block

from salt.probes.grid import ProbeGrid, make_grid
from salt.probes.heads import AttentiveProbe, CrossAttentionBlock, LinearProbe, build_head
from salt.probes.metrics import classification_metrics, save_confusion_png


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


def test_grid_gives_every_head_its_lr_wd_and_no_decay_on_1d_and_query():
    specs = make_grid(["attentive", "linear"], [1e-3, 3e-3], [0.0, 0.4], linear_lrs=[0.1])
    assert [s.name for s in specs][-2:] == ["linear_lr0.1_wd0", "linear_lr0.1_wd0.4"]
    grid = ProbeGrid(specs, 32, 5, depth=2, num_heads=4)
    assert grid.names == [s.name for s in specs]
    att = grid.opts["attentive"]
    assert att.lrs.tolist() == pytest.approx([1e-3, 1e-3, 3e-3, 3e-3])
    assert att.wds.tolist() == pytest.approx([0.0, 0.4, 0.0, 0.4])
    assert grid.opts["linear"].lrs.tolist() == pytest.approx([0.1, 0.1])
    for name, p in grid.parts["attentive"].p.items():
        assert att.decay[name] == (p.dim() >= 3 and name != "query"), name
    n_params = sum(p.numel() for p in grid.parameters())
    assert n_params == sum(p.numel() for o in grid.opts.values() for p in o.params.values())


def test_grid_learns_separable_features_and_leaves_features_untouched():
    torch.manual_seed(0)
    M, V, N, D, C = 96, 2, 8, 16, 3
    y = torch.arange(M) % C
    protos = torch.randn(C, D) * 2
    feats = (torch.randn(M, V, N, D) + protos[y][:, None, None]).half()
    before = feats.clone()
    grid = ProbeGrid(make_grid(["attentive", "linear"], [3e-3], [0.01]), D, C, depth=1, num_heads=4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        order = torch.randperm(M, generator=gen)
        for i in range(0, M, 16):
            rows = order[i : i + 16]
            losses = grid.train_step(feats[rows, 0].float(), y[rows], 1.0)
    assert losses.shape == (2,) and (losses < 0.5).all()
    probs = grid.view_probs(feats.float())  # [G, M, C]
    assert probs.shape == (2, M, C)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, M))
    assert ((probs.argmax(-1) == y).float().mean(1) > 0.9).all()
    assert torch.equal(feats, before)


def test_view_probs_average_softmax_over_views():
    grid = ProbeGrid(make_grid(["linear"], [1e-3], [0.0]), 4, 3)
    head = grid.export(grid.names[0])
    feats = torch.randn(5, 3, 2, 4)  # [M, V, N, D]
    per_view = torch.stack([head(feats[:, v]).softmax(-1) for v in range(3)], 1)
    torch.testing.assert_close(grid.view_probs(feats)[0], per_view.mean(1))


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
