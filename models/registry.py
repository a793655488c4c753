"""Public constructors by name: ``create_encoder``, ``list_encoders``, ``create_predictor``.

Names map to rows of ``models.sizes``; keyword overrides go straight to the constructor, so
``create_encoder("vit_large", pos_embed="sincos", act_checkpoint=True)`` works and the model's
``.config`` records the result.
"""

from __future__ import annotations

from typing import Any

from .decoder import PixelDecoder
from .predictor import Predictor
from .sizes import ENCODER_SIZES, PREDICTOR_SIZES
from .vit import VideoViT


def list_encoders() -> list[str]:
    """Registered encoder names, smallest first (``vit_test`` … ``vit_gigantic``)."""
    return list(ENCODER_SIZES)


def create_encoder(name: str, **overrides: Any) -> VideoViT:
    """Build a registered ``VideoViT``; ``overrides`` replace any constructor argument."""
    if name not in ENCODER_SIZES:
        raise KeyError(f"unknown encoder {name!r}; registered: {', '.join(ENCODER_SIZES)}")
    return VideoViT(**{**ENCODER_SIZES[name].kwargs(), **overrides})


def create_predictor(
    in_dim: int, out_dim: int, size: str = "predictor", **overrides: Any
) -> Predictor:
    """Build the JEPA predictor of a registered size (``predictor`` or ``predictor_test``)."""
    if size not in PREDICTOR_SIZES:
        raise KeyError(f"unknown predictor size {size!r}; registered: {', '.join(PREDICTOR_SIZES)}")
    return Predictor(
        in_dim=in_dim, out_dim=out_dim, **{**PREDICTOR_SIZES[size].kwargs(), **overrides}
    )


def create_pixel_decoder(in_dim: int, size: str = "predictor", **overrides: Any) -> PixelDecoder:
    """Build the stage-1 pixel decoder of a registered predictor size."""
    if size not in PREDICTOR_SIZES:
        raise KeyError(f"unknown predictor size {size!r}; registered: {', '.join(PREDICTOR_SIZES)}")
    return PixelDecoder(in_dim=in_dim, **{**PREDICTOR_SIZES[size].kwargs(), **overrides})
