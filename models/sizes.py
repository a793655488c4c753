"""Size table of the video ViT family and the JEPA predictor (docs/method.md, "Models").

Dimensions are exact: ViT-g and ViT-G keep head dim 64 (22 and 26 heads), and ViT-G's MLP is
8192 wide (V-JEPA 2's ``vit_gigantic`` silently builds 6656 through a misspelt keyword; we do
not repeat that). ``expected_params`` is the count docs/method.md quotes for a 3D-patch ViT
without a CLS token; tests build every size on the meta device and compare within 1%.

``vit_test`` (< 1M parameters) serves every CPU test. Its head dim 16 splits into three even
RoPE chunks of 4 (12 rotated + 4 unrotated), like head dim 64 → 3×20 + 4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TransformerSize:
    """Width, depth, heads and MLP hidden size of one transformer stack."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden_dim: int
    expected_params: int | None = None  # docs/method.md figure; None for test-only sizes

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def kwargs(self) -> dict[str, int]:
        """Constructor keyword arguments (everything but ``expected_params``)."""
        out = asdict(self)
        out.pop("expected_params")
        return out


ENCODER_SIZES: dict[str, TransformerSize] = {
    "vit_test": TransformerSize(64, 2, 4, 256),
    "vit_small": TransformerSize(384, 12, 6, 1536, 22_000_000),
    "vit_base": TransformerSize(768, 12, 12, 3072, 86_000_000),
    "vit_large": TransformerSize(1024, 24, 16, 4096, 304_000_000),
    "vit_huge": TransformerSize(1280, 32, 16, 5120, 632_000_000),
    "vit_giant": TransformerSize(1408, 40, 22, 6144, 1_010_000_000),
    "vit_gigantic": TransformerSize(1664, 48, 26, 8192, 1_840_000_000),
}

# The JEPA predictor / stage-1 pixel decoder: 12 blocks × 384 wide, 12 heads (head dim 32).
# docs/method.md's ≈22M is measured with ViT-L in and out (1024 → 384 → 1024).
PREDICTOR_SIZES: dict[str, TransformerSize] = {
    "predictor": TransformerSize(384, 12, 12, 1536, 22_000_000),
    "predictor_test": TransformerSize(48, 2, 4, 96),
}
