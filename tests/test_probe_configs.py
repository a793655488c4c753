"""Every shipped probe protocol (configs/probe/*.yaml) parses and builds its head grid on the tiny
model's width; the SSv2 / K400 / Diving-48 files carry V-JEPA 2's clip protocols and grids."""

from pathlib import Path

import pytest
import torch

from salt.probes.config import ProbeConfig, load_config
from salt.probes.grid import ProbeGrid, make_grid

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs/probe").glob("*.yaml"))


def test_the_three_protocols_ship():
    assert {p.stem for p in CONFIGS} >= {"ssv2", "k400", "diving48", "tiny"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_probe_config_builds_its_grid(path):
    cfg = load_config(path)
    specs = make_grid(cfg.head_kinds, cfg.lrs, cfg.wds, cfg.linear_lrs, cfg.linear_wds)
    grid = ProbeGrid(
        specs, 64, 5, depth=cfg.probe_depth, num_heads=cfg.probe_heads, mlp_ratio=cfg.mlp_ratio
    )  # vit_test width
    assert grid.logits(torch.randn(2, 6, 64)).shape == (len(specs), 2, 5)
    assert 0 < cfg.heldout_fraction < 1 and cfg.epochs >= 1


def test_vjepa2_protocols():
    ssv2, k400, diving = (
        load_config(CONFIGS[0].parent / f"{n}.yaml") for n in ("ssv2", "k400", "diving48")
    )
    assert (ssv2.frames_per_clip, ssv2.frame_step, ssv2.num_segments, ssv2.num_views) == (
        16,
        4,
        2,
        3,
    )
    assert (k400.frames_per_clip, k400.frame_step, k400.num_segments, k400.num_views) == (
        16,
        4,
        8,
        3,
    )
    assert (diving.frames_per_clip, diving.frame_step, diving.num_segments) == (32, 2, 4)
    for c in (ssv2, k400, diving):
        assert (c.probe_depth, c.probe_heads, c.mlp_ratio, c.crop_size) == (4, 16, 4.0, 256)
        assert c.head_kinds == ["attentive"] and c.flip_prob == 0.0 and c.random_erasing == 0.25
        assert c.crop_scale == [0.08, 1.0] and c.rand_augment
    for c in (ssv2, k400):
        assert len(c.lrs) * len(c.wds) == 20 and c.epochs == 20 and c.batch_size == 256
    assert (len(diving.lrs), diving.wds, diving.epochs) == (3, [0.8], 100)


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
