"""salt.models: plain ``nn.Module``s for SALT — the video ViT family, attention backends,
3D RoPE, the JEPA predictor and the stage-1 pixel decoder.

Imports torch and timm building blocks only (no Lightning, torch.distributed, optimizers or
data code; ``tests/test_import_boundary.py`` enforces it). Tokens are ``[B, N, D]`` in T×H×W
order; token subsets are ``[B, n]`` int64 indices that keep their true positions.
"""

from .attention import SDPA_KERNELS, Attention, check_sdpa_kernel, select_backend, set_sdpa_kernel
from .decoder import PixelDecoder, norm_pix, patchify_pixels, unpatchify_pixels
from .predictor import Predictor
from .registry import create_encoder, create_pixel_decoder, create_predictor, list_encoders
from .rope import ROPE_CONVENTION
from .sizes import ENCODER_SIZES, PREDICTOR_SIZES, TransformerSize
from .vit import VideoViT, gather_tokens

__all__ = [
    "ENCODER_SIZES",
    "PREDICTOR_SIZES",
    "ROPE_CONVENTION",
    "SDPA_KERNELS",
    "Attention",
    "PixelDecoder",
    "Predictor",
    "TransformerSize",
    "VideoViT",
    "check_sdpa_kernel",
    "create_encoder",
    "create_pixel_decoder",
    "create_predictor",
    "gather_tokens",
    "list_encoders",
    "norm_pix",
    "patchify_pixels",
    "select_backend",
    "set_sdpa_kernel",
    "unpatchify_pixels",
]
