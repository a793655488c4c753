"""salt.data: video shards and CSV video lists, decoding, clip sampling, transforms, loaders.

Public API (the contract in docs/architecture.md):
``VideoDataModule`` (``salt fit``), ``eval_loader`` (every sample once), ``probe_train_loader`` +
``TrainAugment`` (the online probe's training stream), ``resolve_source`` / ``count_samples`` /
``in_split`` (specs, cheap counts, the held-out slice), ``transforms.normalize``,
``IMAGENET_MEAN``/``IMAGENET_STD``, ``synthetic.write_synthetic_shards``; the ``salt-shards`` CLI
lives in ``shards_cli``. Every name is imported on first use (webdataset imports torch, the
DataModule Lightning), so ``salt-shards --help`` and tools that only read shard metadata stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .augment import TrainAugment
    from .datamodule import VideoDataModule, eval_loader
    from .probe_loader import probe_train_loader
    from .samples import expand_shards
    from .sources import count_samples, in_split, resolve_source
    from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

_HOME = {
    "VideoDataModule": "salt.data.datamodule",
    "eval_loader": "salt.data.datamodule",
    "probe_train_loader": "salt.data.probe_loader",
    "TrainAugment": "salt.data.augment",
    "expand_shards": "salt.data.samples",
    "count_samples": "salt.data.sources",
    "in_split": "salt.data.sources",
    "resolve_source": "salt.data.sources",
    "IMAGENET_MEAN": "salt.data.transforms",
    "IMAGENET_STD": "salt.data.transforms",
    "normalize": "salt.data.transforms",
}

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TrainAugment",
    "VideoDataModule",
    "count_samples",
    "eval_loader",
    "expand_shards",
    "in_split",
    "normalize",
    "probe_train_loader",
    "resolve_source",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'salt.data' has no attribute {name!r}")
