"""Reading a ``transformers`` model folder without ``transformers``: config, weights, processor.

A folder that ``save_pretrained`` wrote (or a Hub snapshot) holds ``config.json`` and the weights
as ``model.safetensors``, a sharded ``model.safetensors.index.json`` + shards, or the older
``pytorch_model.bin`` (+ index). The processor config (``video_preprocessor_config.json`` or
``preprocessor_config.json``) carries the normalisation the model was trained with. Nothing here
imports ``transformers``: an import reads files, so it runs where only salt is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from salt.errors import UsageError

PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a model folder as a dict."""
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: cannot read the model config: {e}") from e


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder, in the order their index names them."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            files = [folder / n for n in names]
            lost = [f.name for f in files if not f.is_file()]
            if lost:
                raise UsageError(f"{index}: shards listed but absent: {lost}")
            return files
        if (folder / single).is_file():
            return [folder / single]
    raise UsageError(
        f"{folder}: no weights (model.safetensors, a sharded index, or pytorch_model.bin)"
    )


def read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the weight files (safetensors, or torch pickles read weights-only)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            part = load_file(str(f))
        else:
            try:
                part = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise UsageError(f"{f}: cannot read the weights: {e}") from e
        state.update(part)
    return state


def processor_mean_std(folder: Path) -> tuple[list[float], list[float], str] | None:
    """``(mean, std, file name)`` from the folder's processor config, or None if it has none."""
    for name in PROCESSOR_FILES:
        path = folder / name
        if path.is_file():
            cfg = json.loads(path.read_text())
            if "image_mean" in cfg and "image_std" in cfg:
                mean, std = cfg["image_mean"], cfg["image_std"]
                mean = [mean] * 3 if isinstance(mean, (int, float)) else list(mean)
                std = [std] * 3 if isinstance(std, (int, float)) else list(std)
                return [float(m) for m in mean], [float(s) for s in std], name
    return None
