"""salt.data: video shards, decoding, clip sampling, transforms and the streaming DataModule.

Public API (the contract in docs/architecture.md):
``VideoDataModule``, ``eval_loader``, ``transforms.normalize``, ``IMAGENET_MEAN``/``IMAGENET_STD``,
``synthetic.write_synthetic_shards``; the ``salt-shards`` CLI lives in ``shards_cli``.
``VideoDataModule``/``eval_loader`` are imported on first use, so tools that only write or read
shards (``salt-shards``) do not pay for importing Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from salt.data.samples import expand_shards
from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

if TYPE_CHECKING:
    from salt.data.datamodule import VideoDataModule, eval_loader

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VideoDataModule",
    "eval_loader",
    "expand_shards",
    "normalize",
]


def __getattr__(name: str) -> Any:
    if name in ("VideoDataModule", "eval_loader"):
        from salt.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'salt.data' has no attribute {name!r}")
