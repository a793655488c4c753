"""The probe benchmarks run (CPU smoke modes): benchmarks/probe_throughput.py, probe_halving.py
and peers/vjepa2_probe.py (when a V-JEPA 2 checkout and its imports are here). Timings are not
asserted; the rows must be complete and the projections consistent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
VJEPA2 = Path("/work/peers/vjepa2")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


def test_halving_schedule_and_projection():
    pt = _load(BENCH / "probe_throughput.py")
    assert pt.halving_heads(20, 20) == [20, 20, 10, 10, 5, 5, 3, 3, 3, 3] + [2] * 10
    rates = {"train_1": 40.0, "train_g": 10.0, "heldout_g": 5.0, "heldout_1": 20.0, "val_1": 20.0}
    p8, p64 = pt.project(rates, 20, 8), pt.project(rates, 20, 64)
    assert p8["halving_h"] < p8["full_h"] and p8["full_h"] == pytest.approx(8 * p64["full_h"])
    assert p8["select_avg_clips_s_halving"] > p8["select_avg_clips_s_full"]


@pytest.mark.slow
def test_probe_throughput_smoke(tmp_path):
    pt = _load(BENCH / "probe_throughput.py")
    rows = pt.main(["--smoke", "--json", str(tmp_path / "rows.json")])
    (r,) = rows
    assert r["model"] == "vit_test" and r["train_g"] > 0 and r["val_1"] > 0
    assert r["proj8"]["full_h"] > 0 and (tmp_path / "rows.json").is_file()


@pytest.mark.slow
def test_probe_halving_smoke():
    rows = _load(BENCH / "probe_halving.py").main(["--smoke"])
    (r,) = rows
    assert 0 < r["head_epochs_share"] < 1 and r["full"]["pick"] and r["halving"]["pick"]


@pytest.mark.slow
@pytest.mark.skipif(not (VJEPA2 / "src").is_dir(), reason="no V-JEPA 2 checkout here")
def test_vjepa2_peer_smoke():
    pytest.importorskip("einops")  # V-JEPA 2's own import
    rows = _load(BENCH / "peers" / "vjepa2_probe.py").main(["--vjepa2", str(VJEPA2), "--smoke"])
    assert rows[0]["train"] > 0 and rows[0]["val"] > 0
