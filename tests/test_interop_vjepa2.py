"""``salt import`` of V-JEPA 2: a ``transformers`` folder and a torch-hub ``.pt`` give salt
features equal to the source's (fp32, max relative error ≤ 1e-4, every block), strict errors
that list what differs, and (with ``SALT_VJEPA2_SRC`` pointing to a V-JEPA 2 checkout) equality
with V-JEPA 2's own ``vision_transformer`` module, also at other clip sizes."""

from __future__ import annotations

import importlib
import os
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers_interop import (
    clip,
    hub_checkpoint,
    rel_err,
    save,
    vjepa2_model,
    vjepa2_tokens,
)
from safetensors.torch import load_file, save_file

from salt.encoder_io import load_encoder
from salt.errors import UsageError
from salt.interop import detect_format, import_encoder
from salt.interop.cli import main as import_main
from salt.models import VideoViT

pytest.importorskip("transformers")
TOL = 1e-4


def check_equal(encoder: VideoViT, model, x: torch.Tensor) -> None:
    final, blocks = vjepa2_tokens(model, x)
    with torch.no_grad():
        ours_final, ours_blocks = encoder.forward_intermediates(x, output_fmt="NLC")
    assert ours_final.shape == final.shape
    assert rel_err(ours_final, final) <= TOL
    assert rel_err(encoder(x), final) <= TOL
    assert len(ours_blocks) == len(blocks)
    for ours, ref in zip(ours_blocks, blocks, strict=True):
        assert rel_err(ours, ref) <= TOL


@pytest.mark.parametrize(
    ("cls", "hidden"),
    [("VJEPA2Model", 96), ("VJEPA2Model", 80), ("VJEPA2ForVideoClassification", 96)],
)
def test_transformers_folder_features_equal(tmp_path: Path, cls: str, hidden: int) -> None:
    model = vjepa2_model(cls=cls, hidden_size=hidden)
    folder = save(model, tmp_path / "vjepa2")
    assert detect_format(folder) == "transformers-vjepa2"
    out = tmp_path / "vjepa2.safetensors"
    import_encoder(folder, out)
    encoder, meta = load_encoder(out)
    check_equal(encoder, model, clip())

    cfg = meta["encoder_config"]
    assert (cfg["rope_pairing"], cfg["pos_embed"], cfg["final_norm"]) == ("tiled", "rope", True)
    assert cfg["embed_dim"] == hidden and cfg["norm_eps"] == 1e-6
    assert meta["rope_convention"] == "tiled-vjepa2-v1" and meta["stage"] == "imported"
    src = meta["source"]
    assert src["format"] == "transformers-vjepa2" and src["architecture"] == cls
    assert "predictor." in src["skipped"]  # the JEPA predictor is left out, and counted
    if cls == "VJEPA2ForVideoClassification":
        assert {"pooler.", "classifier."} <= set(src["skipped"])
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert "no processor config" in src["mean_std_from"]


def test_tiled_pairing_is_what_matches(tmp_path: Path) -> None:
    """The same weights with salt's interleaved RoPE give different features: the pairing option
    is load-bearing, and the comparison above can fail."""
    model = vjepa2_model()
    encoder, meta = import_encoder(save(model, tmp_path / "v"))
    wrong = VideoViT(**{**encoder.config, "rope_pairing": "interleaved"}).eval()
    wrong.load_state_dict(encoder.state_dict())
    x = clip()
    final, _ = vjepa2_tokens(model, x)
    with torch.no_grad():
        assert rel_err(wrong(x), final) > 1e-2


def test_processor_mean_std_are_read(tmp_path: Path) -> None:
    from transformers import VJEPA2VideoProcessor

    folder = save(vjepa2_model(), tmp_path / "v")
    VJEPA2VideoProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4]).save_pretrained(
        str(folder)
    )
    _, meta = import_encoder(folder)
    assert meta["mean"] == pytest.approx([0.4, 0.5, 0.6])
    assert meta["std"] == pytest.approx([0.2, 0.3, 0.4])
    assert meta["source"]["mean_std_from"].endswith("preprocessor_config.json")


def test_transformers_folder_is_strict(tmp_path: Path) -> None:
    folder = save(vjepa2_model(), tmp_path / "v")
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    save_file({**state, "encoder.layer.0.attention.q_norm.weight": torch.ones(24)}, str(weights))
    with pytest.raises(UsageError, match=r"unknown \['encoder.layer.0.attention.q_norm.weight'\]"):
        import_encoder(folder)
    del state["encoder.layer.1.mlp.fc2.bias"]
    save_file(state, str(weights))
    with pytest.raises(UsageError, match=r"missing \['encoder.layer.1.mlp.fc2.bias'\]"):
        import_encoder(folder)


# --- torch-hub checkpoints -----------------------------------------------------------------------


def test_hub_checkpoint_features_equal(tmp_path: Path, capsys) -> None:
    # V-JEPA 2's ViT-S width (384, 6 heads: head dim 64 → RoPE 3×20 + 4 unrotated, as ViT-L/H/g):
    # the head count comes from the width table
    size = {"hidden_size": 384, "num_attention_heads": 6}
    target, online = vjepa2_model(seed=0, **size), vjepa2_model(seed=1, **size)
    pt = hub_checkpoint(tmp_path / "vits.pt", target, online)
    assert detect_format(pt) == "vjepa2-torch-hub"
    out = tmp_path / "target.safetensors"
    assert import_main([str(pt), str(out)]) == 0  # default key: target_encoder
    assert "wrote" in capsys.readouterr().out
    encoder, meta = load_encoder(out)
    x = clip(seed=3)
    check_equal(encoder, target, x)
    assert meta["source"]["key"] == "target_encoder"
    assert meta["source"]["keys_in_file"] == ["encoder", "predictor", "target_encoder"]
    assert meta["encoder_config"]["num_heads"] == 6 and meta["encoder_config"]["rope_pairing"] == (
        "tiled"
    )

    other = tmp_path / "online.safetensors"
    assert import_main([str(pt), str(other), "--key", "encoder"]) == 0
    check_equal(load_encoder(other)[0], online, x)


def test_hub_checkpoint_errors(tmp_path: Path, capsys) -> None:
    model = vjepa2_model()
    pt = hub_checkpoint(tmp_path / "a.pt", model, model)
    assert import_main([str(pt), str(tmp_path / "o.safetensors"), "--key", "ema"]) == 2
    err = capsys.readouterr().err
    assert "no state dict under key 'ema'" in err and "'target_encoder'" in err
    assert len(err.strip().splitlines()) == 1

    def with_target(edit) -> Path:
        ckpt = torch.load(pt, weights_only=True)
        edit(ckpt["target_encoder"])
        torch.save(ckpt, tmp_path / "b.pt")
        return tmp_path / "b.pt"

    extra = with_target(lambda sd: sd.update({"module.backbone.blocks.0.mlp.fc3.weight": sd[
        "module.backbone.blocks.0.mlp.fc2.weight"]}))  # fmt: skip
    with pytest.raises(UsageError, match=r"unknown \['blocks.0.mlp.fc3.weight'\]"):
        import_encoder(extra, num_heads=4)
    shape = with_target(lambda sd: sd.update({"module.backbone.norm.bias": torch.zeros(7)}))
    with pytest.raises(UsageError, match=r"norm.bias \(7,\) → norm.bias needs \(96,\)"):
        import_encoder(shape, num_heads=4)

    table = torch.zeros(1, 64, 96)
    pos = with_target(lambda sd: sd.update({"module.backbone.pos_embed": table}))
    with pytest.raises(UsageError, match="pos_embed.*--ignore-pos-embed"):
        import_encoder(pos, num_heads=4)
    _, meta = import_encoder(pos, num_heads=4, ignore_pos_embed=True)
    assert meta["source"]["skipped"] == {"pos_embed": 1}


def test_hub_checkpoint_head_count(tmp_path: Path) -> None:
    """The heads do not show in the weights: a width outside V-JEPA 2's sizes needs --num-heads,
    and a wrong count gives other features (so the table matters)."""
    model = vjepa2_model(hidden_size=80)
    pt = hub_checkpoint(tmp_path / "w80.pt", model, model)
    with pytest.raises(UsageError, match="width 80 .* --num-heads"):
        import_encoder(pt)
    encoder, _ = import_encoder(pt, num_heads=4)
    check_equal(encoder, model, clip())
    wrong, _ = import_encoder(pt, num_heads=2)
    with torch.no_grad():
        assert rel_err(wrong(clip()), vjepa2_tokens(model, clip())[0]) > 1e-2


def test_not_a_source_is_a_usage_error(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "o.safetensors")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "notes.txt").write_text("hello")
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "other.pt")
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "bert"): "model_type 'bert' is not one salt imports",
        str(tmp_path / "notes.txt"): "cannot read as a torch checkpoint",
        str(tmp_path / "other.pt"): "not a V-JEPA 2 checkpoint .*'model'",
        str(tmp_path / "empty"): "without config.json",
        str(tmp_path / "missing"): "not found",
    }
    for src, message in cases.items():
        assert import_main([src, out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("salt import: error:") and len(err.strip().splitlines()) == 1
        assert __import__("re").search(message, err), err
    assert not Path(out).exists()
    pt = hub_checkpoint(tmp_path / "a.pt", vjepa2_model(), vjepa2_model())
    with pytest.raises(UsageError, match="must end in .safetensors"):
        import_encoder(pt, tmp_path / "o.pt")


# --- V-JEPA 2's own code ---------------------------------------------------------------------------


@pytest.fixture
def vjepa2_src():
    root = os.environ.get("SALT_VJEPA2_SRC")
    if not root:
        pytest.skip("set SALT_VJEPA2_SRC to a V-JEPA 2 checkout to compare against its own code")
    pytest.importorskip("einops")  # imported by its patch_embed module
    sys.path.insert(0, root)
    try:
        yield importlib.import_module("src.models.vision_transformer")
    finally:
        sys.path.remove(root)
        for name in [m for m in sys.modules if m == "src" or m.startswith("src.")]:
            del sys.modules[name]


@pytest.mark.parametrize("width", [96, 80])
def test_equals_vjepa2_vision_transformer(vjepa2_src, tmp_path: Path, width: int) -> None:
    torch.manual_seed(0)
    peer = vjepa2_src.VisionTransformer(
        img_size=(32, 32), patch_size=8, num_frames=8, tubelet_size=2, embed_dim=width, depth=2,
        num_heads=4, mlp_ratio=2.0, qkv_bias=True, use_rope=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    ).eval()  # fmt: skip
    with torch.no_grad():
        for name, p in peer.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            if name.endswith("qkv.weight"):
                p[: 2 * width].mul_(8.0)  # q and k rows: attention far from uniform
    state = {f"module.backbone.{k}": v for k, v in peer.state_dict().items()}
    torch.save({"target_encoder": state, "encoder": state}, tmp_path / "peer.pt")
    encoder, _ = import_encoder(tmp_path / "peer.pt", num_heads=4)
    # the nominal clip, fewer frames, and a non-square clip of another size (V-JEPA 2 derives
    # positions from the clip's grid, as salt does)
    for x in (clip(), clip(t=4, seed=1), clip(t=6, h=24, w=40, seed=2)):
        with torch.no_grad():
            assert rel_err(encoder(x), peer(x)) <= TOL
    # context-only encoding: V-JEPA 2's `masks` (indices kept) = salt's token_indices
    x, keep = clip(), torch.tensor([[0, 3, 17, 40, 63], [1, 2, 5, 33, 60]])
    with torch.no_grad():
        assert rel_err(encoder(x, keep), peer(x, masks=[keep])) <= TOL
