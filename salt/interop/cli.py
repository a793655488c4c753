"""``salt import SRC OUT.safetensors``: another project's encoder as a salt encoder file.

Prints what was read (format, architecture, skipped groups, normalisation) and where it went.
Bad input is a one-line ``salt import: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from salt.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="salt import",
        description="Import a V-JEPA 2 or VideoMAE encoder as a salt encoder file: usable as "
        "--model.teacher, by salt-probe --ckpt and load_encoder.",
    )
    p.add_argument(
        "src",
        help="a transformers model folder (config.json with model_type vjepa2 or videomae) or a "
        "V-JEPA 2 torch-hub checkpoint .pt",
    )
    p.add_argument("out", help="output .safetensors")
    p.add_argument(
        "--key",
        default="target_encoder",
        help="state dict of a .pt to import: target_encoder (default, as V-JEPA 2 evaluates) "
        "or encoder",
    )
    p.add_argument(
        "--num-heads",
        type=int,
        default=None,
        help="attention heads of a .pt whose width is none of V-JEPA 2's sizes",
    )
    p.add_argument(
        "--ignore-pos-embed",
        action="store_true",
        help="drop a pos_embed table from a .pt whose encoder is known to run RoPE",
    )
    return p


def run(args: argparse.Namespace) -> dict:
    """Import and report; returns the metadata written."""
    from salt.interop import import_encoder

    encoder, meta = import_encoder(
        args.src,
        args.out,
        key=args.key,
        num_heads=args.num_heads,
        ignore_pos_embed=args.ignore_pos_embed,
    )
    cfg, src = encoder.config, meta["source"]
    params = sum(p.numel() for p in encoder.parameters())
    print(f"read {src['format']}: {src['architecture']} ({src['path']})")
    print(
        f"  VideoViT {cfg['depth']} blocks × {cfg['embed_dim']}, {cfg['num_heads']} heads, MLP "
        f"{cfg['mlp_hidden_dim']}, tubelet {cfg['tubelet_size']}×{cfg['patch_size']}², "
        f"pos_embed {cfg['pos_embed']}"
        + (f" ({cfg['rope_pairing']} pairing)" if cfg["pos_embed"] == "rope" else "")
        + f", final_norm {cfg['final_norm']}, eps {cfg['norm_eps']:g}; {params / 1e6:.1f}M params"
    )
    if src.get("skipped"):
        print(f"  skipped (not part of the encoder): {src['skipped']}")
    print(f"  mean {meta['mean']} std {meta['std']} ({src['mean_std_from']})")
    print(f"wrote {args.out}")
    return meta


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``salt import``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (UsageError, FileNotFoundError) as e:
        print(f"salt import: error: {e}", file=sys.stderr)
        return 2
    return 0
