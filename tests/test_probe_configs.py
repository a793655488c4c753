"""Every shipped probe protocol (configs/probe/*.yaml) parses and builds its head grid on the tiny
model's width; the SSv2 / K400 files carry SPEC.md's clip protocols."""

from pathlib import Path

import pytest
import torch

from salt.probes.config import ProbeConfig, load_config
from salt.probes.sweep import HeadGrid, make_grid

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs/probe").glob("*.yaml"))


def test_the_three_protocols_ship():
    assert {p.stem for p in CONFIGS} >= {"ssv2", "k400", "tiny"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_probe_config_builds_its_grid(path):
    cfg = load_config(path)
    specs = make_grid(cfg.head_kinds, cfg.lrs, cfg.wds, cfg.linear_lrs, cfg.linear_wds)
    grid = HeadGrid(specs, 64, 5, cfg.probe_depth, cfg.probe_heads, cfg.mlp_ratio)  # vit_test width
    logits = grid(torch.randn(2, 6, 64))
    assert len(logits) == len(specs) and all(v.shape == (2, 5) for v in logits.values())
    assert 0 < cfg.heldout_fraction < 1 and cfg.epochs >= 1


def test_spec_protocols():
    ssv2, k400 = (
        load_config(CONFIGS[0].parent / "ssv2.yaml"),
        load_config(CONFIGS[0].parent / "k400.yaml"),
    )
    assert (ssv2.frames_per_clip, ssv2.num_segments, ssv2.num_views) == (16, 2, 3)
    assert (k400.frames_per_clip, k400.num_segments, k400.num_views) == (16, 8, 3)
    for c in (ssv2, k400):
        assert (c.probe_depth, c.probe_heads, c.mlp_ratio) == (4, 16, 4.0)
        assert len(c.lrs) * len(c.wds) == 20 and c.epochs == 20


def test_overrides_win_and_unknown_keys_fail(tmp_path):
    cfg = load_config(CONFIGS[0].parent / "tiny.yaml", {"epochs": 3, "lrs": None})
    assert cfg.epochs == 3 and cfg.lrs == load_config(CONFIGS[0].parent / "tiny.yaml").lrs
    assert load_config(None) == ProbeConfig()
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="unknown probe setting"):
        load_config(bad)
    with pytest.raises(ValueError, match="unknown head kind"):
        load_config(None, {"head_kinds": ["mlp"]})
