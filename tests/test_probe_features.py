"""Frozen multi-clip × multi-view features: shapes, token order, no grad, and the on-disk cache.

Uses the registered `vit_test` encoder and real H.264 synthetic shards read by the contract's
`salt.data.eval_loader`.
"""

import pytest
import torch
from gpu import requires_cuda

from salt.data import eval_loader
from salt.data.synthetic import write_synthetic_shards
from salt.data.transforms import normalize
from salt.models import create_encoder
from salt.probes.features import (
    FeatureSet,
    cached_extract,
    encode_clips,
    extract_features,
    feature_cache_key,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    return write_synthetic_shards(
        str(out), num_train=8, num_val=6, num_classes=3, frames=16, size=32
    )


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return create_encoder("vit_test").eval()


def test_encode_clips_concatenates_segments_per_view(encoder):
    B, S, V, T, H = 2, 2, 3, 4, 32
    video = torch.randint(0, 256, (B, S, V, 3, T, H, H), dtype=torch.uint8)
    out = encode_clips(encoder, video)
    N = (T // 2) * (H // 16) ** 2  # tubelet 2, patch 16
    assert out.shape == (B, V, S * N, encoder.embed_dim)
    with torch.no_grad():
        for v in range(V):
            for s in range(S):
                alone = encoder.forward_features(normalize(video[:, s, v]))  # [B, N, D]
                torch.testing.assert_close(
                    out[:, v, s * N : (s + 1) * N], alone, atol=1e-5, rtol=1e-5
                )
    with pytest.raises(ValueError, match=r"\[B, S, V, C, T, H, W\]"):
        encode_clips(encoder, video[:, 0])


def test_extract_features_from_shards_multiclip(shards, encoder):
    loader = eval_loader(
        shards["val"], frames_per_clip=8, frame_step=2, crop_size=32, num_segments=2, num_views=3,
        batch_size=4, num_workers=0,
    )  # fmt: skip
    params = [p.clone() for p in encoder.parameters()]
    fs = extract_features(encoder, loader)
    N = (8 // 2) * (32 // 16) ** 2
    assert fs.feats.shape == (6, 3, 2 * N, 64) and fs.feats.dtype == torch.float16
    assert fs.labels.tolist() == [0, 1, 2, 0, 1, 2] and len(fs.keys) == 6
    assert not fs.feats.requires_grad and all(p.grad is None for p in encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params, encoder.parameters(), strict=True))
    # the two segments are different time windows (square synthetic videos make the 3 crops equal)
    assert not torch.equal(fs.feats[:, :, :N], fs.feats[:, :, N:])


def test_feature_cache_extracts_once_per_key(shards, tmp_path):
    calls = []

    def extract():
        calls.append(1)
        return FeatureSet(
            torch.randn(4, 1, 3, 8).half(), torch.arange(4), list("abcd"), {"padded": 1}
        )

    proto = {"frames_per_clip": 8, "num_segments": 1}
    key = feature_cache_key("ckpt-sha", shards["val"], proto)
    a = cached_extract(tmp_path, key, extract, log=lambda m: None)
    b = cached_extract(tmp_path, key, extract, log=lambda m: None)
    assert len(calls) == 1 and torch.equal(a.feats, b.feats) and b.keys == list("abcd")
    assert b.skipped == {"padded": 1}
    assert feature_cache_key("ckpt-sha", shards["val"], {**proto, "num_segments": 2}) != key
    assert feature_cache_key("other", shards["val"], proto) != key
    assert feature_cache_key("ckpt-sha", shards["train"], proto) != key


def test_feature_memory_guard_stops_clearly(shards, encoder):
    loader = eval_loader(
        shards["val"], frames_per_clip=8, frame_step=2, crop_size=32, batch_size=2, num_workers=0
    )
    with pytest.raises(ValueError, match=r"MiB each.*max_feature_gb"):
        extract_features(encoder, loader, max_bytes=10_000)


@requires_cuda
def test_cuda_features_are_bf16_and_heads_train_under_autocast():
    from salt.probes.config import load_config
    from salt.probes.features import FeatureSet
    from salt.probes.protocol import probe_features

    enc = create_encoder("vit_test").cuda().eval()
    video = torch.randint(0, 256, (4, 2, 1, 3, 4, 32, 32), dtype=torch.uint8, device="cuda")
    out = encode_clips(enc, video)
    assert out.dtype == torch.bfloat16 and out.shape == (4, 1, 2 * 8, 64)
    feats, labels = torch.randn(24, 1, 16, 64).half(), torch.arange(24) % 3
    cfg = load_config(None, dict(head_kinds=["attentive", "linear"], lrs=[1e-3], wds=[0.01],
                                 probe_depth=2, probe_heads=4, epochs=2, batch_size=8))  # fmt: skip
    res = probe_features(FeatureSet(feats, labels), feats[:6], cfg, 3, device="cuda")
    assert res.val_probs.shape == (6, 3) and torch.isfinite(res.val_probs).all()


def test_multi_level_features_join_blocks_along_tokens_or_channels(encoder):
    video = torch.randint(0, 256, (2, 2, 1, 3, 8, 32, 32), dtype=torch.uint8)  # [B, S, V, ...]
    x = normalize(video[:, :, 0].flatten(0, 1))
    blocks = encoder.forward_intermediates(  # 2 × [B·S, N, D]
        x, [0, 1], norm=True, output_fmt="NLC", intermediates_only=True
    )
    n, d = blocks[0].shape[1:]
    tok = encode_clips(encoder, video, layers=[0, 1], concat="tokens")
    ch = encode_clips(encoder, video, layers=[0, 1], concat="channels")
    assert tok.shape == (2, 1, 2 * 2 * n, d) and ch.shape == (2, 1, 2 * n, 2 * d)
    # segment s of sample b holds [block 0 tokens, block 1 tokens] (V-JEPA 2's order)
    torch.testing.assert_close(tok[1, 0, : 2 * n], torch.cat([blocks[0][2], blocks[1][2]]))
    torch.testing.assert_close(ch[1, 0, n:], torch.cat([blocks[0][3], blocks[1][3]], -1))
    last = encode_clips(encoder, video)
    torch.testing.assert_close(last, encode_clips(encoder, video, layers=[-1]))
