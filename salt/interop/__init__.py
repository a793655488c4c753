"""salt.interop: bring other projects' video encoders into salt (``salt import``).

``import_encoder(src, out)`` reads one of three sources and writes a salt encoder file (weights +
metadata naming the source, its architecture and conventions) that loads everywhere a
``salt export`` file does (``load_encoder``, ``--model.teacher``, ``salt-probe --ckpt``):

- a ``transformers`` V-JEPA 2 folder (``config.json`` with ``model_type: vjepa2``): ``vjepa2_hf``;
- a V-JEPA 2 torch-hub checkpoint ``.pt`` (``encoder`` / ``target_encoder``): ``vjepa2_hub``;
- a ``transformers`` VideoMAE folder (``model_type: videomae``): ``videomae_hf``.

Each runs in salt's one ``VideoViT`` through its options (``rope_pairing="tiled"``,
``pos_embed="sincos_1d"``, ``norm_eps``, ``final_norm``). ``transformers`` is not needed to import
(the files are read directly); the tests use it to build the sources and check the features.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from salt.errors import UsageError
from salt.models import VideoViT

from .common import write_encoder_file

FORMATS = ("transformers-vjepa2", "vjepa2-torch-hub", "transformers-videomae")
HF_MODEL_TYPES = {"vjepa2": "transformers-vjepa2", "videomae": "transformers-videomae"}


def detect_format(src: str | os.PathLike) -> str:
    """Which of ``FORMATS`` ``src`` is.

    Raises:
        UsageError: ``src`` is missing or none of them, with what was found.
    """
    from .hf_folder import read_config
    from .vjepa2_hub import is_vjepa2_checkpoint, load_checkpoint

    path = Path(src)
    if not path.exists():
        raise UsageError(f"import source not found: {path}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(
                f"{path}: a folder without config.json: not a transformers model folder"
            )
        model_type = read_config(path).get("model_type")
        if model_type not in HF_MODEL_TYPES:
            raise UsageError(
                f"{path}: transformers model_type {model_type!r} is not one salt imports "
                f"({', '.join(sorted(HF_MODEL_TYPES))})"
            )
        return HF_MODEL_TYPES[model_type]
    if path.suffix == ".safetensors":
        raise UsageError(
            f"{path}: a bare .safetensors file; pass the transformers model folder that holds "
            "it with its config.json (a salt encoder file needs no import)"
        )
    ckpt = load_checkpoint(path)
    if not is_vjepa2_checkpoint(ckpt):
        found = sorted(str(k) for k in ckpt)[:12]
        raise UsageError(
            f"{path}: not a V-JEPA 2 checkpoint (no 'target_encoder' / 'encoder' state dict; "
            f"top-level keys {found})"
        )
    return "vjepa2-torch-hub"


def import_encoder(
    src: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    key: str = "target_encoder",
    num_heads: int | None = None,
    ignore_pos_embed: bool = False,
) -> tuple[VideoViT, dict[str, Any]]:
    """Import ``src`` as a salt encoder; write it to ``out`` (``.safetensors``) if given.

    Args:
        src: a transformers V-JEPA 2 / VideoMAE folder or a V-JEPA 2 torch-hub ``.pt``.
        out: output ``.safetensors`` (written atomically), or None to only build the encoder.
        key: the ``.pt``'s state dict (``target_encoder`` or ``encoder``).
        num_heads: heads of a ``.pt`` whose width is none of V-JEPA 2's sizes.
        ignore_pos_embed: drop a ``pos_embed`` table from a ``.pt`` known to run RoPE.

    Returns:
        ``(encoder, meta)``: the encoder (eval, CPU) and the metadata written with it.

    Raises:
        UsageError: unknown format, missing or unknown keys, shapes that do not fit.
    """
    path = Path(src)
    if out is not None and Path(out).suffix != ".safetensors":
        raise UsageError(f"import output must end in .safetensors, got {out}")
    fmt = detect_format(path)
    if fmt != "vjepa2-torch-hub" and (key != "target_encoder" or num_heads or ignore_pos_embed):
        raise UsageError("--key, --num-heads and --ignore-pos-embed apply to a V-JEPA 2 .pt only")
    if fmt == "transformers-vjepa2":
        from .vjepa2_hf import import_folder

        encoder, meta = import_folder(path)
    elif fmt == "transformers-videomae":
        from .videomae_hf import import_folder

        encoder, meta = import_folder(path)
    else:
        from .vjepa2_hub import import_checkpoint

        encoder, meta = import_checkpoint(path, key, num_heads, ignore_pos_embed)
    if out is not None:
        write_encoder_file(out, encoder, meta)
    return encoder, meta


__all__ = ["FORMATS", "detect_format", "import_encoder"]
