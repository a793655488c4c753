"""Atomic checkpoint writes: a kill or error during a save never damages the previous checkpoint.

Every file goes to a temporary name in the *same* directory, is flushed and fsync'ed, and only then
``os.replace``d over the target (atomic on POSIX filesystems), after which the directory entry is
fsync'ed too. Lightning's own ``TorchCheckpointIO`` truncates the target in place, so a preemption
mid-write leaves a corrupt ``last.ckpt``; ``AtomicCheckpointIO`` is the Trainer plugin that fixes
that. ``atomic_path`` is the same guarantee for other writers (``salt export``'s safetensors).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: fsync the directory entry (a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path`` is
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # writers such as safetensors create files as 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` with the ``atomic_path`` guarantee."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Trainer plugin (``Trainer(plugins=[AtomicCheckpointIO()])``): local saves are atomic.

    Remote URLs (``s3://`` etc.) fall back to Lightning's writer, which has no rename to rely on.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} does not take storage_options, got {storage_options!r}"
            )
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)
