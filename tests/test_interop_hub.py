"""Out to the Hub, without network: ``salt export CKPT DIR --format hf`` on a real stage-1
checkpoint (config.json, model.safetensors, a model card with the probe results from the
checkpoint's real MLflow store), ``VideoViT.from_pretrained`` of the folder and of a repo id
resolved from a local Hugging Face cache, ``save_pretrained`` round trips of imported models, and
``push_to_hub`` reaching ``huggingface_hub``'s API (refused in offline mode)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers_interop import clip, save, videomae_model, vjepa2_model
from train_helpers import train_teacher_checkpoint

from salt.cli import main as salt_main
from salt.encoder_io import export_hf, load_encoder
from salt.errors import UsageError
from salt.interop import import_encoder
from salt.models import VideoViT, create_encoder


@pytest.fixture(scope="module")
def ckpt(shards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub") / "runs" / "exp" / "run" / "checkpoints"
    return train_teacher_checkpoint(root, shards, steps=2)


def test_export_hf_folder(ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hf"
    salt_main(["export", str(ckpt), str(out), "--format", "hf"])
    assert f"wrote {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((out / "config.json").read_text())
    trained, meta = load_encoder(ckpt)
    assert config["model_type"] == "salt_video_vit" and config["format_version"] == 1
    assert config["encoder_config"] == trained.config and config["stage"] == "teacher"
    assert config["step"] == 2 and config["source_checkpoint"] == str(ckpt.resolve())

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: salt\n")
    assert (
        "| stage | teacher: stage 1 of SALT" in card and "| training steps | 2 (train loss" in card
    )
    assert "2 blocks × 64 wide" in card and "No MLflow store was found" in card
    assert 'VideoViT.from_pretrained("<this repo id or folder>")' in card

    x = clip(t=8)
    for loaded in (VideoViT.from_pretrained(out), load_encoder(out)[0]):
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(x), trained(x))
    assert VideoViT.from_pretrained(out).hub_metadata["mean"] == meta["mean"]

    with pytest.raises(UsageError, match="exists and is not empty"):
        export_hf(ckpt, out)
    with pytest.raises(UsageError, match="not found"):
        export_hf(tmp_path / "missing.ckpt", tmp_path / "hf2")
    assert not (tmp_path / "hf2").exists()


def test_model_card_lists_probe_runs(ckpt: Path, tmp_path: Path) -> None:
    """Probe runs of this checkpoint in its MLflow store (found the way salt-probe finds it) go
    into the card; a probe run of another checkpoint does not."""
    from salt.probes import tracking

    run_root = ckpt.parents[3]  # .../runs: where `salt fit` keeps mlflow.db
    uri = tracking.sqlite_uri(run_root / "mlflow.db")
    common = {"salt.kind": "probe", "salt.selected_head": "attentive-lr0.001"}
    tracking.log_run(
        uri,
        "salt-probe",
        run_name="p1",
        tags={
            **common,
            "salt.checkpoint": str(ckpt.resolve()),
            "salt.probe_protocol": "ssv2-abc123",
        },
        metrics={"probe/top1": 0.4321, "probe/top5": 0.9, "probe/random_top1": 0.25},
    )
    tracking.log_run(uri, "salt-probe", run_name="p2",
                     tags={**common, "salt.checkpoint": "/elsewhere/other.ckpt",
                           "salt.probe_protocol": "k400-def456"},
                     metrics={"probe/top1": 0.9999})  # fmt: skip
    try:
        out = export_hf(ckpt, tmp_path / "hf")
    finally:
        (run_root / "mlflow.db").unlink()
        shutil.rmtree(run_root / "mlartifacts", ignore_errors=True)
    card = (out / "README.md").read_text()
    assert "Probe runs of this checkpoint in the MLflow store" in card and ": 1." in card
    assert "| ssv2-abc123 | 0.4321 | 0.9000 | 0.2500 | attentive-lr0.001 |" in card
    assert "k400-def456" not in card and "0.9999" not in card


@pytest.mark.parametrize("source", ["vjepa2", "videomae"])
def test_imported_models_round_trip(tmp_path: Path, source: str) -> None:
    """Tiled RoPE and the 1-D table survive save_pretrained / from_pretrained; a folder written
    from an imported file keeps its source metadata."""
    pytest.importorskip("transformers")
    model = vjepa2_model() if source == "vjepa2" else videomae_model()
    imported = tmp_path / "imported.safetensors"
    encoder, meta = import_encoder(save(model, tmp_path / "src"), imported)
    out = export_hf(imported, tmp_path / "hf")
    loaded = VideoViT.from_pretrained(out)
    assert loaded.config == encoder.config
    assert loaded.hub_metadata["source"]["format"] == meta["source"]["format"]
    assert "| source | transformers-" in (out / "README.md").read_text()
    with torch.no_grad():
        assert torch.equal(loaded(clip()), encoder(clip()))


def test_from_pretrained_repo_id_from_local_cache(tmp_path: Path) -> None:
    """A repo id resolves through huggingface_hub's cache (the layout a download leaves:
    refs/main → snapshots/<commit>/files) with local_files_only: no network."""
    encoder = create_encoder("vit_test").eval()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--salt-vit-test"
    encoder.save_pretrained(repo / "snapshots" / commit, metadata={"stage": "teacher"})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = VideoViT.from_pretrained(
        "someone/salt-vit-test", cache_dir=tmp_path / "cache", local_files_only=True
    )
    with torch.no_grad():
        assert torch.equal(loaded(clip()), encoder(clip()))
    assert loaded.hub_metadata["stage"] == "teacher"


def test_from_pretrained_is_strict(tmp_path: Path) -> None:
    encoder = create_encoder("vit_test")
    out = tmp_path / "m"
    encoder.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "model_type": "vjepa2"}))
    with pytest.raises(ValueError, match="model_type 'vjepa2', not 'salt_video_vit'"):
        VideoViT.from_pretrained(out)
    config["encoder_config"]["depth"] = 3
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing \['blocks.2"):
        VideoViT.from_pretrained(out)
    config["encoder_config"]["depth"] = 2
    config["rope_convention"] = "tiled-vjepa2-v1"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="RoPE convention mismatch"):
        VideoViT.from_pretrained(out)


def test_push_to_hub_goes_through_huggingface_hub(tmp_path: Path, monkeypatch) -> None:
    """With the Hub unreachable (offline mode) the push is refused by huggingface_hub's own
    repo-creation call, after nothing was written locally."""
    import huggingface_hub.constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineModeIsEnabled, match="repos/create"):
        create_encoder("vit_test").push_to_hub("someone/salt-vit-test")


def test_models_import_huggingface_hub_lazily() -> None:
    """No module of models/ imports huggingface_hub (or transformers) at module level: the Hub
    methods import it when called."""
    import ast

    models_dir = Path(__file__).resolve().parents[1] / "models"
    for path in models_dir.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.startswith(("huggingface_hub", "transformers")) for n in names), (
                    path.name
                )
