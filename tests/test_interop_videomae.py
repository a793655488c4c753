"""``salt import`` of a ``transformers`` VideoMAE folder: features equal the source's (fp32, max
relative error ≤ 1e-4, every block) for the model, pretraining and classification layouts, with
and without mean pooling (final norm) and q/v biases; the 1-D position table's grid rule;
processor normalisation; strict errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_interop import clip, rel_err, save, videomae_model, videomae_tokens
from safetensors.torch import load_file, save_file

from salt.encoder_io import load_encoder
from salt.errors import UsageError
from salt.interop import detect_format, import_encoder
from salt.models import VideoViT
from salt.models.pos_embed import sincos_embed_1d

pytest.importorskip("transformers")
TOL = 1e-4


@pytest.mark.parametrize(
    ("cls", "options"),
    [
        ("VideoMAEModel", {"use_mean_pooling": True}),
        ("VideoMAEModel", {"use_mean_pooling": False}),
        ("VideoMAEModel", {"qv_bias": False}),
        ("VideoMAEForPreTraining", {"use_mean_pooling": False}),  # MCG-NJU/videomae-base layout
        ("VideoMAEForVideoClassification", {"use_mean_pooling": True, "num_labels": 3}),
    ],
)
def test_features_equal(tmp_path: Path, cls: str, options: dict) -> None:
    model = videomae_model(cls=cls, **options)
    folder = save(model, tmp_path / "videomae")
    assert detect_format(folder) == "transformers-videomae"
    out = tmp_path / "videomae.safetensors"
    import_encoder(folder, out)
    encoder, meta = load_encoder(out)
    x = clip()
    final, blocks = videomae_tokens(model, x)
    with torch.no_grad():
        ours_final, ours_blocks = encoder.forward_intermediates(x, output_fmt="NLC")
        assert rel_err(encoder(x), final) <= TOL
    assert rel_err(ours_final, final) <= TOL
    for ours, ref in zip(ours_blocks, blocks, strict=True):
        assert rel_err(ours, ref) <= TOL

    cfg = meta["encoder_config"]
    assert cfg["pos_embed"] == "sincos_1d" and cfg["norm_eps"] == 1e-12
    assert cfg["final_norm"] is not options.get("use_mean_pooling", True)
    assert meta["source"]["architecture"] == cls and meta["stage"] == "imported"
    if cls == "VideoMAEForPreTraining":
        assert {"decoder.", "encoder_to_decoder.", "mask_token"} <= set(meta["source"]["skipped"])
    if cls == "VideoMAEForVideoClassification":
        assert {"fc_norm.", "classifier."} <= set(meta["source"]["skipped"])
    if not options.get("qv_bias", True):
        assert torch.equal(encoder.blocks[0].attn.qkv.bias, torch.zeros(3 * 80))
    else:  # the k third of salt's qkv bias is zero; q and v are the source's
        bias = encoder.blocks[0].attn.qkv.bias
        assert torch.equal(bias[80:160], torch.zeros(80)) and bias[:80].abs().sum() > 0


def test_sincos_1d_table_is_videomaes() -> None:
    """The table VideoMAE builds (numpy float64, sin on even / cos on odd channels)."""
    n, d = 1568, 768  # 16 frames × 224², ViT-B
    pos, j = np.arange(n, dtype=np.float64)[:, None], np.arange(d)[None, :]
    angles = pos / np.power(10000, 2 * (j // 2) / d)  # [N, D]
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    assert torch.equal(sincos_embed_1d(n, d), torch.from_numpy(angles).float())


def test_grid_rule(tmp_path: Path) -> None:
    """Rows number the nominal grid's flattened index: fewer frames use the first rows (the same
    positions), other frame sizes are an error, not silently other positions."""
    encoder, _ = import_encoder(save(videomae_model(), tmp_path / "v"))
    short = VideoViT(**{**encoder.config, "num_frames": 4}).eval()  # nominal 2×4×4
    short.load_state_dict(encoder.state_dict())
    x = clip(t=4)
    with torch.no_grad():
        assert torch.equal(encoder(x), short(x))  # first 32 rows = the 2×4×4 table
    for bad in (clip(h=40), clip(t=10)):
        with pytest.raises(ValueError, match="sincos_1d.*nominal 4×4×4 grid"):
            encoder(bad)


def test_processor_mean_std(tmp_path: Path) -> None:
    from transformers import VideoMAEImageProcessor

    folder = save(videomae_model(), tmp_path / "v")
    _, meta = import_encoder(folder)
    assert meta["mean"] == meta["std"] == [0.5, 0.5, 0.5]  # transformers' VideoMAE default
    assert "no processor config" in meta["source"]["mean_std_from"]
    VideoMAEImageProcessor(
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    ).save_pretrained(str(folder))
    _, meta = import_encoder(folder)
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["source"]["mean_std_from"] == "preprocessor_config.json"


def test_strict(tmp_path: Path) -> None:
    folder = save(videomae_model(), tmp_path / "v")
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    k_bias = "encoder.layer.0.attention.attention.key.bias"
    save_file({**state, k_bias: torch.zeros(80)}, str(weights))
    with pytest.raises(UsageError, match=r"unknown \['encoder.layer.0.attention.attention.key"):
        import_encoder(folder)
    q_bias = "encoder.layer.1.attention.attention.q_bias"
    save_file({k: v for k, v in state.items() if k != q_bias}, str(weights))
    with pytest.raises(UsageError, match=r"missing \['encoder.layer.1.attention.attention.q_bias"):
        import_encoder(folder)

    # a stored copy of the fixed table is accepted only if it is that table
    table = "embeddings.position_embeddings"
    save_file({**state, table: sincos_embed_1d(64, 80)[None]}, str(weights))
    _, meta = import_encoder(folder)
    assert meta["source"]["skipped"] == {table: 1}
    save_file({**state, table: torch.randn(1, 64, 80)}, str(weights))
    with pytest.raises(UsageError, match="not VideoMAE's fixed sinusoid table"):
        import_encoder(folder)


def test_config_options_are_checked(tmp_path: Path) -> None:
    folder = save(videomae_model(hidden_act="gelu_new"), tmp_path / "v")
    with pytest.raises(UsageError, match="hidden_act='gelu_new'"):
        import_encoder(folder)
    with pytest.raises(ValueError, match="pos_embed"):
        VideoViT(pos_embed="learned")
