"""CPU smoke run of benchmarks/data_throughput.py: the decoder table prints and every row measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data_throughput.py"


def _decord2_importable() -> bool:
    try:
        import decord
    except ImportError:
        return False
    return not decord.__version__.startswith("0.")


@pytest.mark.slow
def test_decoder_comparison_smoke(tmp_path) -> None:
    out = tmp_path / "r.json"
    tiny = "--videos 2 --seconds 1 --clips 2 --batches 1 --warmup-batches 1 --batch 2 --workers 1"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *tiny.split(), "--decoders", "pyav,decord2",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "clips per CPU-second" in proc.stdout
    results = json.loads(out.read_text())["decoders"]
    assert list(results) == ["pyav", "decord2"]
    pyav = results["pyav"]
    for row in ("decode", "decode_augment", "end_to_end"):
        assert pyav[row]["clips_per_cpu_s"] > 0
    # the first decoder also measures float32 in the worker: 4 bytes per value instead of 1
    assert pyav["end_to_end_float"]["batch_bytes"] == 4 * pyav["end_to_end"]["batch_bytes"]
    if not _decord2_importable():  # a decoder that is not there is a row saying so, not a crash
        assert "error" in results["decord2"] and "not run" in proc.stdout
