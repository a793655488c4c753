"""``load_encoder`` / ``export_encoder`` / ``salt export`` on a real stage-1 checkpoint: the round
trip gives identical features, and every malformed input is an error that names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from train_helpers import module_kwargs, train_teacher_checkpoint

from salt.cli import main
from salt.encoder_io import export_encoder, file_sha256, load_encoder, read_encoder_state
from salt.models import ROPE_CONVENTION
from salt.student import StudentModule


@pytest.fixture(scope="module")
def ckpt(shards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_teacher_checkpoint(tmp_path_factory.mktemp("io"), shards, steps=2)


def test_export_load_round_trip(ckpt: Path, tmp_path: Path, capsys) -> None:
    enc_ckpt, meta_ckpt = load_encoder(ckpt)
    out = tmp_path / "teacher.safetensors"
    main(["export", str(ckpt), str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    enc_st, meta_st = load_encoder(out)
    assert not enc_st.training and not enc_ckpt.training

    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    trained = {
        k[len("encoder.") :]: v for k, v in raw["state_dict"].items() if k.startswith("encoder.")
    }
    assert trained.keys() == enc_st.state_dict().keys()
    assert all(torch.equal(trained[k], v) for k, v in enc_st.state_dict().items())
    video = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc_ckpt(video), enc_st(video))
        idx = torch.tensor([[0, 5, 63], [1, 2, 3]])
        assert torch.equal(enc_ckpt(video, idx), enc_st(video, idx))

    assert meta_st.pop("source_checkpoint") == str(ckpt.resolve())
    assert meta_st == meta_ckpt
    assert meta_st["stage"] == "teacher" and meta_st["step"] == 2
    assert (
        meta_st["rope_convention"] == ROPE_CONVENTION
        and meta_st["encoder_config"]["pos_embed"] == "rope"
    )
    assert (
        meta_st["encoder_config"]["patch_size"] == 8
        and meta_st["encoder_config"]["tubelet_size"] == 2
    )
    assert len(meta_st["mean"]) == len(meta_st["std"]) == 3 and isinstance(
        meta_st["train_loss"], float
    )


def test_student_accepts_exported_teacher(ckpt: Path, tmp_path: Path) -> None:
    out = export_encoder(ckpt, tmp_path / "t.safetensors")
    from_ckpt = StudentModule(teacher=str(ckpt), **module_kwargs("student"))
    from_file = StudentModule(teacher=str(out), **module_kwargs("student"))
    assert from_file.teacher_info["sha256"] == file_sha256(out)
    video = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_ckpt.teacher.encoder(video), from_file.teacher.encoder(video))


def _rewrite(ckpt: Path, out: Path, edit) -> Path:
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    edit(raw)
    torch.save(raw, out)
    return out


def test_strict_errors(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="encoder file not found"):
        load_encoder(tmp_path / "missing.ckpt")

    def drop_key(raw):
        del raw["state_dict"]["encoder.norm.weight"]
        raw["state_dict"]["encoder.extra.weight"] = torch.zeros(1)

    with pytest.raises(
        ValueError, match=r"missing \['norm.weight'\], unexpected \['extra.weight'\]"
    ):
        load_encoder(_rewrite(ckpt, tmp_path / "keys.ckpt", drop_key))

    def reshape(raw):
        raw["state_dict"]["encoder.norm.weight"] = torch.zeros(3)

    with pytest.raises(ValueError, match=r"norm.weight: file \(3,\) vs model \(64,\)"):
        load_encoder(_rewrite(ckpt, tmp_path / "shape.ckpt", reshape))

    def unknown_arch(raw):
        raw["salt"]["encoder_config"]["num_registers"] = 4

    with pytest.raises(ValueError, match=r"unknown encoder architecture.*\['num_registers'\]"):
        load_encoder(_rewrite(ckpt, tmp_path / "arch.ckpt", unknown_arch))

    def old_rope(raw):
        raw["salt"]["rope_convention"] = "tiled-vjepa2"

    with pytest.raises(ValueError, match="RoPE convention mismatch: file says 'tiled-vjepa2'"):
        load_encoder(_rewrite(ckpt, tmp_path / "rope.ckpt", old_rope))

    def no_meta(raw):
        del raw["salt"]

    with pytest.raises(ValueError, match="not a salt checkpoint"):
        load_encoder(_rewrite(ckpt, tmp_path / "plain.ckpt", no_meta))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read as a Lightning checkpoint"):
        load_encoder(tmp_path / "junk.ckpt")

    state, meta = read_encoder_state(ckpt)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="has no 'salt' metadata"):
        load_encoder(tmp_path / "bare.safetensors")
    partial = {k: meta[k] for k in ("stage", "encoder_config")}
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(tmp_path / "p.safetensors"),
        metadata={"salt": json.dumps(partial)},
    )
    with pytest.raises(
        ValueError, match=r"salt metadata lacks \['rope_convention', 'mean', 'std'\]"
    ):
        load_encoder(tmp_path / "p.safetensors")

    with pytest.raises(ValueError, match="must end in .safetensors"):
        export_encoder(ckpt, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(ValueError, match="only .* may be overridden"):
        load_encoder(ckpt, depth=3)


def test_metadata_from_before_the_added_options_loads(ckpt: Path, tmp_path: Path) -> None:
    """Checkpoints written before rope_pairing / norm_eps / final_norm existed load unchanged."""

    def old(raw):
        for key in ("rope_pairing", "norm_eps", "final_norm"):
            raw["salt"]["encoder_config"].pop(key)

    encoder, _ = load_encoder(_rewrite(ckpt, tmp_path / "old.ckpt", old))
    current, _ = load_encoder(ckpt)
    assert encoder.config == current.config
    video = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder(video), current(video))


def test_checkpoint_records_its_encoders_rope_convention(shards: str, tmp_path: Path) -> None:
    path = train_teacher_checkpoint(
        tmp_path, shards, steps=2, encoder_kwargs={"patch_size": 8, "rope_pairing": "tiled"}
    )
    encoder, meta = load_encoder(path)
    assert meta["rope_convention"] == "tiled-vjepa2-v1" and encoder.rope_pairing == "tiled"


def _as_sharded_folder(ckpt: Path, folder: Path) -> Path:
    """The layout FSDP's sharded save writes (torch.distributed.checkpoint files of the model
    state under ``state_dict.``, the rest in ``meta.pt``), made from a real checkpoint."""
    import torch.distributed.checkpoint as dcp

    full = torch.load(ckpt, map_location="cpu", weights_only=True)
    dcp.save({"state_dict": full.pop("state_dict")}, checkpoint_id=str(folder), no_dist=True)
    torch.save(full, folder / "meta.pt")
    return folder


@pytest.mark.parametrize("fmt", ["safetensors", "hf"])
def test_export_reads_a_sharded_checkpoint_folder(ckpt: Path, tmp_path: Path, fmt: str) -> None:
    sharded = _as_sharded_folder(ckpt, tmp_path / "runs" / "step=0000002.ckpt")
    name = "enc.safetensors" if fmt == "safetensors" else "hf"
    from_file, from_folder = tmp_path / "file" / name, tmp_path / "folder" / name
    main(["export", str(ckpt), str(from_file), "--format", fmt])
    main(["export", str(sharded), str(from_folder), "--format", fmt])
    enc_a, meta_a = load_encoder(from_file)
    enc_b, meta_b = load_encoder(from_folder)
    assert enc_a.state_dict().keys() == enc_b.state_dict().keys()
    assert all(torch.equal(v, enc_b.state_dict()[k]) for k, v in enc_a.state_dict().items())
    assert meta_b.pop("source_checkpoint") == str(sharded.resolve())
    assert meta_a.pop("source_checkpoint") == str(ckpt.resolve())
    assert meta_a == meta_b
    # the consolidated scratch copy is gone; only the export is left beside it
    assert sorted(p.name for p in from_folder.parent.iterdir()) == [name]
