"""Several ranks (real torchrun, gloo on CPU): evaluation covers every sample exactly once and the
gathered result equals one process's; `salt-probe` runs end to end on 2 ranks.

1. A seeded, untrained grid scores the held-out part of train and predicts validation (2 segments
   × 3 views) in 1 and in 2 processes: the held-out scores (summed over ranks) and the gathered
   validation keys, probabilities and labels must match, and skip counts are summed over ranks.
2. `torchrun --nproc-per-node 2 -m salt.probes.cli`: the global batch is split over the ranks,
   gradients are averaged, and the JSON reports every validation sample once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from probe_helpers import probe_args, tiny_splits, write_encoder

HERE = Path(__file__).resolve().parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={_port()}", *argv]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    s = tiny_splits(root / "data", num_train=24, num_val=11)
    val = Path(s["val_csv"])
    (root / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    rows = [r if r.startswith("path") else f"{val.parent}/{r}" for r in val.read_text().split()]
    (root / "val.csv").write_text("\n".join([*rows, f"{root / 'broken.mp4'},1"]) + "\n")
    return {"root": root, "splits": s, "val": str(root / "val.csv"),
            "ckpt": write_encoder(root / "enc.safetensors")}  # fmt: skip


@pytest.mark.slow
def test_gathered_evaluation_equals_one_process(data, tmp_path):
    worker = str(HERE / "ddp_probe_worker.py")
    train = data["splits"]["probe_train"]
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"eval{n}.json"
        _torchrun(n, worker, train, data["val"], str(out))
        outs[n] = json.loads(out.read_text())
    one, two = outs[1], outs[2]
    assert (one["world"], two["world"]) == (1, 2)
    assert len(one["keys"]) == len(set(one["keys"])) == 11  # every readable sample, once
    order = sorted(range(11), key=one["keys"].__getitem__)
    assert two["keys"] == [one["keys"][i] for i in order]  # gathered, in key order
    assert two["labels"] == [one["labels"][i] for i in order]
    for i, j in enumerate(order):
        assert two["probs"][i] == pytest.approx(one["probs"][j], abs=1e-6)
    for name, s in one["scores"].items():
        assert two["scores"][name] == pytest.approx(s, abs=1e-6)
    assert one["counts"] == two["counts"] == {"skipped_undecodable": 1}


@pytest.mark.slow
def test_salt_probe_on_two_ranks(data, tmp_path):
    out = tmp_path / "res.json"
    argv = probe_args(data["ckpt"], data["splits"]["probe_train"], data["val"], "--mode",
                      "online", "--no-mlflow", "--output-json", str(out), "--state-dir",
                      str(tmp_path / "state"), "--no-retrain")  # fmt: skip
    res = _torchrun(2, "-m", "salt.probes.cli", *argv)
    r = json.loads(out.read_text())
    assert r["world_size"] == 2 and r["num_val"] == 11
    assert r["skipped"]["val"] == {"skipped_undecodable": 1}  # summed over the two ranks
    assert r["num_fit"] + r["num_heldout"] == 24
    assert res.stdout.count("grid (held-out top-1") == 1  # only rank 0 reports
