"""Compile by default: the shipped ViT configs say ``compile: true``; where compiling cannot work
(a CPU run, no Triton, no C compiler) the module logs one warning and trains eager.

- Every shipped ViT config (configs/student, configs/teacher) compiles.
- A real CPU ``Trainer.fit`` with ``compile=True``: one warning (twice fitted, still one), the
  blocks stay uncompiled, the steps run and change the weights.
- ``compile_unavailable_reason`` names the missing piece for a CUDA device without Triton or
  without a C compiler; ``compile_modules`` compiles blocks or whole modules as the scope says
  (``torch.compile`` is lazy: nothing is compiled until a forward, so this runs on a CPU).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import datamodule, module_kwargs, params_snapshot, trainer

import salt.module_base as module_base
from salt.models import create_encoder, create_predictor
from salt.teacher import TeacherModule

ROOT = Path(__file__).resolve().parents[1]
VIT_CONFIGS = sorted((ROOT / "configs" / "student").glob("*.yaml")) + sorted(
    (ROOT / "configs" / "teacher").glob("*.yaml")
)


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(module_base, "_COMPILE_FALLBACK_WARNED", False)


def _compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


@pytest.mark.parametrize("path", VIT_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_vit_configs_compile(path):
    init = yaml.safe_load(path.read_text())["model"]["init_args"]
    assert init["compile"] is True


def test_cpu_fit_with_compile_warns_once_and_runs_eager(shards, tmp_path, fresh_warning, caplog):
    torch.manual_seed(0)
    model = TeacherModule(**module_kwargs("teacher", compile=True, warmup_steps=0))
    before = params_snapshot(model)
    with caplog.at_level(logging.WARNING, logger="salt.module_base"):
        trainer(tmp_path / "a", max_steps=2).fit(model, datamodule=datamodule(shards))
        trainer(tmp_path / "b", max_steps=1).fit(model, datamodule=datamodule(shards))
    lines = [r.getMessage() for r in caplog.records if r.name == "salt.module_base"]
    assert lines == [
        "compile: true, but running eager: compiled training is for CUDA devices "
        "(this run is on cpu)"
    ]
    assert model.use_compile and not model.compiled
    assert not any(_compiled(m) for m in model.modules())
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained, eagerly


def test_reason_names_missing_triton(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a)
    )
    reason = module_base.compile_unavailable_reason(torch.device("cuda"))
    assert reason == "Triton is not installed"


def test_reason_names_missing_c_compiler(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CC", raising=False)
    reason = module_base.compile_unavailable_reason(torch.device("cuda"))
    assert reason is not None and "no C compiler" in reason


@pytest.mark.parametrize("scope", ["blocks", "modules"])
def test_compile_modules_follows_the_scope(scope, monkeypatch):
    monkeypatch.setattr(module_base, "compile_unavailable_reason", lambda device: None)
    enc = create_encoder("vit_test")
    pred = create_predictor(enc.embed_dim, enc.embed_dim, size="predictor_test")
    assert module_base.compile_modules([enc, pred], torch.device("cuda"), scope)
    for m in (enc, pred):
        assert _compiled(m) == (scope == "modules")
        assert all(_compiled(b) == (scope == "blocks") for b in m.blocks)
    assert set(enc.state_dict()) == set(create_encoder("vit_test").state_dict())  # keys unchanged


def test_unknown_scope_rejected():
    with pytest.raises(ValueError, match="compile_scope"):
        TeacherModule(**module_kwargs("teacher", compile_scope="graph"))
