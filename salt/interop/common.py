"""What every ``salt import`` source shares: strict key mapping, metadata, the output file.

A source module (``vjepa2_hf``, ``vjepa2_hub``, ``videomae_hf``) reads its files, derives the
``VideoViT`` arguments and maps its weights by *taking* named tensors from a ``SourceState``.
``SourceState.finish`` then fails with one ``UsageError`` that lists every expected key the
source lacks and every source key nobody took (except groups the format knows and skips on
purpose, e.g. a predictor or a classifier head, which are counted into the metadata). Shapes are
checked against the built ``VideoViT`` with both names in the message. The output is a salt
encoder file (``.safetensors``: weights without prefix, metadata JSON under ``"salt"``), the same
layout ``salt export`` writes, so ``load_encoder``, ``--model.teacher`` and ``salt-probe`` read it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from salt.checkpointing import atomic_path
from salt.errors import UsageError
from salt.models import VideoViT

TOKEN_ORDER = "T×H×W (index = t·H'W' + h·W' + w), input [B, C, T, H, W]"
MAX_LISTED = 12


def listing(keys: Iterable[str], limit: int = MAX_LISTED) -> str:
    """``[a, b, ...] (+N more)`` for an error message."""
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


def strip_prefixes(state: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, Any]:
    """Remove any of ``prefixes`` from the start of every key, repeatedly (``module.backbone.x``
    → ``x``). Two keys that collide after stripping are an error."""
    prefixes = tuple(prefixes)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        while name.startswith(prefixes):
            name = name[len(next(p for p in prefixes if name.startswith(p))) :]
        if name in out:
            raise UsageError(f"keys collide after removing prefixes {list(prefixes)}: {name!r}")
        out[name] = value
    return out


@dataclass
class SourceState:
    """The source's tensors, taken one by one by a format's mapping (strictness bookkeeping).

    Args:
        state: source key → tensor (prefixes already removed).
        source: the source path, for messages.
        skip_groups: key prefixes the format skips on purpose (not part of the encoder).
    """

    state: dict[str, torch.Tensor]
    source: str
    skip_groups: tuple[str, ...] = ()
    taken: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # salt key → source key(s)

    def has(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str) -> torch.Tensor | None:
        """The tensor of ``key`` (recorded as used), or None and recorded as missing."""
        if key not in self.state:
            self.missing.append(key)
            return None
        self.taken.add(key)
        return self.state[key]

    def put(self, out: dict[str, torch.Tensor], salt_key: str, *source_keys: str) -> None:
        """``out[salt_key] = state[source_key]`` (one key) or the row-concatenation of several
        (separate q/k/v projections → salt's fused qkv)."""
        parts = [self.take(k) for k in source_keys]
        self.origin[salt_key] = " + ".join(source_keys)
        if any(p is None for p in parts):
            return
        out[salt_key] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def skipped(self) -> dict[str, int]:
        """Tensors per skipped group (metadata: what the import left out on purpose)."""
        counts = {g: 0 for g in self.skip_groups}
        for key in self.state:
            for g in self.skip_groups:
                if key.startswith(g):
                    counts[g] += 1
        return {g: n for g, n in counts.items() if n}

    def finish(self, encoder: VideoViT, mapped: dict[str, torch.Tensor]) -> None:
        """Strict checks, then load ``mapped`` into ``encoder``.

        Raises:
            UsageError: expected keys absent, unknown keys left over, or shapes that differ.
        """
        unknown = [
            k for k in self.state if k not in self.taken and not k.startswith(self.skip_groups)
        ]
        if self.missing or unknown:
            raise UsageError(
                f"{self.source}: weights do not match the expected layout: missing "
                f"{listing(self.missing)}, unknown {listing(unknown)}"
            )
        own = encoder.state_dict()
        lacking = sorted(set(own) - set(mapped))
        shapes = [
            f"{self.origin.get(k, k)} {tuple(mapped[k].shape)} → {k} needs {tuple(own[k].shape)}"
            for k in sorted(set(own) & set(mapped))
            if mapped[k].shape != own[k].shape
        ]
        if lacking or shapes:
            raise UsageError(
                f"{self.source}: weights do not fit the architecture read from it: shape "
                f"mismatches {listing(shapes, 6)}, not mapped {listing(lacking)}"
            )
        encoder.load_state_dict(mapped, strict=True)


def zeros_like_rows(weight: torch.Tensor) -> torch.Tensor:
    """A zero bias for a ``[out, in]`` weight (sources without a bias)."""
    return torch.zeros(weight.shape[0], dtype=weight.dtype)


def imported_metadata(
    encoder: VideoViT, mean: list[float], std: list[float], source: dict[str, Any]
) -> dict[str, Any]:
    """The ``salt`` metadata of an imported encoder (docs/architecture.md keys + ``source``)."""
    return {
        "stage": "imported",
        "encoder_config": dict(encoder.config),
        "encoder_prefix": "",
        "rope_convention": encoder.rope_convention,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "step": None,
        "train_loss": None,
        "teacher": None,
        "mlflow_run_id": None,
        "source": source,
    }


def hf_folder_source(
    fmt: str,
    folder: Path,
    cfg: dict[str, Any],
    files: Iterable[Path],
    src: SourceState,
    mean_std_from: str,
    default_architecture: str,
    conventions: dict[str, Any],
) -> dict[str, Any]:
    """The ``source`` metadata of a transformers folder import: what was read and how to read it."""
    from salt.encoder_io import file_sha256

    return {
        "format": fmt,
        "path": str(folder.resolve()),
        "architecture": (cfg.get("architectures") or [default_architecture])[0],
        "model_type": cfg.get("model_type"),
        "transformers_version": cfg.get("transformers_version"),
        "weights_sha256": {f.name: file_sha256(f) for f in files},
        "config": cfg,
        "skipped": src.skipped(),
        "mean_std_from": mean_std_from,
        "conventions": conventions,
    }


def write_encoder_file(out: str | os.PathLike, encoder: VideoViT, meta: dict[str, Any]) -> Path:
    """Write ``encoder`` + ``meta`` as a salt encoder ``.safetensors``, atomically."""
    from safetensors.torch import save_file

    out = Path(out)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={"salt": json.dumps(meta)})
    return out


def require(cond: bool, message: str) -> None:
    """``UsageError(message)`` unless ``cond``."""
    if not cond:
        raise UsageError(message)


def square(value: Any, name: str, source: str) -> int:
    """An int from ``16`` or ``[16, 16]``; a non-square value is an error."""
    if isinstance(value, int):
        return value
    values = list(value)
    require(len(set(values)) == 1, f"{source}: {name}={values} is not square; salt's ViT needs one")
    return int(values[0])
