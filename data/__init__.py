"""salt.data: video shards, decoding, clip sampling, transforms and the streaming DataModule.

Public API (the contract in docs/architecture.md):
``VideoDataModule``, ``eval_loader``, ``transforms.normalize``, ``IMAGENET_MEAN``/``IMAGENET_STD``,
``synthetic.write_synthetic_shards``; the ``salt-shards`` CLI lives in ``shards_cli``.
Every name is imported on first use (webdataset imports torch, the DataModule Lightning), so
``salt-shards --help`` and tools that only read shard metadata stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from salt.data.datamodule import VideoDataModule, eval_loader
    from salt.data.samples import expand_shards
    from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

_HOME = {
    "VideoDataModule": "salt.data.datamodule",
    "eval_loader": "salt.data.datamodule",
    "expand_shards": "salt.data.samples",
    "IMAGENET_MEAN": "salt.data.transforms",
    "IMAGENET_STD": "salt.data.transforms",
    "normalize": "salt.data.transforms",
}

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VideoDataModule",
    "eval_loader",
    "expand_shards",
    "normalize",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'salt.data' has no attribute {name!r}")
