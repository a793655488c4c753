"""Checkpoint files: atomic writes, trusted-format reads, consolidation and export.

- Writes: every file goes to a temporary name in the *same* directory, is flushed and fsync'ed,
  and only then ``os.replace``d over the target (atomic on POSIX filesystems), after which the
  directory entry is fsync'ed too. Lightning's own ``TorchCheckpointIO`` truncates the target in
  place, so a preemption mid-write leaves a corrupt ``last.ckpt``; ``AtomicCheckpointIO`` is the
  Trainer plugin that fixes that. ``atomic_path`` is the same guarantee for other writers
  (``salt export``'s safetensors).
- Reads: salt never unpickles a file it did not just write with ``weights_only=False``.
  ``load_checkpoint_file`` (and ``AtomicCheckpointIO.load_checkpoint``, which ``--ckpt_path``
  resumes go through) use ``weights_only=True`` with ``SAFE_GLOBALS`` allowed. torch ≥ 2.10 is
  required: ``weights_only=True`` could be bypassed to run code before 2.6 (CVE-2025-32434) and
  could corrupt memory before 2.10 (CVE-2026-24747).
- Folders (a sharded FSDP checkpoint, a Hugging Face export) are written under a hidden name
  and put in place by ``replace_dir``.
- Sharded FSDP checkpoint folders: ``consolidate_checkpoint`` turns one into a single Lightning
  file (``salt.encoder_io.export_checkpoint``, behind ``salt export``, exports the encoder of a
  file or of a folder).
- Policy (``SaltCheckpoint``, ``salt.checkpoint_policy``): periodic ``step=NNNNNNN.ckpt`` every N
  optimizer steps and/or every M minutes, the newest K kept, ``last.ckpt`` a link to the newest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

# Non-tensor, non-builtin types salt's own checkpoints may hold, allowed for weights_only loads.
# Today every kind salt writes (stage 1/2 `.ckpt`, sharded `meta.pt`, requeue checkpoints) holds
# only tensors and plain containers (tests/test_checkpoint_policy.py checks with
# torch.serialization.get_unsafe_globals_in_checkpoint); a salt type that must be pickled into a
# checkpoint is added here, never by switching a load to weights_only=False.
SAFE_GLOBALS: list[Any] = []


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


def replace_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put the finished folder ``tmp`` (beside ``path``) in place of ``path``.

    An existing ``path`` is first renamed to a hidden name, so at every moment ``path`` is either
    the old complete folder or the new one (never a mix), then deleted; the directory entry is
    fsync'ed. (``os.replace`` cannot put a folder over a non-empty one in one step.)
    """
    tmp, path = Path(tmp), Path(path)
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists() or path.is_symlink():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` with the ``atomic_path`` guarantee."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_checkpoint_file(path: str | os.PathLike, **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with ``SAFE_GLOBALS`` allowed."""
    kwargs.setdefault("map_location", "cpu")
    kwargs["weights_only"] = True
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(path, **kwargs)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Trainer plugin (``Trainer(plugins=[AtomicCheckpointIO()])``): local saves are atomic,
    loads are ``weights_only=True`` unless the caller explicitly asks otherwise.

    Remote URLs (``s3://`` etc.) fall back to Lightning's writer, which has no rename to rely on.
    ``redirect`` (set by ``salt.resume.ResumeAgreement``) maps a rank's own choice of checkpoint to
    the one rank 0 chose, so every rank restores the same step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.redirect: dict[str, str] = {}

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        path = self.redirect.get(str(path), path)
        if weights_only is False:  # an explicit request by the caller (never made by salt)
            return super().load_checkpoint(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)

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


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sharded (FSDP, torch.distributed.checkpoint) checkpoint folder."""
    return Path(path).is_dir() and (Path(path) / "meta.pt").is_file()


def consolidate_checkpoint(sharded_dir: str | Path, out: str | Path) -> Path:
    """Sharded FSDP checkpoint folder → one Lightning checkpoint file (weights + metadata).

    Loads only the model weights (not the optimizer shards) on one process, without a process
    group. The result loads like any single-file checkpoint (`salt.encoder_io.load_encoder`,
    `export_encoder`); it cannot resume training (no optimizer state).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    sharded_dir, out = Path(sharded_dir), Path(out)
    meta_file = sharded_dir / "meta.pt"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{sharded_dir} is not a sharded checkpoint (no meta.pt)")
    reader = dcp.FileSystemReader(str(sharded_dir))
    prefix = "state_dict."
    weights: dict[str, torch.Tensor] = {}
    skipped = []
    for key, md in reader.read_metadata().state_dict_metadata.items():
        if not key.startswith(prefix):
            continue  # optimizer shards
        if not isinstance(md, TensorStorageMetadata):
            skipped.append(key)
            continue
        weights[key[len(prefix) :]] = torch.empty(md.size, dtype=md.properties.dtype)
    if skipped:
        raise ValueError(f"non-tensor entries in the model state of {sharded_dir}: {skipped}")
    if not weights:
        raise ValueError(f"{sharded_dir} holds no model weights under '{prefix}'")
    state = {"state_dict": weights}
    dcp.load(state, storage_reader=reader, no_dist=True)
    ckpt = load_checkpoint_file(meta_file)
    ckpt["state_dict"] = state["state_dict"]
    atomic_torch_save(ckpt, out)
    return out
