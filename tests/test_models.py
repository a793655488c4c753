"""salt.models: sizes and parameter counts, forward/backward of vit_test, context-only encoding
that keeps true positions, options (sin-cos, non-square grids, other frame counts, activation
checkpointing), the predictor and the pixel-decoder helpers."""

import json

import pytest
import torch

from salt.models import (
    ENCODER_SIZES,
    PixelDecoder,
    Predictor,
    VideoViT,
    create_encoder,
    create_pixel_decoder,
    create_predictor,
    list_encoders,
    norm_pix,
    patchify_pixels,
    unpatchify_pixels,
)

BIG = [n for n in ENCODER_SIZES if n != "vit_test"]


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def clip(b=2, t=4, h=32, w=48, seed=0):
    return torch.randn(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed))


# --- sizes -------------------------------------------------------------------------------------


def test_registry_names():
    assert list_encoders() == [
        "vit_test",
        "vit_small",
        "vit_base",
        "vit_large",
        "vit_huge",
        "vit_giant",
        "vit_gigantic",
    ]
    with pytest.raises(KeyError, match="vit_tiny"):
        create_encoder("vit_tiny")


@pytest.mark.parametrize("name", BIG)
def test_param_count_matches_spec(name):
    size = ENCODER_SIZES[name]
    with torch.device("meta"):
        model = create_encoder(name)
    assert model.head_dim == size.head_dim
    n = n_params(model)
    assert abs(n - size.expected_params) / size.expected_params < 0.01, n


def test_giant_and_gigantic_dims():
    with torch.device("meta"):
        g, big_g = create_encoder("vit_giant"), create_encoder("vit_gigantic")
    assert (g.embed_dim, g.num_heads, g.head_dim) == (1408, 22, 64)
    assert (big_g.embed_dim, big_g.num_heads, big_g.head_dim) == (1664, 26, 64)
    assert big_g.blocks[0].mlp.fc1.out_features == 8192  # not V-JEPA 2's misspelt 6656
    assert len(big_g.blocks) == 48


def test_vit_test_is_small():
    assert n_params(create_encoder("vit_test")) < 1_000_000


def test_predictor_param_count():
    with torch.device("meta"):
        pred = create_predictor(in_dim=1024, out_dim=1024)  # ViT-L student and teacher
    assert abs(n_params(pred) - 22_000_000) / 22_000_000 < 0.01
    assert (pred.embed_dim, len(pred.blocks), pred.num_heads) == (384, 12, 12)


def test_config_rebuilds_the_model():
    model = create_encoder("vit_test", pos_embed="sincos", img_size=(112, 160), num_frames=8)
    config = json.loads(json.dumps(model.config))
    rebuilt = VideoViT(**config)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    x = clip(1, 8, 112, 160)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_vjepa_init():
    model = VideoViT(embed_dim=64, depth=4, num_heads=4, mlp_hidden_dim=256)
    assert model.blocks[0].attn.qkv.bias.abs().max() == 0
    for i, block in enumerate(model.blocks, start=1):
        want = 0.02 / (2 * i) ** 0.5
        # residual output projections rescaled by 1/sqrt(2i); fc2 has 16k weights, proj 4k
        assert abs(block.mlp.fc2.weight.std().item() - want) / want < 0.05
        assert abs(block.attn.proj.weight.std().item() - want) / want < 0.08
        for w in (block.attn.qkv.weight, block.mlp.fc1.weight):  # not rescaled
            assert abs(w.std().item() - 0.02) / 0.02 < 0.05


# --- encoder forward ---------------------------------------------------------------------------


def test_forward_backward_full():
    model = create_encoder("vit_test")
    x = clip()
    out = model.forward_features(x)
    assert out.shape == (2, 2 * 2 * 3, 64)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_forward_backward_subset():
    model = create_encoder("vit_test")
    idx = torch.tensor([[0, 5, 7, 11], [3, 2, 9, 1]])
    out = model.forward_features(clip(), idx)
    assert out.shape == (2, 4, 64)
    out.square().mean().backward()  # not .sum(): a LayerNorm output sums to ~0 per token
    assert model.patch_embed.weight.grad.abs().sum() > 0


def test_subset_of_all_tokens_equals_full():
    model = create_encoder("vit_test")
    x = clip()
    all_idx = torch.arange(12).expand(2, 12)
    torch.testing.assert_close(model(x, all_idx), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_subset_sees_only_its_tokens(pos_embed):
    """Encoding a subset = encoding a clip made of only those tubelets: everything outside the
    subset can be replaced by noise without changing the output."""
    model = create_encoder("vit_test", pos_embed=pos_embed)
    x = clip()
    idx = torch.tensor([[0, 4, 7, 10], [1, 2, 8, 11]])
    noisy = clip(seed=1) * 10
    keep = torch.zeros(2, 12, dtype=torch.bool).scatter_(1, idx, True)
    keep = keep.view(2, 1, 2, 1, 2, 1, 3, 1)  # per tubelet of a 4×32×48 clip (grid 2×2×3)
    x_ = x.view(2, 3, 2, 2, 2, 16, 3, 16)
    mixed = torch.where(keep, x_, noisy.view_as(x_)).view_as(x)
    torch.testing.assert_close(model(mixed, idx), model(x, idx), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_permuting_indices_permutes_outputs(pos_embed):
    """A token's position comes from its index, not its slot."""
    model = create_encoder("vit_test", pos_embed=pos_embed)
    x = clip()
    idx = torch.tensor([[0, 4, 7, 10, 11], [1, 2, 8, 11, 6]])
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(model(x, idx[:, perm]), model(x, idx)[:, perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_positions_are_used(pos_embed):
    """Same token contents in the same slots, two tokens' (t, h, w) swapped → other output.
    (Guards against a model that ignores positions, which the permutation test cannot see.)"""
    model = create_encoder("vit_test", pos_embed=pos_embed)
    with torch.no_grad():  # sharper attention than the 0.02 init, so positions visibly matter
        for block in model.blocks:
            block.attn.qkv.weight.mul_(10)
    x = clip()
    a, b = 0, 11  # grid 2×2×3: (0,0,0) and (1,1,2)
    x2 = patchify_pixels(x)
    x2[:, [a, b]] = x2[:, [b, a]]
    x2 = unpatchify_pixels(x2, (2, 2, 3))
    idx = torch.tensor([[a, b, 5, 6]] * 2)
    idx2 = torch.tensor([[b, a, 5, 6]] * 2)
    out, out2 = model(x, idx), model(x2, idx2)
    assert (out - out2).abs().max() > 1e-2


def test_rope_translation_invariance_of_subset():
    """With RoPE only relative positions matter: shift the clip one patch to the right and the
    indices by one column, and the encoded subset is unchanged."""
    model = create_encoder("vit_test")
    x = clip(1, 4, 32, 64)  # grid 2×2×4
    idx = torch.tensor([[0, 1, 2, 5, 9, 14]])  # columns 0..2 only
    shifted = torch.roll(x, shifts=16, dims=-1)
    torch.testing.assert_close(model(shifted, idx + 1), model(x, idx), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_other_frame_counts_and_non_square(pos_embed):
    model = create_encoder("vit_test", pos_embed=pos_embed)
    x = torch.randn(1, 3, 8, 112, 160)
    assert model.grid(x) == (4, 7, 10)
    out = model(x)
    assert out.shape == (1, 280, 64)
    assert torch.isfinite(out).all()
    assert model(torch.randn(1, 3, 2, 48, 32)).shape == (1, 6, 64)


def test_bad_inputs_are_clear_errors():
    model = create_encoder("vit_test")
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="int64"):
        model(torch.randn(1, 3, 2, 32, 32), torch.tensor([[0, 1]], dtype=torch.int32))
    with pytest.raises(ValueError, match="pos_embed"):
        create_encoder("vit_test", pos_embed="learned")


def test_forward_intermediates_timm_meaning():
    """timm's signature and meaning: indices None = all blocks, int n = the last n, a list =
    those blocks in block order; (final normed, list) unless intermediates_only; NCTHW maps."""
    model = create_encoder("vit_test", depth=3).eval()
    x = clip()  # grid 2×2×3
    with torch.no_grad():
        final, blocks = model.forward_intermediates(x, output_fmt="NLC")
        assert len(blocks) == 3 and torch.equal(final, model.forward_features(x))
        assert torch.equal(model.norm(blocks[-1]), final)
        for indices, take in ((None, [0, 1, 2]), (2, [1, 2]), ([-1, 0], [0, 2]), ([1, 1], [1])):
            got = model.forward_intermediates(x, indices, output_fmt="NLC", intermediates_only=True)
            assert len(got) == len(take)
            assert all(torch.equal(g, blocks[i]) for g, i in zip(got, take, strict=True))
        maps = model.forward_intermediates(x, [0], norm=True, intermediates_only=True)
        assert maps[0].shape == (2, 64, 2, 2, 3)  # [B, D, T', H', W'], the default like timm's NCHW
        tokens = model.norm(blocks[0])  # [B, N, D], N in T×H×W order
        assert torch.equal(maps[0][:, :, 1, 0, 2], tokens[:, 1 * 6 + 0 * 3 + 2])
        early_final, early = model.forward_intermediates(x, [0], stop_early=True, output_fmt="NLC")
        assert torch.equal(early_final, model.norm(blocks[0])) and torch.equal(early[0], blocks[0])
        as_dict = model.forward_intermediates(x, 1, output_fmt="NLC", output_dict=True)
        assert set(as_dict) == {"image_intermediates", "image_features"}
        # salt's extension: a token subset, as in forward_features
        idx = torch.tensor([[0, 5, 7], [3, 2, 9]])
        sub_final, _ = model.forward_intermediates(x, token_indices=idx, output_fmt="NLC")
        assert torch.equal(sub_final, model.forward_features(x, idx))
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, 4)
    with pytest.raises(ValueError, match="indices must be"):
        model.forward_intermediates(x, [3])
    with pytest.raises(ValueError, match="NCTHW"):
        model.forward_intermediates(x, output_fmt="NCHW")
    with pytest.raises(ValueError, match="output_fmt='NLC'"):
        model.forward_intermediates(x, token_indices=idx)
    with pytest.raises(TypeError, match="token_indices="):  # the old positional call
        model.forward_intermediates(x, [0], idx)


def test_forward_intermediates_index_rule_is_timms():
    from timm.models._features import feature_take_indices

    model = create_encoder("vit_test", depth=5)
    for indices in (None, 1, 3, 5, [0], [4, 0, 2], [-1, -5], [-2, 3]):
        assert model._take_indices(indices) == sorted(set(feature_take_indices(5, indices)[0]))


def test_timm_vit_returns_block_order():
    """What the rule above mirrors: timm's ViT returns intermediates in block order."""
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=3, num_classes=0).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        both = vit.forward_intermediates(x, [2, 0], intermediates_only=True)
        first = vit.forward_intermediates(x, [0], intermediates_only=True)
    assert torch.equal(both[0], first[0])


def test_activation_checkpointing_same_values_and_grads():
    torch.manual_seed(0)
    plain = create_encoder("vit_test")
    ckpt = create_encoder("vit_test", act_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = clip()
    idx = torch.tensor([[0, 5, 7], [3, 2, 9]])
    for m in (plain, ckpt):
        m(x, idx).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


# --- predictor and pixel decoder ---------------------------------------------------------------


def _predictor_inputs():
    ctx_idx = torch.tensor([[0, 4, 7], [1, 2, 8]])
    tgt_idx = torch.tensor([[1, 2, 3, 11], [0, 5, 6, 9]])
    ctx = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(3))
    return ctx, ctx_idx, tgt_idx


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_predictor_shapes_and_backward(pos_embed):
    pred = create_predictor(in_dim=64, out_dim=80, size="predictor_test", pos_embed=pos_embed)
    assert pred.mask_tokens.abs().sum() == 0  # zero-init
    ctx, ctx_idx, tgt_idx = _predictor_inputs()
    out = pred(ctx, ctx_idx, tgt_idx, (2, 2, 3), mask_id=1)
    assert out.shape == (2, 4, 80)  # teacher width, target rows only
    out.square().mean().backward()
    assert pred.mask_tokens.grad[1].abs().sum() > 0
    assert pred.mask_tokens.grad[0].abs().sum() == 0  # config 0 unused in this call
    assert pred.attn_backend_used == "sdpa"


def test_predictor_target_positions_come_from_indices():
    pred = create_predictor(in_dim=64, out_dim=80, size="predictor_test")
    ctx, ctx_idx, tgt_idx = _predictor_inputs()
    out = pred(ctx, ctx_idx, tgt_idx, (2, 2, 3))
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(pred(ctx, ctx_idx, tgt_idx[:, perm], (2, 2, 3)), out[:, perm])
    # mask tokens are identical, so targets differ only through their positions
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-4


def test_predictor_mask_id():
    pred = create_predictor(in_dim=64, out_dim=80, size="predictor_test", num_mask_tokens=2)
    with torch.no_grad():
        pred.mask_tokens.normal_()
    ctx, ctx_idx, tgt_idx = _predictor_inputs()
    a = pred(ctx, ctx_idx, tgt_idx, (2, 2, 3), mask_id=0)
    b = pred(ctx, ctx_idx, tgt_idx, (2, 2, 3), mask_id=1)
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="mask_id"):
        pred(ctx, ctx_idx, tgt_idx, (2, 2, 3), mask_id=2)
    with pytest.raises(ValueError, match="ctx_idx"):
        pred(ctx, ctx_idx[:, :2], tgt_idx, (2, 2, 3))


def test_encoder_to_predictor_end_to_end():
    enc = create_encoder("vit_test")
    pred = Predictor(in_dim=64, out_dim=96, embed_dim=48, depth=2, num_heads=4, mlp_hidden_dim=96)
    x = clip()
    ctx_idx, tgt_idx = _predictor_inputs()[1:]
    out = pred(enc(x, ctx_idx), ctx_idx, tgt_idx, enc.grid(x))
    out.abs().mean().backward()
    assert enc.patch_embed.weight.grad.abs().sum() > 0
    assert Predictor(**json.loads(json.dumps(pred.config))).config == pred.config


def test_pixel_decoder():
    dec = create_pixel_decoder(in_dim=64, size="predictor_test")
    assert dec.out_dim == 2 * 16 * 16 * 3 == 1536
    assert PixelDecoder(**dec.config).out_dim == 1536
    ctx, ctx_idx, tgt_idx = _predictor_inputs()
    assert dec(ctx, ctx_idx, tgt_idx, (2, 2, 3)).shape == (2, 4, 1536)


def test_patchify_matches_encoder_token_order():
    """patchify_pixels and the Conv3d patch embedding agree on T×H×W token order: the conv
    equals a linear map of each patchified tubelet."""
    model = create_encoder("vit_test")
    x = clip(2, 4, 32, 48)
    patches = patchify_pixels(x, patch=16, tubelet=2)  # [B, N, 1536]
    assert patches.shape == (2, 12, 1536)
    w = model.patch_embed.weight.permute(0, 2, 3, 4, 1).flatten(1)  # [D, tubelet·p·p·C]
    want = model.patch_embed(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(patches @ w.T + model.patch_embed.bias, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(unpatchify_pixels(patches, (2, 2, 3)), x, rtol=0, atol=0)


def test_norm_pix():
    t = torch.randn(2, 5, 1536) * 7 + 3
    n = norm_pix(t)
    torch.testing.assert_close(n.mean(-1), torch.zeros(2, 5), rtol=0, atol=1e-5)
    torch.testing.assert_close(n.std(-1, unbiased=False), torch.ones(2, 5), rtol=0, atol=1e-4)


def test_bf16_autocast_close_to_fp32():
    model = create_encoder("vit_test")
    x = clip()
    idx = torch.tensor([[0, 5, 7, 11], [3, 2, 9, 1]])
    ref = model(x, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, idx)
    out.float().square().mean().backward()
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)


def test_embed_tubelets_equals_conv3d():
    """The matmul tubelet embedding is the Conv3d (same weights, same token order), fp32 and
    under bf16 autocast, with gradients reaching the conv weights."""
    from salt.models.vit import embed_tubelets

    model = create_encoder("vit_test")
    x = clip(2, 4, 32, 48)
    want = model.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
    got = embed_tubelets(x, model.patch_embed)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = embed_tubelets(x, model.patch_embed)
    assert low.dtype == torch.bfloat16
    assert (low.float() - want).norm() / want.norm() < 1e-2
    got.square().sum().backward()
    assert model.patch_embed.weight.grad.abs().sum() > 0


# --- options for other projects' weights (salt import) -------------------------------------------


def test_norm_eps_and_final_norm_options():
    model = create_encoder("vit_test", norm_eps=1e-12, final_norm=False).eval()
    eps = {m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps == {1e-12} and isinstance(model.norm, torch.nn.Identity)
    assert not any(k.startswith("norm.") for k in model.state_dict())
    x = clip()
    with torch.no_grad():
        _, blocks = model.forward_intermediates(x, output_fmt="NLC")
        assert torch.equal(model(x), blocks[-1])  # the last block's raw output


def test_sincos_1d_positions():
    model = create_encoder("vit_test", pos_embed="sincos_1d", img_size=32, num_frames=4).eval()
    assert "pos_table" not in model.state_dict()  # fixed, not a weight
    assert model.pos_table.shape == (2 * 2 * 2, 64)
    x = clip(h=32, w=32)
    with torch.no_grad():
        idx = torch.tensor([[0, 5], [3, 6]])
        swapped = torch.tensor([[5, 0], [6, 3]])
        # positions come from the indices: permuting them permutes the outputs
        assert torch.allclose(model(x, idx).flip(1), model(x, swapped), atol=1e-6)
    with pytest.raises(ValueError, match="nominal 2×2×2 grid"):
        model(clip(h=32, w=48))


def test_from_config_is_strict_and_fills_added_defaults():
    model = create_encoder("vit_test")
    old = {
        k: v for k, v in model.config.items() if k not in ("rope_pairing", "norm_eps", "final_norm")
    }
    rebuilt = VideoViT.from_config(old, "interleaved-v1")
    assert rebuilt.config == model.config
    with pytest.raises(ValueError, match=r"unknown keys \['registers'\]"):
        VideoViT.from_config({**old, "registers": 4})
    with pytest.raises(ValueError, match="RoPE convention mismatch"):
        VideoViT.from_config({**old, "rope_pairing": "tiled"}, "interleaved-v1")
    assert VideoViT.from_config(
        {**old, "rope_pairing": "tiled"}, "tiled-vjepa2-v1"
    ).rope_convention == ("tiled-vjepa2-v1")
    with pytest.raises(ValueError, match="may be overridden"):
        VideoViT.from_config(old, depth=3)
    with pytest.raises(ValueError, match="rope_pairing"):
        create_encoder("vit_test", rope_pairing="halves")


def test_tiled_pairing_changes_features():
    a = create_encoder("vit_test").eval()
    b = create_encoder("vit_test", rope_pairing="tiled").eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert not torch.allclose(a(clip()), b(clip()), atol=1e-4)
