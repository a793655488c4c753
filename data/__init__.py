"""salt.data: video shards, decoding, clip sampling, transforms and the streaming DataModule.

Public API (the contract in docs/architecture.md):
``VideoDataModule``, ``eval_loader``, ``transforms.normalize``, ``IMAGENET_MEAN``/``IMAGENET_STD``,
``synthetic.write_synthetic_shards``; the ``salt-shards`` CLI lives in ``shards_cli``.
"""

from salt.data.datamodule import VideoDataModule, eval_loader, expand_shards
from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VideoDataModule",
    "eval_loader",
    "expand_shards",
    "normalize",
]
