"""Load and export SALT encoders: one ``load_encoder(path)`` for every consumer.

Four things carry an encoder:
- a Lightning checkpoint of either stage (``*.ckpt``): weights under ``ckpt["state_dict"]`` with the
  prefix ``ckpt["salt"]["encoder_prefix"]`` (``"encoder."``), metadata in ``ckpt["salt"]``;
- an exported ``*.safetensors`` (``salt export``): encoder weights without prefix, the same
  metadata dict as JSON under the safetensors metadata key ``"salt"``;
- an imported ``*.safetensors`` (``salt import``, ``salt.interop``): the same layout, with
  ``stage="imported"`` and a ``source`` entry naming the original model and its conventions;
- a Hugging Face folder (``salt export --format hf``, ``VideoViT.save_pretrained``): its
  ``model.safetensors`` is an exported file as above (``models.hub``).

Metadata (docs/architecture.md): ``stage``, ``encoder_config`` (every ``VideoViT`` kwarg),
``encoder_prefix``, ``rope_convention``, ``mean``, ``std``, ``step``, ``train_loss``, ``teacher``,
``mlflow_run_id`` (+ ``source`` for imports; + ``which`` once loaded or exported: ``"target"`` or
``"online"``). A checkpoint of the V-JEPA EMA baseline (``salt.ema.EMAModule``) holds two
encoders: the trained (online) one under the prefix and the EMA *target* encoder under
``ckpt["salt_ema_teacher"]`` (``EMA_STATE_KEY``, no prefix). ``which="auto"`` (the default
everywhere) reads the target encoder of such a checkpoint, as V-JEPA evaluates it, and the only
encoder of any other; ``"online"`` / ``"target"`` ask for one explicitly. Loading is strict —
unknown architecture keys, a RoPE convention other than the config's pairing, missing, unexpected
or mis-shaped weights are errors that name the file and the problem; nothing is loaded with
``strict=False`` (a pitfall of the peers). Checkpoints are read with ``weights_only=True`` and
memory-mapped, so only the encoder's bytes are touched. ``VideoViT`` arguments added later
(``models.vit.ADDED_DEFAULTS``) may be absent from older metadata and then mean what the encoder
computed before they existed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from salt.checkpointing import (
    atomic_path,
    consolidate_checkpoint,
    is_sharded_checkpoint,
    replace_dir,
)
from salt.errors import UsageError
from salt.models import VideoViT
from salt.models.hub import WEIGHTS_NAME, load_state_strict
from salt.models.vit import RUNTIME_KEYS

ENCODER_PREFIX = "encoder."
# Where an EMA-baseline checkpoint keeps its target encoder's state dict (no prefix).
EMA_STATE_KEY = "salt_ema_teacher"
WHICH = ("auto", "target", "online")
META_KEYS = ("stage", "encoder_config", "rope_convention", "mean", "std")
EXPORT_FORMATS = ("safetensors", "hf")
__all__ = [
    "EMA_STATE_KEY",
    "EXPORT_FORMATS",
    "WHICH",
    "RUNTIME_KEYS",
    "build_encoder",
    "export_checkpoint",
    "export_encoder",
    "export_hf",
    "export_sharded_encoder",
    "file_sha256",
    "load_encoder",
    "load_state_strict",
    "read_encoder_state",
]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (the teacher's identity in tags and checkpoint metadata)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def _check_which(which: str) -> None:
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")


def read_encoder_state(
    path: str | os.PathLike, which: str = "auto"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Encoder weights (no prefix) and the ``salt`` metadata of a checkpoint or exported file.

    Args:
        path: a ``salt fit`` checkpoint or a ``salt export`` file.
        which: ``"auto"``, ``"target"`` (the EMA target encoder) or ``"online"`` (the trained
            encoder); see the module docstring. ``meta["which"]`` says what was read.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file carries no salt metadata, is incomplete, or lacks the asked encoder.
    """
    _check_which(which)
    path = Path(path)
    if path.is_dir() and (path / WEIGHTS_NAME).is_file():  # a Hugging Face export folder
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"encoder file not found: {path}")
    if _is_safetensors(path):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get("salt")
            if raw is None:
                raise ValueError(
                    f"{path}: safetensors file has no 'salt' metadata (not exported by salt)"
                )
            meta = json.loads(raw)
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
        held = meta.get("which", "online")
        if which != "auto" and which != held:
            raise ValueError(
                f"{path}: this export holds the {held} encoder, not the {which} one; export it "
                f"again from the checkpoint with `salt export --which {which}`"
            )
        meta["which"] = held
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # a corrupt file, or not a torch checkpoint at all
            raise ValueError(f"{path}: cannot read as a Lightning checkpoint: {e}") from e
        if not isinstance(ckpt, dict) or "salt" not in ckpt or "state_dict" not in ckpt:
            raise ValueError(
                f"{path}: not a salt checkpoint (needs 'state_dict' and 'salt' metadata; "
                "train it with `salt fit` or pass an exported .safetensors)"
            )
        meta = dict(ckpt["salt"])
        has_target = EMA_STATE_KEY in ckpt
        if which == "target" and not has_target:
            raise ValueError(
                f"{path}: --which target: this {meta.get('stage', '?')} checkpoint has no EMA "
                "target encoder (only EMA-baseline checkpoints do); use --which auto or online"
            )
        if has_target and which != "online":
            state, meta["which"] = dict(ckpt[EMA_STATE_KEY]), "target"
        else:
            prefix = meta.get("encoder_prefix", ENCODER_PREFIX)
            state = {
                k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)
            }
            meta["which"] = "online"
            if not state:
                raise ValueError(f"{path}: no weights under prefix {prefix!r} in state_dict")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: salt metadata lacks {missing}")
    return state, meta


def build_encoder(meta: dict[str, Any], source: str = "<metadata>", **runtime: Any) -> VideoViT:
    """An untrained ``VideoViT`` of the architecture in ``meta["encoder_config"]``.

    Args:
        meta: salt metadata (see module docstring).
        source: file name for error messages.
        runtime: overrides of run-time-only options (``attn_backend``, ``act_checkpoint``).
    """
    try:
        return VideoViT.from_config(meta["encoder_config"], meta["rope_convention"], **runtime)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def load_encoder(
    path: str | os.PathLike, which: str = "auto", **runtime: Any
) -> tuple[VideoViT, dict[str, Any]]:
    """Rebuild the encoder of a salt checkpoint (any stage) or exported ``.safetensors``.

    Args:
        path: ``*.ckpt`` written by ``salt fit``, ``*.safetensors`` written by ``salt export`` /
            ``salt import``, or a folder written by ``salt export --format hf``.
        which: ``"auto"`` (an EMA-baseline checkpoint's target encoder, else its only encoder),
            ``"target"`` or ``"online"``.
        runtime: ``attn_backend`` / ``act_checkpoint`` overrides (weights are unaffected).

    Returns:
        ``(encoder, meta)``: the encoder in eval mode on the CPU, and the salt metadata dict
        (``meta["which"]``: ``"target"`` or ``"online"``).
    """
    state, meta = read_encoder_state(path, which)
    encoder = build_encoder(meta, str(path), **runtime)
    load_state_strict(encoder, state, str(path))
    return encoder.eval(), meta


def export_encoder(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    which: str = "auto",
    source: str | os.PathLike | None = None,
) -> Path:
    """Write the encoder of a Lightning checkpoint as ``out`` (``.safetensors``), atomically.

    The file holds the encoder weights without prefix and the checkpoint's salt metadata (plus
    ``source_checkpoint`` and ``which``: the EMA ``"target"`` or the ``"online"`` encoder, chosen
    as in ``load_encoder``) as JSON under metadata key ``"salt"``. The weights are checked against
    the architecture in the metadata before anything is written. ``source`` is what
    ``source_checkpoint`` names when ``ckpt`` is a consolidated copy (default: ``ckpt``).
    """
    from safetensors.torch import save_file

    ckpt, out = Path(ckpt), Path(out)
    if _is_safetensors(ckpt):
        raise ValueError(f"{ckpt} is already an exported encoder")
    if not _is_safetensors(out):
        raise ValueError(f"export target must end in .safetensors, got {out}")
    state, meta = read_encoder_state(ckpt, which)
    # Check the weights against the architecture before writing anything.
    load_state_strict(build_encoder(meta, str(ckpt)), state, str(ckpt))
    meta = {**meta, "source_checkpoint": str(Path(source or ckpt).resolve())}
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={"salt": json.dumps(meta)})
    return out


def export_hf(
    ckpt: str | os.PathLike,
    out_dir: str | os.PathLike,
    which: str = "auto",
    source: str | os.PathLike | None = None,
) -> Path:
    """Write the encoder of a checkpoint (or exported / imported file) as a Hugging Face folder.

    ``out_dir`` gets ``config.json``, ``model.safetensors`` and a model card ``README.md``
    (architecture, stage, teacher, training steps, the probe results in the checkpoint's MLflow
    store, how to load: ``salt.interop.model_card``). The folder is written beside ``out_dir``
    and renamed into place, so an interrupted export leaves no half-written folder.

    ``source`` is the checkpoint that ``ckpt`` is a consolidated copy of (default: ``ckpt``).

    Raises:
        UsageError: ``out_dir`` exists and is not empty, or ``ckpt`` is not an encoder file.
    """
    from salt.interop.model_card import model_card

    ckpt, out_dir = Path(ckpt), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"export folder {out_dir} exists and is not empty; pick a new folder")
    try:
        encoder, meta = load_encoder(ckpt, which)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from e
    origin = Path(source or ckpt)
    if source is not None or (not _is_safetensors(ckpt) and not ckpt.is_dir()):
        meta = {**meta, "source_checkpoint": str(origin.resolve())}
    card = model_card(encoder, meta, origin)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        encoder.save_pretrained(tmp, metadata=meta, model_card=card)
        replace_dir(tmp, out_dir)  # an existing out_dir is empty (checked above)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def export_sharded_encoder(sharded_dir: str | Path, out: str | Path) -> Path:
    """Sharded checkpoint folder → consolidated `.ckpt` beside `out` → exported encoder `out`."""
    out = Path(out)
    full = out.with_name(out.stem + "-consolidated.ckpt")
    consolidate_checkpoint(sharded_dir, full)
    export_encoder(full, out)
    return out


def export_checkpoint(
    src: str | os.PathLike, out: str | os.PathLike, format: str = "safetensors", which: str = "auto"
) -> Path:
    """``salt export``: the encoder of a checkpoint file or of a sharded FSDP checkpoint folder.

    A folder is consolidated into a hidden scratch folder beside ``out`` (not ``/tmp``: a ViT-g
    checkpoint is several GB), exported, and the scratch removed; the export records the folder
    as its ``source_checkpoint``.

    Args:
        src: a ``salt fit`` checkpoint file, a sharded checkpoint folder (``step=N.ckpt/``), or
            (``format="hf"``) an exported / imported ``.safetensors``.
        out: ``OUT.safetensors``, or a folder for ``format="hf"``.
        format: ``"safetensors"`` (``export_encoder``) or ``"hf"``
            (``export_hf``).
        which: ``"auto"``, ``"target"`` or ``"online"`` (see the module docstring).
    """
    exporter = export_hf if format == "hf" else export_encoder
    src, out = Path(src), Path(out)
    if not is_sharded_checkpoint(src):
        return exporter(src, out, which=which)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.consolidate-", dir=out.parent) as tmp:
        full = consolidate_checkpoint(src, Path(tmp) / "consolidated.ckpt")
        return exporter(full, out, which=which, source=src)
