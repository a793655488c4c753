"""Frozen feature extraction for probes: multi-clip × multi-view tokens, computed once.

Each of the S temporal segments of a video is encoded separately and the tokens are concatenated
along the token axis (one probe pass sees all S·N tokens); each of the V spatial views is a
separate probe pass (softmax averaged in grid.py). So a batch `uint8 [B, S, V, C, T, H, W]`
becomes features `[B, V, S·N, D]`. Optionally several blocks' outputs are joined (V-JEPA 2's
multi-level features for ViT-g: along the tokens). Online mode (online.py) uses `encode_clips`
every epoch; cached mode keeps the features of `extract_features` (below) in host memory.

The encoder runs in eval mode without gradients, under bf16 autocast on CUDA and in fp32 on CPU.
Features of every sample are kept once (fp16, on CPU) and shared by every probe head; with a cache
directory they are also saved (torch.save) under a key made of the encoder's identity, the data
and the clip protocol, so one extraction serves many probe runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from salt.errors import UsageError
from salt.progress import ProgressLine, is_interactive


@dataclass
class FeatureSet:
    """Frozen features of one split."""

    feats: torch.Tensor  # [M, V, S·N, D] fp16, CPU
    labels: torch.Tensor  # int64 [M]
    keys: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # data pipeline counts (skips, pads)

    def __len__(self) -> int:
        return len(self.labels)

    def save(self, path: str | Path) -> None:
        """Atomic torch.save (write to a temporary name, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save(
            {
                "feats": self.feats,
                "labels": self.labels,
                "keys": self.keys,
                "skipped": self.skipped,
            },
            tmp,
        )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureSet:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(d["feats"], d["labels"], list(d["keys"]), dict(d.get("skipped", {})))


def encode_tokens(
    encoder: nn.Module,
    clips: torch.Tensor,
    layers: Sequence[int] | None = None,
    concat: str = "tokens",
) -> torch.Tensor:
    """Frozen tokens of float clips [B, C, T, H, W] -> [B, N, D] (one layer) or the given
    blocks' final-normed outputs joined along the tokens ([B, k·N, D], V-JEPA 2's multi-level
    features) or the channels ([B, N, k·D])."""
    if not layers:
        return encoder.forward_features(clips)  # [B, N, D]
    outs = encoder.forward_intermediates(  # k × [B, N, D]
        clips, list(layers), norm=True, output_fmt="NLC", intermediates_only=True
    )
    return torch.cat(outs, dim=1 if concat == "tokens" else -1)


def compile_encoder(encoder: nn.Module) -> nn.Module:
    """Compile the entry points `encode_tokens` calls (`torch.compile(module)` would compile only
    `forward`, which the probe does not use); the module is changed in place and returned."""
    encoder.forward_features = torch.compile(encoder.forward_features)
    encoder.forward_intermediates = torch.compile(encoder.forward_intermediates)
    return encoder


def feature_dim(encoder: nn.Module, layers: Sequence[int] | None, concat: str) -> int:
    """Width of the tokens `encode_tokens` returns."""
    k = len(layers) if layers and concat == "channels" else 1
    return int(encoder.embed_dim) * k


@torch.no_grad()
def encode_clips(
    encoder: nn.Module,
    video: torch.Tensor,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    layers: Sequence[int] | None = None,
    concat: str = "tokens",
    chunk: int | None = None,
) -> torch.Tensor:
    """Encode every segment of every view; concatenate the segments' tokens per view.

    Args:
        encoder: a `VideoViT` (its `forward_features`), already on the video's device and in eval.
        video: uint8 [B, S, V, C, T, H, W].
        mean, std: the encoder's input normalisation (from its checkpoint metadata).
        layers, concat: multi-layer features (see `encode_tokens`); None = the last block.
        chunk: clips per encoder call (None = all B·S of a view at once), to bound memory.

    Returns:
        [B, V, S·N, D] features (bf16 on CUDA, fp32 on CPU).
    """
    if video.dim() != 7:
        raise ValueError(
            f"expected uint8 video [B, S, V, C, T, H, W], got shape {tuple(video.shape)}"
        )
    B, S, V = video.shape[:3]
    views = []
    for v in range(V):
        clips = video[:, :, v].flatten(0, 1)  # [B·S, C, T, H, W] uint8
        step = chunk or len(clips)
        tokens = []
        for i in range(0, len(clips), step):
            x = normalize(clips[i : i + step], mean, std)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=video.device.type == "cuda"):
                tokens.append(encode_tokens(encoder, x, layers, concat))  # [b·S, N, D]
        tokens = torch.cat(tokens)
        # [B, S·N, D]: segment s holds tokens s·N … (s+1)·N − 1, segments in time order
        views.append(tokens.unflatten(0, (B, S)).flatten(1, 2))
    return torch.stack(views, dim=1)  # [B, V, S·N, D]


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    loader: Iterable[dict[str, Any]],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str = "cpu",
    desc: str = "features",
    max_bytes: float | None = None,
    layers: Sequence[int] | None = None,
    concat: str = "tokens",
    log: Callable[[str], None] | None = None,
) -> FeatureSet:
    """Run the frozen encoder over a loader of `{"video": uint8 [B,S,V,C,T,H,W], "label", "key"}`.

    The encoder is put in eval mode and its parameters are left untouched (no grad).

    Args:
        max_bytes: stop with a clear error once the kept features exceed this size (all features
            are held in host memory; a ViT-L SSv2 protocol needs ≈19 MB per video).

        layers, concat: multi-layer features (see `encode_tokens`).
        log: where plain progress lines go when stdout is not a terminal (a bar is drawn when it
            is); None = no lines.

    Returns:
        a `FeatureSet` with fp16 CPU features [M, V, S·N, D], in loader order.
    """
    device = torch.device(device)
    was_training = encoder.training
    encoder.to(device).eval()
    feats, labels, keys = [], [], []
    counts: Counter = Counter()  # the pipeline's per-batch counters (skipped, padded, ...)
    total = 0
    plain = log is not None and not is_interactive()
    prog = ProgressLine(desc, None, unit="batch", every=None, every_s=60.0)
    for i, batch in enumerate(
        tqdm(loader, desc=desc, disable=None if not plain else True, leave=False)
    ):
        if plain and prog.due(i + 1):
            log(prog.update(i + 1, videos=sum(len(f) for f in feats)))
        video = batch["video"].to(device, non_blocking=True)
        f = encode_clips(encoder, video, mean=mean, std=std, layers=layers, concat=concat)
        feats.append(f.to("cpu", torch.float16))
        total += feats[-1].numel() * feats[-1].element_size()
        if max_bytes is not None and total > max_bytes:
            per = feats[-1][0].numel() * feats[-1].element_size()
            raise UsageError(
                f"{desc}: frozen features passed {max_bytes / 2**30:.1f} GiB after "
                f"{sum(len(f) for f in feats)} videos ({per / 2**20:.1f} MiB each, "
                f"[V, S·N, D] = {list(feats[-1].shape[1:])}); every feature is kept in memory, so "
                "use --mode online, fewer segments/views/videos, or raise max_feature_gb"
            )
        labels.append(torch.as_tensor(batch["label"], dtype=torch.int64))
        keys += list(batch.get("key", [""] * len(video)))
        counts.update(batch.get("data_counts", {}))
    encoder.train(was_training)
    if not feats:
        raise UsageError(f"{desc}: the split yielded no readable labelled clip")
    return FeatureSet(
        torch.cat(feats), torch.cat(labels), keys, {k: int(v) for k, v in counts.items()}
    )


def feature_cache_key(
    encoder_id: str, shards: str | Sequence[str], protocol: dict[str, Any]
) -> str:
    """Key of a cached feature file: encoder identity + shard files (path, size, mtime) + protocol.

    Args:
        encoder_id: e.g. the checkpoint's sha256, or "random:<config>:<seed>" for the baseline.
        shards: the shard spec(s) given to the loader.
        protocol: the clip settings that shape the features (`ProbeConfig.protocol`).
    """
    from salt.data import expand_shards

    files = []
    for p in expand_shards(shards):
        st = os.stat(p) if os.path.exists(p) else None
        files.append(
            [os.path.abspath(p), st.st_size if st else None, st.st_mtime_ns if st else None]
        )
    blob = json.dumps({"encoder": encoder_id, "files": files, "protocol": protocol}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached_extract(
    cache_dir: str | Path | None, key: str, extract: Any, log: Any = print
) -> FeatureSet:
    """`extract()` once per key: load `<cache_dir>/<key>.pt` if present, else compute and save."""
    if cache_dir is None:
        return extract()
    path = Path(cache_dir) / f"{key}.pt"
    if path.exists():
        log(f"feature cache hit: {path}")
        return FeatureSet.load(path)
    fs = extract()
    fs.save(path)
    log(f"feature cache written: {path}")
    return fs
